//! The gateway as a library: `Application::build` binds the HTTP port and reads the
//! routes from the descriptor set; `run_until_stopped` serves until shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use prost_reflect::DescriptorPool;
use shop_platform::auth::Authenticator;
use shop_platform::budget::{Refusal, SharedBudget};
use shop_platform::client_address::Networks;
use shop_platform::grpc::requested_budget;
use shop_platform::http_server::{self, ConnectionLimits};
use shop_platform::rate_limit::RateLimiter;
use shop_platform::{Shutdown, telemetry};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::errors::RestError;
use crate::layers::{self, ClientAddress, RouteLabel, too_many};

use crate::routes::{self, Resolved, Route};

use crate::settings::Settings;
use crate::transcode::{self, DynamicCodec};

/// Metadata forwarded from HTTP headers to the backend call.
const FORWARDED: [&str; 4] = [
    "authorization",
    "x-request-id",
    "idempotency-key",
    "accept-language",
];

/// The channels to one backend: unary calls and server streams apart.
struct Backend {
    unary: Channel,
    streams: Channel,
}

pub struct Gateway {
    routes: Vec<Route>,
    /// Package prefix (`shop.user`) → its channels.
    backends: BTreeMap<String, Backend>,
    auth: Authenticator,
    public: BTreeSet<String>,
    pub(crate) limiter: RateLimiter,
    pub(crate) trusted_proxies: Networks,
    pub(crate) probe_networks: Networks,
    trusted_trace_sources: Networks,
    /// Request body bytes held in memory, in all and per client.
    body_bytes: SharedBudget,
    openapi: serde_json::Value,
    pub(crate) settings: Settings,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    gateway: Arc<Gateway>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET)
            .context("reading the descriptor set")?;
        let routes =
            routes::from_descriptors(&pool).map_err(|e| anyhow::anyhow!("google.api.http: {e}"))?;
        let auth = Authenticator::new(
            settings.auth_public_key.expose(),
            &settings.auth_issuer,
            &settings.auth_audience,
            None,
        )?;
        let public: BTreeSet<String> = settings
            .public_methods
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        let connect = Duration::from_secs(1);
        let mut backends = BTreeMap::new();
        for (package, addr) in [
            ("shop.user", &settings.user_service_addr),
            ("shop.inventory", &settings.inventory_service_addr),
            ("shop.order", &settings.order_service_addr),
        ] {
            let dial = || async {
                shop_platform::grpc::channel(addr, connect)
                    .await
                    .with_context(|| format!("backend address for {package}: {addr}"))
            };
            // Server streams (watches) get connections of their own, so that long
            // streams can never take the HTTP/2 stream slots unary calls need.
            let channels = Backend {
                unary: dial().await?,
                streams: dial().await?,
            };
            backends.insert(package.to_owned(), channels);
        }
        let openapi = crate::openapi::document(&routes, &public);
        let listener = TcpListener::bind((settings.bind_host.as_str(), settings.http_port))
            .await
            .with_context(|| format!("binding {}:{}", settings.bind_host, settings.http_port))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            routes = routes.len(),
            "routes read from google.api.http annotations"
        );
        let networks = |key: &str, list: &str| {
            Networks::parse(list).map_err(|e| anyhow::anyhow!("{key}: {e}"))
        };
        let trusted_proxies = networks("TRUSTED_PROXIES", &settings.trusted_proxies)?;
        let probe_networks = networks("PROBE_NETWORKS", &settings.probe_networks)?;
        let trusted_trace_sources =
            networks("TRUSTED_TRACE_SOURCES", &settings.trusted_trace_sources)?;
        Ok(Self {
            listener,
            addr,
            gateway: Arc::new(Gateway {
                routes,
                backends,
                auth,
                public,
                limiter: RateLimiter::new(settings.rate_limit_per_sec, settings.rate_limit_burst),
                trusted_proxies,
                probe_networks,
                trusted_trace_sources,
                body_bytes: SharedBudget::new(
                    settings.max_inflight_body_bytes,
                    settings.max_inflight_body_bytes_per_client,
                ),
                openapi,
                settings,
            }),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let gw = self.gateway.clone();
        let mut app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi))
            .route("/docs", get(|| async { Html(include_str!("docs.html")) }))
            .fallback(proxy)
            // Each layer wraps those before it: the last one added runs first (layers.rs).
            .layer(middleware::from_fn_with_state(
                gw.clone(),
                layers::limit_rate_by_client,
            ))
            .layer(middleware::from_fn(layers::record_metrics))
            .layer(middleware::from_fn_with_state(
                gw.clone(),
                layers::resolve_client,
            ));
        if let Some(cors) = cors(&gw.settings.cors_allowed_origins) {
            app = app.layer(cors);
        }
        let app = app.with_state(gw.clone());
        tracing::info!(http = %self.addr, "gateway listening");
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(gw.settings.header_read_timeout_ms),
            max_connections: gw.settings.max_connections,
            max_connections_per_client: gw.settings.max_connections_per_client,
            trusted_proxies: gw.trusted_proxies.clone(),
        };
        http_server::serve(self.listener, app, limits, shutdown)
            .await
            .context("HTTP server failed")
    }
}

fn cors(origins: &str) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = origins.trim();
    if origins.is_empty() {
        return None;
    }
    let allow = if origins == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .split(',')
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(tower_http::cors::Any)
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
                header::HeaderName::from_static("x-request-id"),
                header::HeaderName::from_static("grpc-timeout"),
            ])
            .expose_headers([header::HeaderName::from_static("x-request-id")]),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shop_platform::metrics::registry().render(&[("service", "gateway")]),
    )
}

async fn openapi(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    axum::Json(gw.openapi.clone())
}

/// Ready when every backend answers grpc.health.v1 SERVING.
async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut report = serde_json::Map::new();
    let mut ready = true;
    for (package, backend) in &gw.backends {
        let mut client = HealthClient::new(backend.unary.clone());
        let check = client.check(HealthCheckRequest {
            service: String::new(),
        });
        // The reason stays in the log: transport errors name addresses and internals.
        let status = match tokio::time::timeout(Duration::from_secs(1), check).await {
            Ok(Ok(r)) if r.get_ref().status == 1 => "SERVING",
            Ok(Ok(r)) => {
                tracing::info!(backend = %package, status = r.get_ref().status, "backend not serving");
                "NOT_SERVING"
            }
            Ok(Err(s)) => {
                tracing::info!(backend = %package, code = ?s.code(), error = %s.message(), "backend unavailable");
                "backend unavailable"
            }
            Err(_) => {
                tracing::info!(backend = %package, "backend gave no health answer within 1 s");
                "backend unavailable"
            }
        };
        ready &= status == "SERVING";
        report.insert(
            package.clone(),
            serde_json::Value::String(status.to_owned()),
        );
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({ "ready": ready, "backends": report })),
    )
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

async fn proxy(
    State(gw): State<Arc<Gateway>>,
    Extension(client): Extension<ClientAddress>,
    request: Request<Body>,
) -> Response {
    let id = request_id(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let resolved = routes::resolve(&gw.routes, &method, &path);
    let route_label = match &resolved {
        Resolved::Found(route, _) => route.template.clone(),
        _ => shop_platform::grpc::OTHER_LABEL.to_owned(),
    };
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route_label}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
    );
    if gw.trusted_trace_sources.contains(client.peer) {
        telemetry::set_parent_from_http(&span, request.headers());
    } else {
        telemetry::link_from_http(&span, request.headers());
    }
    let mut response = handle(&gw, client, resolved, request)
        .instrument(span.clone())
        .await;
    span.record("http.route", route_label.as_str());
    span.record("http.response.status_code", response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response.extensions_mut().insert(RouteLabel(route_label));
    response
}

async fn handle(
    gw: &Gateway,
    client: ClientAddress,
    resolved: Resolved<'_>,
    request: Request<Body>,
) -> Response {
    let (parts, body) = request.into_parts();
    let (route, vars) = match resolved {
        Resolved::Found(route, vars) => (route, vars),
        Resolved::WrongMethod(allowed) => {
            let mut err = RestError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!("{} is not allowed on {}", parts.method, parts.uri.path()),
            );
            err.allow = Some(
                allowed
                    .iter()
                    .map(http::Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            return err.into_response();
        }
        Resolved::NotFound => {
            let message = format!("no route for {} {}", parts.method, parts.uri.path());
            return RestError::new(StatusCode::NOT_FOUND, Code::NotFound, message).into_response();
        }
    };
    call(gw, client, route, vars, parts, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn call(
    gw: &Gateway,
    client: ClientAddress,
    route: &Route,
    vars: Vec<(String, String)>,
    parts: http::request::Parts,
    body: Body,
) -> Result<Response, RestError> {
    let metadata = MetadataMap::from_headers(parts.headers.clone());
    let caller = gw
        .auth
        .caller(&metadata)
        .map_err(|e| RestError::from_status(&tonic::Status::from(e)))?;
    let rpc_name = format!(
        "{}/{}",
        route.rpc.parent_service().full_name(),
        route.rpc.name()
    );
    if !gw.public.contains(&rpc_name) && caller.user.is_none() {
        return Err(RestError::new(
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated,
            "missing bearer token in authorization header",
        ));
    }
    if let Some(user) = &caller.user {
        gw.limiter
            .check(&format!("user:{}", user.user_id))
            .map_err(|s| too_many(s, "user"))?;
    }

    let limit = gw.settings.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        RestError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!("request body exceeds {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Memory for the body is reserved before it is read: what it declares, or the
    // largest allowed when it is chunked. Refused at once, never queued.
    let has_body =
        declared.is_some_and(|n| n > 0) || parts.headers.contains_key(header::TRANSFER_ENCODING);
    let reserved = if has_body {
        let reserved = gw
            .body_bytes
            .take(Some(&client.bucket()), declared.unwrap_or(limit));
        Some(reserved.map_err(body_budget_refused)?)
    } else {
        None
    };
    let read_limit = Duration::from_millis(gw.settings.body_read_timeout_ms);
    let bytes = tokio::time::timeout(read_limit, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| body_too_slow(read_limit))?
        .map_err(|_| too_large())?;
    // Bodies are read as JSON whatever Content-Type says (curl -d sends a form type),
    // as grpc-gateway's default marshaler does.
    let message = transcode::build_request(route, &bytes, &vars, parts.uri.query())
        .map_err(|e| RestError::bad_request(&e.field, &e.description))?;
    // The body's bytes are the message's now: the reservation ends with the read.
    drop((reserved, bytes));

    let timeout = requested_budget(
        parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok()),
        Duration::from_millis(gw.settings.request_timeout_ms),
    );
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    for name in FORWARDED {
        if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok())
            && let Ok(value) = value.parse()
        {
            request.metadata_mut().insert(name, value);
        }
    }
    // The client as resolved here (services trust this from the gateway only).
    if let Ok(value) = client.ip.to_string().parse() {
        request.metadata_mut().insert("x-forwarded-for", value);
    }
    telemetry::inject_into_metadata(request.metadata_mut());

    let package = route
        .rpc
        .parent_service()
        .package_name()
        .rsplit_once('.')
        .map_or("", |(p, _)| p)
        .to_owned();
    let backend = gw.backends.get(&package).ok_or_else(|| {
        RestError::new(
            StatusCode::NOT_IMPLEMENTED,
            Code::Unimplemented,
            format!("no backend for {package}"),
        )
    })?;
    let channel = if route.rpc.is_server_streaming() {
        backend.streams.clone()
    } else {
        backend.unary.clone()
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let unavailable = |e: tonic::transport::Error| {
        tracing::warn!(backend = %package, error = %e, "backend unavailable");
        RestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "backend unavailable, retry later",
        )
    };
    tokio::time::timeout(timeout, grpc.ready())
        .await
        .map_err(|_| deadline())?
        .map_err(unavailable)?;
    let grpc_path: http::uri::PathAndQuery = route.grpc_path().parse().map_err(|_| {
        RestError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            "bad gRPC path",
        )
    })?;
    let codec = DynamicCodec {
        output: route.rpc.output(),
    };

    if route.rpc.is_server_streaming() {
        let response = grpc
            .server_streaming(request, grpc_path, codec)
            .await
            .map_err(|s| RestError::from_backend(&s))?;
        return Ok(stream_response(
            route.clone(),
            response.into_inner(),
            &parts.headers,
        ));
    }
    let response = tokio::time::timeout(
        timeout + Duration::from_millis(250),
        grpc.unary(request, grpc_path, codec),
    )
    .await
    .map_err(|_| deadline())?
    .map_err(|s| RestError::from_backend(&s))?;
    Ok(axum::Json(transcode::response_json(route, response.get_ref())).into_response())
}

/// A body that did not arrive in time: 408, and the connection is closed so
/// that the rest of it is never read.
fn body_too_slow(limit: Duration) -> RestError {
    let mut err = RestError::new(
        StatusCode::REQUEST_TIMEOUT,
        Code::DeadlineExceeded,
        format!("request body not received within {} ms", limit.as_millis()),
    );
    err.close_connection = true;
    err
}

fn body_budget_refused(refusal: Refusal) -> RestError {
    let mut err = match refusal {
        Refusal::Client => RestError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Code::ResourceExhausted,
            "too many request bodies in flight from your address; retry in 1 s",
        ),
        Refusal::Total => RestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "the gateway is receiving too many request bodies; retry in 1 s",
        ),
    };
    err.retry_after = Some(1);
    // The unread body stays on the wire: close rather than read it.
    err.close_connection = true;
    err
}

fn deadline() -> RestError {
    RestError::new(
        StatusCode::GATEWAY_TIMEOUT,
        Code::DeadlineExceeded,
        "the backend did not answer within the deadline",
    )
}

/// A server stream as Server-Sent Events, or newline-delimited JSON when asked
/// (`Accept: application/x-ndjson`).
fn stream_response(
    route: Route,
    stream: tonic::codec::Streaming<prost_reflect::DynamicMessage>,
    headers: &HeaderMap,
) -> Response {
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let to_json = move |item: Result<prost_reflect::DynamicMessage, tonic::Status>| match item {
        Ok(message) => (
            false,
            transcode::response_json(&route, &message).to_string(),
        ),
        Err(status) => (true, RestError::from_status(&status).body.to_string()),
    };
    if ndjson {
        let lines = stream.map(move |item| Ok::<_, Infallible>(format!("{}\n", to_json(item).1)));
        return (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(lines),
        )
            .into_response();
    }
    let events = stream.map(move |item| {
        let (is_error, data) = to_json(item);
        Ok::<_, Infallible>(
            Event::default()
                .event(if is_error { "error" } else { "message" })
                .data(data),
        )
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
