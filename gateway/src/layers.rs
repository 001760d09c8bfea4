//! The gateway's cross-cutting steps as named middleware, applied to every path
//! (API routes, unknown paths, probes and /metrics alike), in this order after
//! CORS:
//! 1. `resolve_client`: who the client is (`ClientAddress`), trusting forwarded
//!    headers only from `TRUSTED_PROXIES`;
//! 2. `record_metrics`: RED figures, with labels only from known values;
//! 3. `limit_rate_by_client`: a token bucket per client address (probes from
//!    `PROBE_NETWORKS` exempt);
//! 4. `limit_requests_in_flight`: at most `MAX_INFLIGHT_REQUESTS_PER_CLIENT`
//!    requests answered at once per client, however many connections or HTTP/2
//!    streams carry them (probes exempt);
//! 5. `compression`: gzip, br or zstd as the client's `Accept-Encoding` asks.
//!
//! CORS, when configured, wraps them all, so that every answer (a 429 too) carries
//! its headers for the browser.
//!
//! Per-user limits, body limits and deadlines need the route and the caller and
//! live in the proxy handler.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use shop_platform::client_address::{bucket, forwarded_for};
use shop_platform::metrics::{HttpLabels, OTHER_LABEL, metrics};
use tonic::Code;

use crate::errors::RestError;
use crate::state::Gateway;

/// The paths the gateway serves itself (not routes to a backend).
pub const OWN_PATHS: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"];

/// Paths that probes and scrapers call.
const PROBE_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Who sent a request: `ip` is the client (the peer, or whom a trusted proxy
/// forwarded for), `peer` the TCP peer.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress {
    pub ip: IpAddr,
    pub peer: IpAddr,
}

impl ClientAddress {
    /// The key its limits are kept under (IPv6 by /64).
    pub fn bucket(&self) -> String {
        bucket(self.ip)
    }
}

/// The route template that answered, put on the response by the proxy for the
/// metrics layer.
#[derive(Clone, Debug)]
pub struct RouteLabel(pub String);

pub async fn resolve_client(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = gw.settings.forwarded_header;
    let values = request
        .headers()
        .get_all(header.name())
        .iter()
        .filter_map(|v| v.to_str().ok());
    let forwarded = forwarded_for(header, values);
    let client = ClientAddress {
        ip: gw.trusted_proxies.client(peer.ip(), &forwarded),
        peer: peer.ip().to_canonical(),
    };
    request.extensions_mut().insert(client);
    next.run(request).await
}

/// A method label: the standard methods by name, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => OTHER_LABEL,
    }
}

/// For a gRPC or gRPC-Web answer, whose HTTP status is 200 whatever became of
/// the call, the HTTP status its gRPC code maps to in the error table, so that
/// the same error-rate alerts cover REST and gRPC at the edge. A code sent in
/// headers (a trailers-only answer: every refusal and error before a message)
/// counts; one in trailers after messages is not seen here, so it counts as OK.
fn grpc_outcome(response: &Response) -> Option<u16> {
    let grpc = crate::grpc_edge::content_type_starts(response.headers(), "application/grpc");
    if !grpc || response.status() != StatusCode::OK {
        return None;
    }
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    Some(shop_platform::error::http_status(Code::from_i32(code)))
}

pub async fn record_metrics(request: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let own = OWN_PATHS
        .iter()
        .find(|p| **p == request.uri().path())
        .copied();
    let response = next.run(request).await;
    // A template from the route table, one of the gateway's own paths, or other.
    let route = match (response.extensions().get::<RouteLabel>(), own) {
        (Some(RouteLabel(template)), _) => Cow::Owned(template.clone()),
        (None, Some(own)) => Cow::Borrowed(own),
        (None, None) => Cow::Borrowed(OTHER_LABEL),
    };
    let labels = HttpLabels {
        method,
        route,
        status: grpc_outcome(&response).unwrap_or_else(|| response.status().as_u16()),
    };
    metrics().http.record(&labels, started.elapsed());
    response
}

pub async fn limit_rate_by_client(
    State(gw): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(client) = limited_client(&gw, &request) else {
        return next.run(request).await;
    };
    if let Err(seconds) = gw.limiter.check(&format!("ip:{}", client.bucket())).await {
        return too_many(seconds, "client").into_response();
    }
    next.run(request).await
}

/// The client a request's limits count against: none for a probe of the
/// gateway's own paths from `PROBE_NETWORKS`, which is never limited.
fn limited_client(gw: &Gateway, request: &Request) -> Option<ClientAddress> {
    let client = request.extensions().get::<ClientAddress>().copied()?;
    let probe =
        PROBE_PATHS.contains(&request.uri().path()) && gw.probe_networks.contains(client.peer);
    (!probe).then_some(client)
}

/// Holds one of the client's `MAX_INFLIGHT_REQUESTS_PER_CLIENT` for as long as
/// its request is answered (a stream until its last byte), so that HTTP/2's many
/// streams per connection cannot multiply what one client holds.
pub async fn limit_requests_in_flight(
    State(gw): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(client) = limited_client(&gw, &request) else {
        return next.run(request).await;
    };
    let grant = match gw.requests_in_flight.take(Some(&client.bucket()), 1) {
        Ok(grant) => grant,
        Err(refusal) => {
            let client_words = format!(
                "this client has {} requests in flight, the most it may; retry when one finishes",
                gw.settings.max_inflight_requests_per_client
            );
            let total_words = "the gateway is answering as many requests as it may; retry shortly";
            return RestError::budget_refused(refusal, client_words, total_words).into_response();
        }
    };
    let response = next.run(request).await;
    // The grant goes with the body: given back when the body is done or dropped.
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _held = &grant;
            frame
        }))
    })
}

pub fn too_many(seconds: u64, who: &str) -> RestError {
    let mut err = RestError::new(
        StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted,
        format!("rate limit exceeded for this {who}; retry in {seconds} s"),
    );
    err.retry_after = Some(seconds);
    err
}

/// Bodies smaller than this are sent as they are: they fit one TCP packet
/// either way, and compressing them cost a fifth of the gateway's GET
/// throughput in `make bench` (docs/benchmarks.md, section 1).
pub const COMPRESS_FROM_BYTES: u16 = 1024;

/// Responses compressed by gzip, br or zstd as `Accept-Encoding` prefers
/// (q-values honoured), except where a compressor's buffering would hold back
/// what must arrive at once: Server-Sent Events and NDJSON streams (a watch's
/// next update); and not bodies under `COMPRESS_FROM_BYTES`, gRPC or images.
pub fn compression()
-> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{NotForContentType, Predicate as _, SizeAbove};
    tower_http::compression::CompressionLayer::new().compress_when(
        SizeAbove::new(COMPRESS_FROM_BYTES)
            .and(NotForContentType::GRPC)
            .and(NotForContentType::IMAGES)
            .and(NotForContentType::SSE)
            .and(NotForContentType::const_new("application/x-ndjson")),
    )
}
