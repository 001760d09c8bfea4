//! What every shopmesh service shares: configuration, telemetry, health and
//! reflection, graceful shutdown, the database pool and migrations, the
//! transactional outbox and the idempotent consumer, state shared through Redis, gRPC client channels, the
//! error table and token verification.

pub mod access_keys;
pub mod admin;
pub mod auth;
pub mod backoff;
pub mod budget;
pub mod client_address;
pub mod config;
pub mod contract;
pub mod db;
pub mod dev_pki;
pub mod error;
pub mod event_signature;
pub mod grpc;
pub mod health;
pub mod http_server;
pub mod inbox;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod pagination;
pub mod rate_limit;
pub mod revocation;
pub mod runtime;
pub mod shared_store;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use error::{ApiError, FieldViolation};
pub use shutdown::Shutdown;
