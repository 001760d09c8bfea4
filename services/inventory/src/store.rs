//! The service's database: every state change is one transaction that writes
//! its events to the outbox with it. Returns model types; the wire is api.rs's.

mod catalog;
mod product_cache;
mod reservation;

pub use catalog::{Catalog, Imported};
pub use product_cache::ProductCache;
pub use reservation::Reservations;
