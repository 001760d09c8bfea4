//! The listener of every HTTP port (the gateway, the admin ports): hyper under
//! our own accept loop, so that what one connection may cost is bounded before a
//! request reaches a handler. HTTP/1.1 and HTTP/2 on the same port: in
//! plaintext a connection that opens with HTTP/2's preface is HTTP/2 (h2c with
//! prior knowledge, as gRPC clients and `curl --http2-prior-knowledge` speak
//! it; the HTTP/1.1 `Upgrade: h2c` dance is not offered, RFC 9113 retired it);
//! under TLS, ALPN decides.
//! - A connection past the cap in all (or its client's share) is answered 503 and
//!   closed at once.
//! - A connection that has not shown its protocol (the TLS handshake, the first
//!   bytes) within the header timeout is closed; so is an HTTP/1.1 connection
//!   whose headers take longer (an idle keep-alive connection too).
//! - An HTTP/2 connection holds at most `H2_MAX_STREAMS` requests at once, with
//!   headers up to `H2_MAX_HEADER_LIST_BYTES`; pings find dead peers.
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::budget::{Refusal, SharedBudget};

/// Refused connections being answered at once; past it a refused connection is
/// dropped without an answer, so that a connect flood costs no more.
const REFUSALS_IN_FLIGHT: usize = 64;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Requests one HTTP/2 connection may have open at once (nginx allows 128,
/// Go's server 250): a client wanting more opens another connection, which the
/// per-client cap counts.
pub const H2_MAX_STREAMS: u32 = 128;
/// The largest header block an HTTP/2 request may send (HTTP/1.1's is hyper's
/// default of 100 headers within its read buffer).
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// An idle HTTP/2 connection is pinged this often, and closed when a ping goes
/// unanswered as long.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

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

/// Serves `app` on `listener` in plaintext until `shutdown`; handlers see the
/// peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    serve_with_tls(listener, app, limits, None, shutdown).await
}

/// As `serve`, terminating TLS first when `tls` is given (ALPN picks h2 or
/// http/1.1).
pub async fn serve_with_tls(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = SharedBudget::new(limits.max_connections, limits.max_connections_per_client);
    let refusals = std::sync::Arc::new(tokio::sync::Semaphore::new(REFUSALS_IN_FLIGHT));
    let protocols = Protocols::new(limits.header_read_timeout);
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
        let (app, protocols, tls, watcher) = (
            app.clone(),
            protocols.clone(),
            tls.clone(),
            graceful.watcher(),
        );
        let wait = limits.header_read_timeout;
        tokio::spawn(async move {
            let _grant = grant;
            match tls {
                None => {
                    // Read nothing yet: the bytes stay for whichever protocol serves.
                    let Ok(sniffed) =
                        tokio::time::timeout(wait, opens_with_h2_preface(&stream)).await
                    else {
                        tracing::debug!(%peer, "no request within the header timeout");
                        return;
                    };
                    let h2 = sniffed.unwrap_or(false);
                    protocols.serve(stream, h2, peer, app, watcher).await;
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(wait, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake not done within the header timeout");
                            return;
                        }
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    protocols.serve(tls, h2, peer, app, watcher).await;
                }
            }
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

/// Whether the connection's first bytes are HTTP/2's preface, without reading
/// them. A partial preface is waited on (it arrives in one packet in practice);
/// the caller bounds the wait.
async fn opens_with_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut seen = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut seen).await?;
        if n == 0 || seen[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The two protocols' settings, shared by every connection.
#[derive(Clone)]
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(header_read_timeout: Duration) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .keep_alive(true);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
            .keep_alive_interval(H2_KEEP_ALIVE)
            .keep_alive_timeout(H2_KEEP_ALIVE);
        Self { http1, http2 }
    }

    /// Serves one connection to its end (or until shutdown lets it finish).
    async fn serve<I>(&self, io: I, h2: bool, peer: SocketAddr, app: Router, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(Body::new))
        });
        let io = TokioIo::new(io);
        if h2 {
            finish(watcher, self.http2.serve_connection(io, service), peer).await;
        } else {
            finish(watcher, self.http1.serve_connection(io, service), peer).await;
        }
    }
}

async fn finish<C>(watcher: Watcher, connection: C, peer: SocketAddr)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
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
