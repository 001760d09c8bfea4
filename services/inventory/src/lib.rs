//! The inventory service: products, stock that never goes negative, and
//! idempotent reservations that orders hold, commit or give back.

pub mod api;
pub mod application;
pub mod catalog;
pub mod order_events;
pub mod reservation;
pub mod seed;
pub mod settings;

pub use application::{Application, SERVICE_NAME};
pub use settings::Settings;
