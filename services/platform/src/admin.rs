//! The admin HTTP port: `/healthz` (the process and its database) and `/metrics`
//! in Prometheus text format.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::health::Health;
use crate::shutdown::Shutdown;

/// A gauge read at scrape time.
pub type Gauge = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<f64>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    service: &'static str,
    health: Health,
    gauges: Arc<Vec<(&'static str, &'static str, Gauge)>>,
}

/// Serves the admin port until shutdown.
pub async fn serve(
    listener: TcpListener,
    service: &'static str,
    health: Health,
    gauges: Vec<(&'static str, &'static str, Gauge)>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let state = AdminState {
        service,
        health,
        gauges: Arc::new(gauges),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.health.is_serving() {
        (StatusCode::OK, "serving\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let registry = crate::metrics::registry();
    registry.set(
        "shop_up",
        "Whether the service is serving (1) or not (0).",
        &[],
        f64::from(u8::from(state.health.is_serving())),
    );
    for (name, help, gauge) in state.gauges.iter() {
        if let Some(value) = gauge().await {
            registry.set(name, help, &[], value);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        registry.render(&[("service", state.service)]),
    )
}
