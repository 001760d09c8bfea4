//! The HTTP/1.1 listener of every HTTP port (the gateway, the admin ports): hyper
//! under our own accept loop, so that what one connection may cost is bounded
//! before a request reaches a handler.
//! - A connection past the cap in all (or its client's share) is answered 503 and
//!   closed at once.
//! - Headers not received within the header timeout close the connection (an idle
//!   keep-alive connection too).
//! - Bodies are bounded by the handlers that read them (the gateway's proxy).
//!
//! On shutdown the listener closes and open connections finish their requests.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Shutdown;
use crate::client_address::{Networks, bucket};
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::budget::{Refusal, SharedBudget};

/// Refused connections being answered at once; past it a refused connection is
/// dropped without an answer, so that a connect flood costs no more.
const REFUSALS_IN_FLIGHT: usize = 64;

#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Peers counted in the total only (a proxy carries many clients).
    pub trusted_proxies: Networks,
    /// How long shutdown waits for open connections (server streams included)
    /// before it stops without them.
    pub drain_limit: Duration,
}

impl ConnectionLimits {
    /// An admin port: probes and scrapes from a few sources; at shutdown, open
    /// scrapes get `drain_limit` (the service's `SHUTDOWN_TIMEOUT_MS`).
    pub fn admin(drain_limit: Duration) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 256,
            max_connections_per_client: 32,
            trusted_proxies: Networks::default(),
            drain_limit,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`; handlers see the peer as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = SharedBudget::new(limits.max_connections, limits.max_connections_per_client);
    let refusals = std::sync::Arc::new(tokio::sync::Semaphore::new(REFUSALS_IN_FLIGHT));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let client = (!limits.trusted_proxies.contains(peer.ip())).then(|| bucket(peer.ip()));
        let grant = match connections.take(client.as_deref(), 1) {
            Ok(grant) => grant,
            Err(refusal) => {
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream, peer, refusal).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(grant);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_limit) => {
            tracing::warn!("connections still open after the drain limit; stopping without them");
        }
    }
    Ok(())
}

/// A short 503 on a connection over the limits, then close.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, refusal: Refusal) {
    let message = match refusal {
        Refusal::Client => "too many connections from your address",
        Refusal::Total => "this server has too many connections",
    };
    tracing::info!(%peer, reason = message, "connection refused");
    let body = serde_json::json!({ "code": 14, "message": message, "details": [] }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Whatever the client sent is read and dropped for a moment after the answer:
    // closing with unread data would reset the connection before it is read.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
