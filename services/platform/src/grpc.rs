//! gRPC plumbing shared by services: the server builder (timeouts, tracing,
//! message limits) and client channels with deadlines, connection reuse,
//! balancing over every address a name resolves to (looked up again as peers
//! move), and bounded retries for idempotent calls.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Status};

use crate::telemetry;

/// Largest request a service decodes (bytes).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Streams one HTTP/2 connection may hold open at once. The gateway multiplexes
/// every client's calls and watches over a few connections, so this is generous;
/// what one client may hold is bounded per user (watches) and per connection
/// (`CALLS_PER_CONNECTION`).
pub const STREAMS_PER_CONNECTION: u32 = 1_024;

/// Calls one connection may have being answered at once; more wait their turn
/// (streams count until their response headers are sent).
pub const CALLS_PER_CONNECTION: usize = 256;

/// A server with the project's defaults: spans per call continuing the caller's
/// trace, RED metrics, a per-call ceiling, HTTP/2 keep-alive, and bounds on what
/// one connection may hold (streams, calls in progress, reset floods, header size).
pub fn server() -> Server<tower::layer::util::Stack<RedLayer, tower::layer::util::Identity>> {
    Server::builder()
        .trace_fn(telemetry::grpc_server_span)
        .timeout(Duration::from_secs(30))
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
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

/// How often a channel resolves its peers' names again, so that a peer which comes
/// back on a new address (a recreated container, a pod rescheduled behind a
/// headless service) is reached without restarting the caller.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// A channel to `target` (`http://host:port`, several comma-separated): calls
/// balanced across every address the names resolve to, connections kept, and the
/// names resolved again every `RESOLVE_EVERY`.
pub async fn channel(target: &str, connect_timeout: Duration) -> anyhow::Result<Channel> {
    channel_resolved_by(
        target,
        connect_timeout,
        RESOLVE_EVERY,
        |authority| async move {
            tokio::net::lookup_host(authority)
                .await
                .map(Iterator::collect)
        },
    )
    .await
}

/// `channel` with its name lookup and period given (tests resolve names by hand).
/// A name that resolves to no usable address is dialled as written, which resolves
/// it again on every connection attempt; a lookup that fails or hangs keeps the
/// addresses the name had.
pub async fn channel_resolved_by<R, F>(
    target: &str,
    connect_timeout: Duration,
    every: Duration,
    resolve: R,
) -> anyhow::Result<Channel>
where
    R: Fn(String) -> F + Send + Sync + 'static,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    use anyhow::Context as _;
    let targets: Vec<String> = target
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!targets.is_empty(), "no gRPC address in {target:?}");
    for uri in &targets {
        peer_endpoint(uri, connect_timeout)
            .with_context(|| format!("not a valid gRPC address: {uri}"))?;
    }
    let (channel, changes) = Channel::balance_channel::<String>(1024);
    let mut peers = PeerSet {
        targets,
        connect_timeout,
        lookup_timeout: every.max(Duration::from_secs(1)),
        by_target: BTreeMap::new(),
        inserted: BTreeSet::new(),
    };
    peers.refresh(&changes, &resolve).await;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if changes.is_closed() || !peers.refresh(&changes, &resolve).await {
                break;
            }
        }
    });
    Ok(channel)
}

fn peer_endpoint(
    address: &str,
    connect_timeout: Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(address.to_owned())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// The addresses a balanced channel holds, per target, changed only by what a
/// lookup changed.
struct PeerSet {
    targets: Vec<String>,
    connect_timeout: Duration,
    lookup_timeout: Duration,
    by_target: BTreeMap<String, BTreeSet<String>>,
    inserted: BTreeSet<String>,
}

impl PeerSet {
    /// Looks every target up and applies the difference, adding new addresses
    /// before removing gone ones so that the channel is never left with none.
    /// False once the channel has been dropped.
    async fn refresh<R, F>(
        &mut self,
        changes: &tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
        resolve: &R,
    ) -> bool
    where
        R: Fn(String) -> F,
        F: Future<Output = std::io::Result<Vec<SocketAddr>>>,
    {
        for uri in &self.targets {
            let authority = uri
                .strip_prefix("http://")
                .or_else(|| uri.strip_prefix("https://"))
                .unwrap_or(uri);
            let looked_up =
                tokio::time::timeout(self.lookup_timeout, resolve(authority.to_owned())).await;
            let usable = |addrs: Vec<SocketAddr>| -> BTreeSet<String> {
                addrs
                    .iter()
                    .map(|a| format!("http://{a}"))
                    .filter(|a| peer_endpoint(a, self.connect_timeout).is_ok())
                    .collect()
            };
            let found = match looked_up {
                Ok(Ok(addrs)) => usable(addrs),
                // A failed or hung lookup says nothing about where the peer is.
                _ if self.by_target.contains_key(uri) => continue,
                _ => BTreeSet::new(),
            };
            let found = if found.is_empty() {
                BTreeSet::from([uri.clone()])
            } else {
                found
            };
            self.by_target.insert(uri.clone(), found);
        }
        let now: BTreeSet<String> = self.by_target.values().flatten().cloned().collect();
        if now == self.inserted {
            return true;
        }
        for address in now.difference(&self.inserted) {
            // Every address in `now` was checked by `peer_endpoint` already.
            let Ok(endpoint) = peer_endpoint(address, self.connect_timeout) else {
                continue;
            };
            if changes
                .send(Change::Insert(address.clone(), endpoint))
                .await
                .is_err()
            {
                return false;
            }
        }
        for address in self.inserted.difference(&now) {
            if changes.send(Change::Remove(address.clone())).await.is_err() {
                return false;
            }
        }
        if !self.inserted.is_empty() {
            tracing::info!(was = ?self.inserted, now = ?now, "peer addresses changed");
        }
        self.inserted = now;
        true
    }
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

    type Stop = (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    );

    /// A health server on a free port, and what stops it.
    async fn peer() -> (SocketAddr, Stop) {
        let (listener, addr) = bind("127.0.0.1", 0).await.expect("bind");
        let (_health, service) = crate::health::Health::new("peer").await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            );
        let task = tokio::spawn(async move {
            server.await.expect("peer serves");
        });
        (addr, (stop, task))
    }

    async fn alive(channel: &Channel) -> bool {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let request = tonic_health::pb::HealthCheckRequest {
            service: crate::health::LIVENESS.into(),
        };
        tokio::time::timeout(Duration::from_millis(500), client.check(request))
            .await
            .is_ok_and(|reply| reply.is_ok())
    }

    #[tokio::test]
    async fn a_channel_follows_its_peer_to_a_new_address() {
        let (old, stop_old) = peer().await;
        let (new, _keep_new) = peer().await;
        let current = std::sync::Arc::new(std::sync::Mutex::new(old));
        let lookup = current.clone();
        let channel = channel_resolved_by(
            "http://peer.test:50051",
            Duration::from_millis(200),
            Duration::from_millis(100),
            move |authority| {
                let now = (authority == "peer.test:50051").then(|| *lookup.lock().expect("lock"));
                async move { Ok(now.into_iter().collect()) }
            },
        )
        .await
        .expect("channel");
        assert!(alive(&channel).await, "the first address answers");

        // The peer moves: the old address goes away and the name points elsewhere.
        let (stop, stopped) = stop_old;
        drop(stop);
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("old peer stops")
            .expect("old peer task");
        assert!(
            tokio::net::TcpStream::connect(old).await.is_err(),
            "nothing listens at the old address"
        );
        *current.lock().expect("lock") = new;
        // Every call succeeds once the old address is gone from the channel.
        let mut in_a_row = 0;
        for _ in 0..100 {
            in_a_row = if alive(&channel).await {
                in_a_row + 1
            } else {
                0
            };
            if in_a_row == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            in_a_row, 10,
            "the channel reaches the peer at its new address"
        );
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_addresses_a_name_had() {
        let (addr, _keep) = peer().await;
        let lookups = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = lookups.clone();
        let channel = channel_resolved_by(
            "http://peer.test:50051",
            Duration::from_millis(200),
            Duration::from_millis(50),
            move |_| {
                let first = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                async move {
                    if first {
                        Ok(vec![addr])
                    } else {
                        Err(std::io::Error::other("resolver unreachable"))
                    }
                }
            },
        )
        .await
        .expect("channel");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            lookups.load(std::sync::atomic::Ordering::SeqCst) > 2,
            "looked up again"
        );
        for _ in 0..5 {
            assert!(alive(&channel).await, "still reaches the address it had");
        }
    }

    #[tokio::test]
    async fn bad_addresses_are_named() {
        let err = channel("http://bad host:1", Duration::from_secs(1))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("http://bad host:1"), "{err}");
        let err = channel(" , ", Duration::from_secs(1))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("no gRPC address"), "{err}");
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

/// The label value for a route, method or service the server does not know.
pub const OTHER_LABEL: &str = "other";

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
