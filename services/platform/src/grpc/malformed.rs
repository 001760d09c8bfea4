//! A request body that does not decode is the caller's fault: INVALID_ARGUMENT,
//! not tonic's INTERNAL.

use std::future::Future;

/// tonic answers a request body that does not decode as its message (truncated,
/// invalid UTF-8, a wrong wire type) with INTERNAL, as gRPC libraries do. The
/// fault is the caller's bytes, so servers answer INVALID_ARGUMENT naming the
/// field instead; clients keep tonic's mapping for responses they cannot decode.
fn malformed_request_is_invalid_argument(headers: &mut http::HeaderMap) {
    const DECODE_ERROR: &str = "failed to decode Protobuf message";
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let Some(message) = headers.get("grpc-message").and_then(|v| v.to_str().ok()) else {
        return;
    };
    if !internal || !message.replace("%20", " ").starts_with(DECODE_ERROR) {
        return;
    }
    let rewritten = format!("malformed%20protobuf%20message%3A%20{message}");
    if let Ok(value) = http::HeaderValue::from_str(&rewritten) {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert("grpc-message", value);
    }
}

/// Applies `malformed_request_is_invalid_argument` to every response.
#[derive(Clone, Copy, Debug, Default)]
pub struct MalformedRequestLayer;

impl<S> tower::Layer<S> for MalformedRequestLayer {
    type Service = MalformedRequest<S>;

    fn layer(&self, inner: S) -> MalformedRequest<S> {
        MalformedRequest { inner }
    }
}

#[derive(Clone, Debug)]
pub struct MalformedRequest<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MalformedRequest<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut result = future.await;
            if let Ok(response) = &mut result {
                malformed_request_is_invalid_argument(response.headers_mut());
            }
            result
        })
    }
}
