//! The order service with the user and inventory services, on real PostgreSQL and
//! a real broker: the saga, cancellation, watching, the export, outages and crashes.

mod alerts;
mod crash;
mod export;
mod flows;
mod mesh;
mod outage;
mod saga;
mod watches;
