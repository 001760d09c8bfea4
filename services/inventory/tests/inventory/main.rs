//! The inventory service against real PostgreSQL and a real broker, through its
//! gRPC port.

mod catalog;
mod events;
mod helpers;
mod mtls;
mod product_cache;
mod reservations;
