//! A request body that does not decode is the caller's fault: INVALID_ARGUMENT,
//! not tonic's INTERNAL.

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

/// Applies `malformed_request_is_invalid_argument` to every response a server sends.
pub type MalformedRequestLayer = tower::util::MapResponseLayer<
    fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
>;

pub fn malformed_request_layer() -> MalformedRequestLayer {
    tower::util::MapResponseLayer::new(|mut response: http::Response<tonic::body::Body>| {
        malformed_request_is_invalid_argument(response.headers_mut());
        response
    })
}
