//! The server builder every service uses, and binding its port.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

use super::malformed::{MalformedRequestLayer, malformed_request_layer};
use super::metrics::RedLayer;
use crate::telemetry;

/// Largest request a service decodes (bytes).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Streams one HTTP/2 connection may hold open at once. The gateway multiplexes
/// every client's calls and watches over a few connections, so this is generous;
/// what one client may hold is bounded per user (watches) and per connection
/// (`CALLS_PER_CONNECTION`).
pub const STREAMS_PER_CONNECTION: u32 = 1_024;

/// Connections per peer copy over which a caller that carries many clients'
/// server streams (the gateway's watches) spreads them, so that a copy can hold
/// more open streams than one connection carries.
pub const STREAM_CONNECTIONS_PER_PEER: usize = 4;

/// Calls one connection may have being answered at once; more wait their turn
/// (streams count until their response headers are sent).
pub const CALLS_PER_CONNECTION: usize = 256;

/// A server with the project's defaults: spans per call continuing the caller's
/// trace, RED metrics, a per-call ceiling, HTTP/2 keep-alive, and bounds on what
/// one connection may hold (streams, calls in progress, reset floods, header size).
pub fn server() -> Server<Stack<MalformedRequestLayer, Stack<RedLayer, Identity>>> {
    Server::builder()
        .trace_fn(telemetry::grpc_server_span)
        .timeout(Duration::from_secs(30))
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
        // The first layer added is the outer one: metrics see the rewritten code.
        .layer(RedLayer)
        .layer(malformed_request_layer())
}

/// Binds `host:port` (port 0 picks a free one).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, SocketAddr)> {
    use anyhow::Context as _;
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
