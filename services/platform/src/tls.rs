//! Mutual TLS for the gRPC ports: TLS 1.3 only, a client certificate from the
//! mesh's CA required, the workload's identity its `spiffe://` URI name.
//!
//! Certificates are files (`TLS_CERT_FILE`, `TLS_KEY_FILE`, `TLS_CA_FILE`). The
//! server looks at its pair's modification times on each handshake and loads a
//! changed pair for the next handshakes; open connections keep theirs. A pair
//! whose certificate is expired or not yet valid is refused with a log line
//! naming the file, and the previous pair is kept while it is still valid.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use x509_cert::der::Decode as _;
use x509_cert::der::oid::AssociatedOid as _;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::config::{ConfigError, ServiceSettings};

/// The trust domain of workload identities: `spiffe://shopmesh/<service-name>`.
pub const TRUST_DOMAIN: &str = "shopmesh";

/// Handshakes in progress at once; past it new connections wait in the backlog.
const HANDSHAKES_IN_FLIGHT: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The modification times of a certificate file and its key file.
pub type FileStamp = (SystemTime, SystemTime);

/// The workload's certificate, its key and the CA that signs every workload's.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The three files, or None when none is set (plaintext); some but not all is
    /// a configuration error naming what is missing.
    pub fn from_settings(settings: &ServiceSettings) -> Result<Option<Self>, ConfigError> {
        Self::from_paths(
            &settings.tls_cert_file,
            &settings.tls_key_file,
            &settings.tls_ca_file,
        )
    }

    /// `TLS_CERT_FILE`, `TLS_KEY_FILE` and `TLS_CA_FILE` as given (the gateway's
    /// settings name them too).
    pub fn from_paths(cert: &str, key: &str, ca: &str) -> Result<Option<Self>, ConfigError> {
        let set = [
            ("TLS_CERT_FILE", cert),
            ("TLS_KEY_FILE", key),
            ("TLS_CA_FILE", ca),
        ];
        if set.iter().all(|(_, v)| v.is_empty()) {
            return Ok(None);
        }
        if let Some((key, _)) = set.iter().find(|(_, v)| v.is_empty()) {
            return Err(ConfigError::missing(
                key,
                "is required with the other TLS_*_FILE settings (mutual TLS needs the certificate, its key and the CA)",
            ));
        }
        Ok(Some(Self {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }))
    }

    /// When the certificate and key files last changed (None while one is
    /// missing): a new stamp means a new pair to load or dial with.
    pub fn stamp(&self) -> Option<FileStamp> {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((modified(&self.cert)?, modified(&self.key)?))
    }

    pub fn ca_pem(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.ca)
            .with_context(|| format!("TLS_CA_FILE: cannot read {}", self.ca.display()))
    }

    /// The current certificate and key, both PEM (for clients, which take them
    /// when they connect).
    pub fn identity_pem(&self) -> anyhow::Result<(String, String)> {
        let cert = std::fs::read_to_string(&self.cert)
            .with_context(|| format!("TLS_CERT_FILE: cannot read {}", self.cert.display()))?;
        let key = std::fs::read_to_string(&self.key)
            .with_context(|| format!("TLS_KEY_FILE: cannot read {}", self.key.display()))?;
        Ok((cert, key))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// The validity window of a DER certificate.
pub(crate) fn validity(cert: &CertificateDer<'_>) -> anyhow::Result<(SystemTime, SystemTime)> {
    let cert =
        x509_cert::Certificate::from_der(cert.as_ref()).context("not an X.509 certificate")?;
    let validity = &cert.tbs_certificate.validity;
    Ok((
        validity.not_before.to_system_time(),
        validity.not_after.to_system_time(),
    ))
}

/// The `spiffe://` URI name of a DER certificate, if it has one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let extensions = cert.tbs_certificate.extensions?;
    let san = extensions
        .iter()
        .find(|e| e.extn_id == SubjectAltName::OID)?;
    let names = SubjectAltName::from_der(san.extn_value.as_bytes()).ok()?;
    names.0.into_iter().find_map(|name| match name {
        GeneralName::UniformResourceIdentifier(uri) if uri.as_str().starts_with("spiffe://") => {
            Some(uri.as_str().to_owned())
        }
        _ => None,
    })
}

/// The verified identity of a gRPC call's peer (its client certificate's
/// `spiffe://` name); None on a plaintext port.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    spiffe_id(certs.first()?)
}

/// On a mutual-TLS port, refuses a call whose certificate is not `service`'s
/// (`spiffe://shopmesh/<service>`); on a plaintext port there is no certificate
/// to ask, and the service token decides alone.
pub fn require_peer<T>(request: &tonic::Request<T>, service: &str) -> Result<(), crate::ApiError> {
    let Some(peer) = peer_identity(request) else {
        return Ok(());
    };
    let allowed = format!("spiffe://{TRUST_DOMAIN}/{service}");
    if peer == allowed {
        return Ok(());
    }
    Err(crate::ApiError::PermissionDenied(format!(
        "{peer} may not call this method; only {allowed} may"
    )))
}

/// A pair as loaded, with the files' modification times it was loaded at.
struct Loaded {
    stamp: Option<FileStamp>,
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

/// The server's pair, loaded again when its files change.
pub struct ReloadingPair {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ReloadingPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingPair")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingPair {
    /// Loads the pair once to fail at start on a bad one.
    pub fn new(files: TlsFiles) -> anyhow::Result<Self> {
        let provider = provider();
        let loaded = Self::load(&files, &provider)?;
        Ok(Self {
            files,
            provider,
            loaded: Mutex::new(loaded),
        })
    }

    fn load(files: &TlsFiles, provider: &CryptoProvider) -> anyhow::Result<Loaded> {
        let TlsFiles { cert, key, .. } = files;
        let stamp = files.stamp();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("TLS_CERT_FILE: cannot read {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!("TLS_CERT_FILE: {} is not PEM certificates", cert.display())
            })?;
        let leaf = chain
            .first()
            .with_context(|| format!("TLS_CERT_FILE: no certificate in {}", cert.display()))?;
        let (not_before, not_after) =
            validity(leaf).with_context(|| format!("TLS_CERT_FILE: {}", cert.display()))?;
        let now = SystemTime::now();
        anyhow::ensure!(
            not_before <= now,
            "TLS_CERT_FILE: the certificate in {} is not valid yet",
            cert.display()
        );
        anyhow::ensure!(
            now <= not_after,
            "TLS_CERT_FILE: the certificate in {} has expired",
            cert.display()
        );
        let private = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("TLS_KEY_FILE: no PEM private key in {}", key.display()))?;
        let certified = CertifiedKey::from_der(chain, private, provider).with_context(|| {
            format!(
                "TLS_KEY_FILE: {} does not match the certificate",
                key.display()
            )
        })?;
        Ok(Loaded {
            stamp,
            key: Arc::new(certified),
            not_after,
        })
    }

    /// The pair for a new handshake: the files' current one when it is good,
    /// otherwise the last good one while it is still valid.
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let stamp = self.files.stamp();
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.stamp != stamp {
            match Self::load(&self.files, &self.provider) {
                Ok(fresh) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate loaded");
                    *loaded = fresh;
                }
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "TLS certificate refused; keeping the previous one while it is valid");
                    // Remember the stamp so a bad pair is not parsed on every handshake.
                    loaded.stamp = stamp;
                }
            }
        }
        if SystemTime::now() > loaded.not_after {
            tracing::error!(cert = %self.files.cert.display(), "TLS certificate has expired; refusing handshakes until it is replaced");
            return None;
        }
        Some(loaded.key.clone())
    }
}

impl ResolvesServerCert for ReloadingPair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// The server side: TLS 1.3, HTTP/2, a client certificate from the CA required.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca)
        .with_context(|| format!("TLS_CA_FILE: cannot read {}", files.ca.display()))?
    {
        let ca = ca.with_context(|| format!("TLS_CA_FILE: {} is not PEM", files.ca.display()))?;
        roots
            .add(ca)
            .with_context(|| format!("TLS_CA_FILE: {} holds an unusable CA", files.ca.display()))?;
    }
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("TLS_CA_FILE: client verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(ReloadingPair::new(files.clone())?));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The public side of an HTTP port that terminates TLS itself (the gateway's
/// `EDGE_TLS_CERT_FILE` / `EDGE_TLS_KEY_FILE`): TLS 1.2 and 1.3, since browsers
/// and load balancers still speak 1.2; no client certificate; ALPN offers h2
/// and http/1.1. The pair is reloaded when its files change, as the mesh's is.
pub fn edge_server_config(cert: &str, key: &str) -> anyhow::Result<Arc<ServerConfig>> {
    let files = TlsFiles {
        cert: cert.into(),
        key: key.into(),
        // Nothing is verified against a CA here: clients are anyone.
        ca: PathBuf::new(),
    };
    let provider = provider();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[
            &tokio_rustls::rustls::version::TLS13,
            &tokio_rustls::rustls::version::TLS12,
        ])
        .context("TLS 1.2 and 1.3")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(
            ReloadingPair::new(files).context("EDGE_TLS_CERT_FILE / EDGE_TLS_KEY_FILE")?,
        ));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections from `listener` that completed the TLS handshake, for tonic's
/// `serve_with_incoming`. Handshakes run concurrently (a slow one holds no
/// other back); failures are logged with the peer and dropped. The accept loop
/// ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let accept_loop = tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                break;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, handed) = (acceptor.clone(), sender.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = handed.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::info!(%peer, error = %err, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
            if sender.is_closed() {
                break;
            }
        }
    });
    AbortOnDrop {
        inner: tokio_stream::wrappers::ReceiverStream::new(receiver),
        task: accept_loop,
    }
}

/// A stream that stops its producer task when dropped (the listener closes).
struct AbortOnDrop<S> {
    inner: S,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Drop for AbortOnDrop<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: futures::Stream + Unpin> futures::Stream for AbortOnDrop<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// A client's TLS settings for a peer: the CA, its own pair (read now: new
/// connections made later read the files again), and the name the peer's
/// certificate must carry.
pub fn client_config(
    files: &TlsFiles,
    peer_name: &str,
) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let (cert, key) = files.identity_pem()?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(files.ca_pem()?))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name(peer_name))
}
