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
    crate::http_server::serve(listener, app, ConnectionLimits::admin(), shutdown).await
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
    // Read at scrape time: the outbox backlog and its age, the pool's connections.
    if let Ok(n) = outbox::backlog(&state.pool).await {
        registry.set(
            "shop_outbox_backlog_events",
            "Events written to the outbox and not yet published.",
            &[],
            n as f64,
        );
    }
    if let Ok(age) = outbox::oldest_unsent_age(&state.pool).await {
        registry.set(
            "shop_outbox_oldest_unsent_age_seconds",
            "Age of the oldest event not yet published (0 when none).",
            &[],
            age,
        );
    }
    registry.set(
        "shop_db_pool_connections",
        "Open database connections in the pool.",
        &[],
        f64::from(state.pool.size()),
    );
    registry.set(
        "shop_db_pool_idle_connections",
        "Idle database connections in the pool.",
        &[],
        state.pool.num_idle() as f64,
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        registry.render(&[("service", state.service)]),
    )
}
