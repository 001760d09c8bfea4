//! gRPC plumbing shared by services, one concern a module:
//! - `server`: the server builder (timeouts, tracing, message and connection
//!   limits) and binding its port;
//! - `channel`: client channels balanced over every address a name resolves to,
//!   looked up again as peers move;
//! - `retry`: outgoing requests and bounded retries of idempotent calls, within
//!   a retry budget;
//! - `deadline`: `grpc-timeout` parsing and the time a call has left;
//! - `metrics`: the RED layer on every server;
//! - `malformed`: the layer that answers undecodable requests INVALID_ARGUMENT.

mod channel;
mod deadline;
mod malformed;
mod metrics;
mod retry;
mod server;

pub use channel::{RESOLVE_EVERY, channel_every, channel_resolved_by};
pub use deadline::{Deadline, parse_grpc_timeout, requested_budget};
pub use malformed::{MalformedRequestLayer, malformed_request_layer};
pub use metrics::{Red, RedLayer};
pub use retry::{
    RetryBudget, RetryPolicy, broken_connection, call_idempotent, outgoing, retryable,
};
pub use server::{
    CALLS_PER_CONNECTION, MAX_MESSAGE_BYTES, STREAM_CONNECTIONS_PER_PEER, STREAMS_PER_CONNECTION,
    bind, server,
};
