//! The order service: the CreateOrder saga across the user and inventory
//! services, cancellation, watching an order, the admins' CSV export, and the
//! events that close the loop.

pub mod api;
pub mod application;
pub mod checkout;
pub mod events;
pub mod export;
pub mod model;
pub mod peers;
pub mod settings;
pub mod store;
pub mod watch;

pub use application::{Application, SERVICE_NAME};
pub use settings::Settings;
