//! The gateway as a library: `Application::build` binds the HTTP port and reads the
//! routes from the descriptor set; `run_until_stopped` serves until shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, from_fn_with_state};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use prost_reflect::DescriptorPool;
use shop_platform::Shutdown;
use shop_platform::access_keys::TokenKeys;
use shop_platform::auth::Authenticator;
use shop_platform::budget::SharedBudget;
use shop_platform::client_address::Networks;
use shop_platform::http_server::{self, ConnectionLimits};
use shop_platform::metrics::BackendLabels;
use shop_platform::rate_limit::SharedRateLimiter;
use shop_platform::revocation::Revocations;
use shop_platform::shared_store::SharedStore;
use tokio::net::TcpListener;

use crate::forward;
use crate::grpc_edge;
use crate::layers;
use crate::passthrough::HeaderList;
use crate::routes;
use crate::settings::Settings;
use crate::state::{Backend, Gateway};

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
        let shared_store = SharedStore::from_url(settings.redis_url.expose())?;
        let public: BTreeSet<String> = settings
            .public_methods
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        let connect = Duration::from_secs(1);
        let tls = shop_platform::tls::TlsFiles::from_paths(
            &settings.tls_cert_file,
            &settings.tls_key_file,
            &settings.tls_ca_file,
        )?;
        let resolve_every = Duration::from_millis(settings.peer_resolve_every_ms);
        let user_keys = TokenKeys::from_settings(
            &settings.auth_public_key,
            &settings.auth_keys_addr,
            settings.auth_keys_refresh_secs,
            tls.as_ref(),
            resolve_every,
        )
        .await?;
        let auth = Authenticator::new(
            user_keys,
            &settings.auth_issuer,
            &settings.auth_audience,
            None,
        )?
        .with_revocations(Revocations::follow(shared_store.clone()));
        let mut backends = BTreeMap::new();
        for (package, addr) in [
            ("shop.user", &settings.user_service_addr),
            ("shop.inventory", &settings.inventory_service_addr),
            ("shop.order", &settings.order_service_addr),
        ] {
            let dial = || async {
                shop_platform::grpc::channel_every(addr, connect, resolve_every, tls.as_ref())
                    .await
                    .with_context(|| format!("backend address for {package}: {addr}"))
            };
            // Server streams (watches) get connections of their own, so that long
            // streams can never take the HTTP/2 stream slots unary calls need.
            let mut streams = Vec::new();
            for _ in 0..shop_platform::grpc::STREAM_CONNECTIONS_PER_PEER {
                streams.push(dial().await?);
            }
            let channels = Backend {
                unary: dial().await?,
                streams,
                next_stream: std::sync::atomic::AtomicUsize::new(0),
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
        let request_headers =
            HeaderList::parse("FORWARD_REQUEST_HEADERS", &settings.forward_request_headers)?;
        let response_headers = HeaderList::parse(
            "FORWARD_RESPONSE_HEADERS",
            &settings.forward_response_headers,
        )?;
        Ok(Self {
            listener,
            addr,
            gateway: Arc::new(Gateway {
                grpc_methods: grpc_edge::methods(&routes),
                routes,
                backends,
                auth,
                public,
                limiter: SharedRateLimiter::new(
                    "gateway",
                    settings.rate_limit_per_sec,
                    settings.rate_limit_burst,
                    shared_store.clone(),
                ),
                shared_store,
                draining: AtomicBool::new(false),
                retries: shop_platform::grpc::RetryBudget::new(),
                request_headers,
                response_headers,
                trusted_proxies,
                probe_networks,
                trusted_trace_sources,
                body_bytes: SharedBudget::new(
                    settings.max_inflight_body_bytes,
                    settings.max_inflight_body_bytes_per_client,
                ),
                requests_in_flight: SharedBudget::new(
                    settings.max_inflight_requests,
                    settings.max_inflight_requests_per_client,
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
        // What is not one of the gateway's own paths is an API call: the steps of
        // forward.rs, outermost last (each `layer` wraps those added before it).
        let steps = Router::new()
            .fallback(forward::forward)
            .layer(from_fn_with_state(gw.clone(), forward::set_deadline))
            .layer(from_fn_with_state(gw.clone(), forward::read_body))
            .layer(from_fn_with_state(gw.clone(), forward::authenticate))
            .layer(from_fn_with_state(gw.clone(), forward::trace_call))
            .layer(from_fn_with_state(gw.clone(), forward::match_route))
            .layer(middleware::from_fn(forward::assign_request_id))
            .with_state(gw.clone());
        // gRPC and gRPC-Web take the same steps behind their translation.
        let api = steps
            .clone()
            .layer(from_fn_with_state(grpc_edge::api(steps), grpc_edge::divert));
        let mut app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi))
            .route("/docs", get(|| async { Html(include_str!("docs.html")) }))
            .fallback_service(api)
            // Every path, own or not: layers.rs.
            .layer(layers::compression())
            .layer(from_fn_with_state(
                gw.clone(),
                layers::limit_requests_in_flight,
            ))
            .layer(from_fn_with_state(gw.clone(), layers::limit_rate_by_client))
            .layer(middleware::from_fn(layers::record_metrics))
            .layer(from_fn_with_state(gw.clone(), layers::resolve_client));
        if let Some(cors) = cors(&gw.settings.cors_allowed_origins) {
            app = app.layer(cors);
        }
        let app = app.with_state(gw.clone());
        let edge_tls = match (
            gw.settings.edge_tls_cert_file.as_str(),
            gw.settings.edge_tls_key_file.as_str(),
        ) {
            ("", "") => None,
            (cert, key) => Some(tokio_rustls::TlsAcceptor::from(
                shop_platform::tls::edge_server_config(cert, key)?,
            )),
        };
        tracing::info!(http = %self.addr, tls = edge_tls.is_some(), "gateway listening");
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(gw.settings.header_read_timeout_ms),
            max_connections: gw.settings.max_connections,
            max_connections_per_client: gw.settings.max_connections_per_client,
            trusted_proxies: gw.trusted_proxies.clone(),
            drain_limit: Duration::from_millis(gw.settings.shutdown_timeout_ms),
        };
        // SIGTERM: first /readyz turns 503 while everything else is served, so that
        // load balancers move new connections elsewhere; then the listener closes
        // and open requests finish within SHUTDOWN_TIMEOUT_MS.
        let listener_stop = Shutdown::new();
        let drain_delay = Duration::from_millis(gw.settings.drain_delay_ms);
        let draining = gw.clone();
        let stop = listener_stop.clone();
        tokio::spawn(async move {
            shutdown.wait().await;
            draining.draining.store(true, Ordering::Relaxed);
            tracing::info!(
                drain_delay_ms = drain_delay.as_millis() as u64,
                "draining: readyz fails, requests still served"
            );
            tokio::time::sleep(drain_delay).await;
            stop.trigger();
        });
        http_server::serve_with_tls(self.listener, app, limits, edge_tls, listener_stop)
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
            .allow_headers(
                [
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::HeaderName::from_static("idempotency-key"),
                    header::HeaderName::from_static("x-request-id"),
                    header::HeaderName::from_static("grpc-timeout"),
                ]
                .into_iter()
                .chain(grpc_edge::CORS_REQUEST_HEADERS.map(header::HeaderName::from_static))
                .collect::<Vec<_>>(),
            )
            .expose_headers(
                std::iter::once(header::HeaderName::from_static("x-request-id"))
                    .chain(grpc_edge::CORS_EXPOSED_HEADERS.map(header::HeaderName::from_static))
                    .collect::<Vec<_>>(),
            ),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, shop_platform::metrics::CONTENT_TYPE)],
        shop_platform::metrics::render("gateway"),
    )
}

async fn openapi(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    axum::Json(gw.openapi.clone())
}

/// Ready when this gateway can serve: it is not draining. Each backend's health
/// and the shared store's are reported in the body, not as a reason to leave the
/// load balancer: with one backend down, the others' routes still answer (and a
/// gateway pod taken out would help no one, since every copy sees the same).
async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let checks = gw.backends.iter().map(|(package, backend)| async move {
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
        shop_platform::metrics::metrics()
            .backend_up
            .get_or_create(&BackendLabels {
                backend: package.clone(),
            })
            .set(i64::from(status == "SERVING"));
        (package.clone(), serde_json::Value::String(status.to_owned()))
    });
    let report: serde_json::Map<String, serde_json::Value> = futures::future::join_all(checks)
        .await
        .into_iter()
        .collect();
    let shared_store = match &gw.shared_store {
        None => "not configured",
        Some(store) if store.reachable() => "reachable",
        Some(_) => "unreachable (limits decided by this copy alone)",
    };
    let draining = gw.draining.load(Ordering::Relaxed);
    // A copy that cannot verify a token yet takes no traffic.
    let keys_held = gw.auth.user_keys().are_held();
    let ready = !draining && keys_held;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({
            "ready": ready,
            "draining": draining,
            "backends": report,
            "shared_store": shared_store,
            "access_token_keys": if keys_held { "held" } else { "not fetched yet" },
        })),
    )
}
