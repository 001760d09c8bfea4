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
//!   whose headers take longer (an idle keep-alive connection too), and an
//!   HTTP/2 connection with no request open for as long (GOAWAY, then close).
//! - An HTTP/2 connection holds at most `H2_MAX_STREAMS` requests at once, with
//!   headers up to `H2_MAX_HEADER_LIST_BYTES`; pings find dead peers.
//! - Bodies are bounded by the handlers that read them (the gateway's proxy).
//!
//! On shutdown the listener closes and open connections finish their requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::Shutdown;
use crate::client_address::{Networks, bucket};
use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
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
/// How long an idle HTTP/2 connection's goodbye (GOAWAY) may take before the
/// connection is dropped.
const IDLE_GOODBYE: Duration = Duration::from_secs(1);
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
    // Every connection's task, so that shutdown can wait for them to finish.
    let connections_open = tokio_util::task::TaskTracker::new();
    let connections = SharedBudget::new(limits.max_connections, limits.max_connections_per_client);
    let refusals = std::sync::Arc::new(tokio::sync::Semaphore::new(REFUSALS_IN_FLIGHT));
    let protocols = Protocols::new(limits.header_read_timeout);
    loop {
        let (mut stream, peer) = tokio::select! {
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
        let (app, protocols, tls, shutdown) = (
            app.clone(),
            protocols.clone(),
            tls.clone(),
            shutdown.clone(),
        );
        let wait = limits.header_read_timeout;
        connections_open.spawn(async move {
            let _grant = grant;
            let served = Served {
                peer,
                app,
                shutdown,
            };
            match tls {
                None => {
                    let Ok(read) = tokio::time::timeout(wait, read_preface(&mut stream)).await
                    else {
                        tracing::debug!(%peer, "no request within the header timeout");
                        return;
                    };
                    let Ok((h2, head)) = read else {
                        return;
                    };
                    let stream = Replayed {
                        head,
                        at: 0,
                        inner: stream,
                    };
                    protocols.serve(stream, h2, served).await;
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
                    protocols.serve(tls, h2, served).await;
                }
            }
        });
    }
    drop(listener);
    connections_open.close();
    tokio::select! {
        () = connections_open.wait() => {}
        () = tokio::time::sleep(limits.drain_limit) => {
            tracing::warn!("connections still open after the drain limit; stopping without them");
        }
    }
    Ok(())
}

/// Reads up to HTTP/2's preface: whether the connection opened with it, and the
/// bytes read, for whichever protocol serves to read again. A client that
/// stops partway is waited on without polling; the caller bounds the wait.
async fn read_preface(stream: &mut TcpStream) -> std::io::Result<(bool, Vec<u8>)> {
    let mut head = vec![0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < head.len() {
        let n = stream.read(&mut head[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        if head[..filled] != H2_PREFACE[..filled] {
            break;
        }
    }
    head.truncate(filled);
    Ok((head == H2_PREFACE, head))
}

/// A connection whose first bytes were read already: they are read again first.
struct Replayed<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What serving one connection needs besides its bytes.
struct Served {
    peer: SocketAddr,
    app: Router,
    shutdown: Shutdown,
}

/// The requests open on one connection (an answer is open until its body is
/// sent), and a wake-up whenever that changes.
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// Returns once no request has been open for `idle_after`.
    async fn idle_for(&self, idle_after: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(idle_after) => return,
                () = &mut changed => {}
            }
        }
    }
}

/// One open request on an HTTP/2 connection; dropped when its answer's body is done.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// An answer's body, holding its request open (on HTTP/2) until it is sent.
struct Tracked {
    body: Body,
    _busy: Option<Busy>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The two protocols' settings, shared by every connection.
#[derive(Clone)]
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// How long an HTTP/2 connection may have no request open (HTTP/1.1's
    /// header timeout, which closes an idle HTTP/1.1 connection).
    idle_after: Duration,
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
        Self {
            http1,
            http2,
            idle_after: header_read_timeout,
        }
    }

    /// Serves one connection to its end, or until shutdown (or, for HTTP/2, no
    /// request open for `idle_after`) lets its open requests finish.
    async fn serve<I>(&self, io: I, h2: bool, served: Served)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Served {
            peer,
            app,
            shutdown,
        } = served;
        // Only HTTP/2 closes a connection by its open requests; HTTP/1.1's requests
        // are not counted (hyper's header timeout closes an idle one itself).
        let activity = h2.then(|| Arc::new(Activity::default()));
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = requests.as_ref().map(Activity::begin);
            let call = app.clone().oneshot(request.map(Body::new));
            async move {
                let response = call.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Tracked { body, _busy: busy }),
                )
            }
        });
        let io = TokioIo::new(io);
        let ended = match activity {
            Some(activity) => {
                let connection = std::pin::pin!(self.http2.serve_connection(io, service));
                drive(connection, &shutdown, activity.idle_for(self.idle_after)).await
            }
            None => {
                let connection = std::pin::pin!(self.http1.serve_connection(io, service));
                drive(connection, &shutdown, std::future::pending()).await
            }
        };
        if let Err(err) = ended {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }
}

/// Runs `connection` to its end; on shutdown or when `idle` ends, asks it to
/// finish what is open and stop, then waits for that: on shutdown as long as the
/// drain allows, when idle for `IDLE_GOODBYE` at most (HTTP/2's goodbye waits for
/// the client to answer a ping, which a silent one never does).
async fn drive<C: GracefulConnection>(
    mut connection: Pin<&mut C>,
    shutdown: &Shutdown,
    idle: impl std::future::Future<Output = ()>,
) -> Result<(), C::Error> {
    let idled = tokio::select! {
        ended = connection.as_mut() => return ended,
        () = shutdown.wait() => false,
        () = idle => true,
    };
    connection.as_mut().graceful_shutdown();
    if !idled {
        return connection.await;
    }
    tokio::time::timeout(IDLE_GOODBYE, connection)
        .await
        .unwrap_or(Ok(()))
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
