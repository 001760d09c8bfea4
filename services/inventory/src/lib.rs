//! The inventory service: products, stock that never goes negative, and
//! idempotent reservations that orders hold, commit or give back.

pub mod api;
pub mod application;
pub mod events;
pub mod model;
pub mod seed;
pub mod settings;
pub mod store;

pub use application::{Application, SERVICE_NAME};
pub use settings::Settings;
