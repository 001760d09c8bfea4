//! The user service against a real PostgreSQL server and a real Kafka-protocol
//! broker, through its real gRPC port (tonic clients and grpcurl).

mod access_keys;
mod accounts;
mod events;
mod grpcurl;
mod helpers;
mod hostile;
mod lifecycle;
mod revocation;
