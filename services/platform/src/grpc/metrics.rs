//! RED metrics for every call a gRPC server answers.

use std::future::Future;

use tonic::Code;

use crate::metrics::RedFamilies;

const RPC_RED: RedFamilies = RedFamilies {
    requests: "rpc_server_requests_total",
    requests_help: "gRPC calls answered, by method and code.",
    duration: "rpc_server_duration_seconds",
    duration_help: "Time to answer a gRPC call (to the response headers for streams).",
};

/// The label value for a route, method or service the server does not know.
pub const OTHER_LABEL: &str = "other";

/// RED metrics for every call a gRPC server answers: requests and latency by
/// service, method and gRPC code.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedLayer;

impl<S> tower::Layer<S> for RedLayer {
    type Service = Red<S>;

    fn layer(&self, inner: S) -> Red<S> {
        Red { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Red<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Red<S>
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
        let path = request.uri().path().to_owned();
        let started = std::time::Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let (service, method) = path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or(("", &path));
            // Errors come back trailers-only (grpc-status in the headers); success puts
            // it in the trailers, so an absent header is OK for unary calls.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from),
                Err(_) => Code::Unknown,
            };
            // The path is the client's: a service or method this server does not
            // serve is answered UNIMPLEMENTED by the router, and shares one label
            // value so that junk paths cannot grow the metrics.
            let (service, method) = if code == Code::Unimplemented {
                (OTHER_LABEL, OTHER_LABEL)
            } else {
                (service, method)
            };
            if !service.starts_with("grpc.") {
                let code = format!("{code:?}");
                let labels = [
                    ("rpc_service", service),
                    ("rpc_method", method),
                    ("grpc_code", code.as_str()),
                ];
                crate::metrics::registry().record(&RPC_RED, &labels, started.elapsed());
            }
            result
        })
    }
}
