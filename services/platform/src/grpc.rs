//! gRPC plumbing shared by services: the server builder (timeouts, tracing,
//! message limits) and client channels with deadlines, connection reuse,
//! balancing over every address a name resolves to, and bounded retries for
//! idempotent calls.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Status};

use crate::telemetry;

/// Largest request a service decodes (bytes).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A server with the project's defaults: spans per call continuing the caller's
/// trace, RED metrics, a per-call ceiling, HTTP/2 keep-alive.
pub fn server() -> Server<tower::layer::util::Stack<RedLayer, tower::layer::util::Identity>> {
    Server::builder()
        .trace_fn(telemetry::grpc_server_span)
        .timeout(Duration::from_secs(30))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .layer(RedLayer)
}

/// Binds `host:port` (port 0 picks a free one).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, SocketAddr)> {
    use anyhow::Context as _;
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// A channel to `target` (`http://host:port`, several comma-separated): each
/// address resolved once at start, calls balanced across them, connections kept.
pub async fn channel(target: &str, connect_timeout: Duration) -> anyhow::Result<Channel> {
    use anyhow::Context as _;
    let mut endpoints = Vec::new();
    for uri in target.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let authority = uri
            .strip_prefix("http://")
            .or_else(|| uri.strip_prefix("https://"))
            .unwrap_or(uri);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority)
            .await
            .map(Iterator::collect)
            .unwrap_or_default();
        let resolved: Vec<String> = if addrs.is_empty() {
            vec![uri.to_owned()]
        } else {
            addrs.iter().map(|a| format!("http://{a}")).collect()
        };
        for address in resolved {
            let endpoint = Endpoint::from_shared(address)
                .with_context(|| format!("not a valid gRPC address: {uri}"))?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            endpoints.push(endpoint);
        }
    }
    anyhow::ensure!(!endpoints.is_empty(), "no gRPC address in {target:?}");
    Ok(Channel::balance_list(endpoints.into_iter()))
}

/// Bounded retries with exponential backoff for calls that are safe to repeat.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    /// The deadline of each attempt, sent as `grpc-timeout`.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            first_backoff: Duration::from_millis(50),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// Whether a failed call may be retried (the server did not act, or may safely act twice).
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted
    )
}

/// Calls `call` with a fresh request built by `make` each attempt (which sets its
/// deadline and headers, e.g. with `outgoing`); retries only `retryable` codes, a
/// bounded number of times. Use for idempotent RPCs only.
pub async fn call_idempotent<Req, Resp, Fut>(
    policy: RetryPolicy,
    mut make: impl FnMut() -> Result<Request<Req>, Status>,
    mut call: impl FnMut(Request<Req>) -> Fut,
) -> Result<Resp, Status>
where
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let mut backoff = policy.first_backoff;
    let mut attempt = 1;
    loop {
        let request = make()?;
        match call(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if attempt < policy.max_attempts && retryable(status.code()) => {
                tracing::debug!(attempt, code = ?status.code(), "retrying idempotent call");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

/// A request with a deadline and the current trace context.
pub fn outgoing<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    telemetry::inject_into_metadata(request.metadata_mut());
    request
}

/// The time left for a call: the caller's `grpc-timeout` when it sent one,
/// otherwise a default, so every downstream call carries a deadline.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(tokio::time::Instant);

impl Deadline {
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap, default: Duration) -> Self {
        let budget = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(default, |t| t.min(default));
        Self(tokio::time::Instant::now() + budget)
    }

    pub fn after(budget: Duration) -> Self {
        Self(tokio::time::Instant::now() + budget)
    }

    /// Time left, or DEADLINE_EXCEEDED when none is.
    pub fn remaining(&self) -> Result<Duration, Status> {
        let left = self
            .0
            .saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            Err(Status::deadline_exceeded(
                "deadline exceeded before the call to a dependency",
            ))
        } else {
            Ok(left)
        }
    }
}

/// Parses the gRPC wire format of a timeout: digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }

    #[test]
    fn only_safe_codes_are_retried() {
        assert!(retryable(Code::Unavailable));
        assert!(!retryable(Code::DeadlineExceeded));
        assert!(!retryable(Code::FailedPrecondition));
        assert!(!retryable(Code::InvalidArgument));
    }

    #[tokio::test]
    async fn idempotent_calls_retry_unavailable_a_bounded_number_of_times() {
        let policy = RetryPolicy {
            max_attempts: 3,
            first_backoff: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(1),
        };
        let mut calls = 0;
        let result: Result<(), Status> = call_idempotent(
            policy,
            || Ok(outgoing((), policy.attempt_timeout)),
            |_req| {
                calls += 1;
                async { Err(Status::unavailable("down")) }
            },
        )
        .await;
        assert_eq!(result.expect_err("fails").code(), Code::Unavailable);
        assert_eq!(calls, 3);

        let mut calls = 0;
        let result: Result<u8, Status> = call_idempotent(
            policy,
            || Ok(outgoing((), policy.attempt_timeout)),
            |_req| {
                calls += 1;
                let outcome = if calls < 2 {
                    Err(Status::unavailable("blip"))
                } else {
                    Ok(tonic::Response::new(7))
                };
                async move { outcome }
            },
        )
        .await;
        assert_eq!(result.expect("second attempt"), 7);
        assert_eq!(calls, 2);
    }
}

/// RED metrics for every call a gRPC server answers: requests and latency by
/// service, method and gRPC code.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedLayer;

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
            let mut result = future.await;
            if let Ok(response) = &mut result {
                malformed_request_is_invalid_argument(response.headers_mut());
            }
            let (service, method) = path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or(("", &path));
            if !service.starts_with("grpc.") {
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
                let code = format!("{code:?}");
                let labels = [
                    ("rpc_service", service),
                    ("rpc_method", method),
                    ("grpc_code", code.as_str()),
                ];
                let registry = crate::metrics::registry();
                registry.inc(
                    "rpc_server_requests_total",
                    "gRPC calls answered, by method and code.",
                    &labels,
                );
                registry.observe(
                    "rpc_server_duration_seconds",
                    "Time to answer a gRPC call (to the response headers for streams).",
                    &labels,
                    started.elapsed(),
                );
            }
            result
        })
    }
}
