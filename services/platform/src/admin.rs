//! The admin HTTP port: `/healthz` (the process and its database) and `/metrics`
//! in Prometheus text format.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use sqlx::PgPool;

use crate::health::Health;
use crate::http_server::ConnectionLimits;
use crate::outbox;
use crate::shutdown::Shutdown;

#[derive(Clone)]
struct AdminState {
    service: &'static str,
    health: Health,
    pool: PgPool,
}

/// Serves the admin port until shutdown.
pub async fn serve(
    listener: TcpListener,
    service: &'static str,
    health: Health,
    pool: PgPool,
    drain_limit: std::time::Duration,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let state = AdminState {
        service,
        health,
        pool,
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let limits = ConnectionLimits::admin(drain_limit);
    crate::http_server::serve(listener, app, limits, shutdown).await
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.health.is_serving() {
        (StatusCode::OK, "serving\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let m = crate::metrics::metrics();
    m.up.set(i64::from(state.health.is_serving()));
    // Read at scrape time: the outbox backlog and its age, the pool's connections.
    if let Ok(n) = outbox::backlog(&state.pool).await {
        m.outbox_backlog.set(n);
    }
    if let Ok(age) = outbox::oldest_unsent_age(&state.pool).await {
        m.outbox_oldest_unsent_age.set(age);
    }
    m.db_pool_connections.set(i64::from(state.pool.size()));
    m.db_pool_idle_connections
        .set(i64::try_from(state.pool.num_idle()).unwrap_or(i64::MAX));
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(state.service),
    )
}
