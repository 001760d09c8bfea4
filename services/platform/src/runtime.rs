//! How every service runs: gRPC with health and reflection, the admin port, the
//! database watch, the outbox relay and the service's consumers, and the shutdown
//! sequence (NOT_SERVING, drain delay, in-flight calls finish, workers stop, the
//! producer flushes).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::access_keys::TokenKeys;
use crate::admin;
use crate::config::ServiceSettings;
use crate::event_signature::EventSigner;
use crate::health::{self, Health};
use crate::outbox::{OutboxRelay, OutboxSignal};
use crate::tls::{self, TlsFiles};
use crate::{Shutdown, grpc, kafka};

/// How `BINARY healthcheck` asks a running process whether it is healthy (for
/// container healthchecks that have no probe tool in the image).
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// grpc.health.v1 Check (overall status) on `GRPC_PORT` or the default.
    Grpc { default_port: u16 },
    /// An HTTP GET answering 200 on `HTTP_PORT` or the default.
    Http {
        default_port: u16,
        path: &'static str,
    },
}

/// Exits 0 when the local process answers healthy within 2 s, 1 otherwise.
async fn healthcheck(probe: Probe) -> anyhow::Result<()> {
    let port = |key: &str, default: u16| {
        std::env::var(key)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(default)
    };
    let check = async {
        match probe {
            Probe::Grpc { default_port } => {
                use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
                // The plaintext health-only port when there is one (a mutual-TLS
                // gRPC port wants a client certificate).
                let health = port("HEALTH_PORT", 0);
                let probed = if health != 0 {
                    health
                } else {
                    port("GRPC_PORT", default_port)
                };
                let url = format!("http://127.0.0.1:{probed}");
                let channel = tonic::transport::Endpoint::from_shared(url)?
                    .connect()
                    .await?;
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?
                    .into_inner()
                    .status;
                anyhow::ensure!(status == 1, "health status {status} (1 is SERVING)");
                Ok(())
            }
            Probe::Http { default_port, path } => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream =
                    tokio::net::TcpStream::connect(("127.0.0.1", port("HTTP_PORT", default_port)))
                        .await?;
                let request =
                    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
                stream.write_all(request.as_bytes()).await?;
                let mut response = String::new();
                stream.read_to_string(&mut response).await?;
                let status = response.split_whitespace().nth(1).unwrap_or("");
                anyhow::ensure!(status == "200", "{path} answered {status}");
                Ok(())
            }
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            eprintln!("unhealthy: {err:#}");
            std::process::exit(1)
        }
        Err(_) => {
            eprintln!("unhealthy: no answer within 2 s");
            std::process::exit(1)
        }
    }
}

/// The body of every binary's `main`: `BINARY healthcheck` asks the running
/// process; otherwise settings (a bad one stops here, naming the key), telemetry,
/// signals, build, serve until SIGTERM or SIGINT.
pub async fn main<Settings, App, Built, Ran>(
    process: &'static str,
    probe: Probe,
    load: impl FnOnce() -> Result<Settings, crate::config::ConfigError>,
    build: impl FnOnce(Settings) -> Built,
    run: impl FnOnce(App, Shutdown) -> Ran,
) -> anyhow::Result<()>
where
    Built: Future<Output = anyhow::Result<App>>,
    Ran: Future<Output = anyhow::Result<()>>,
{
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck(probe).await;
    }
    let settings = load()?;
    let _telemetry = crate::telemetry::init(process)?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    run(build(settings).await?, shutdown).await
}

/// A background task that runs until shutdown.
pub type Worker = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Builds the event workers (consumers) once the topics exist.
pub type EventWorkers = Box<dyn FnOnce(Shutdown) -> anyhow::Result<Vec<Worker>> + Send>;

/// A service's listeners and shared parts, ready to run.
pub struct ServiceRuntime {
    /// The process name, e.g. `user-service` (metrics label, event source).
    pub process: &'static str,
    /// The fully qualified gRPC service name reported in grpc.health.v1.
    pub health_name: &'static str,
    pub settings: ServiceSettings,
    pub pool: PgPool,
    pub outbox: OutboxSignal,
    /// Topics this service produces to or consumes from (created when missing).
    pub topics: Vec<String>,
    /// Signs every event the outbox relay publishes.
    signer: EventSigner,
    /// The gRPC port's mutual TLS, when `TLS_*_FILE` are set.
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The plaintext port that serves grpc.health.v1 alone, when `HEALTH_PORT` is set.
    health_listener: Option<TcpListener>,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// Keys that must have been fetched before the service reports SERVING.
    access_keys: Option<TokenKeys>,
}

impl std::fmt::Debug for ServiceRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRuntime")
            .field("process", &self.process)
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl ServiceRuntime {
    /// Binds the gRPC and admin ports from the settings.
    pub async fn bind(
        process: &'static str,
        health_name: &'static str,
        settings: ServiceSettings,
        pool: PgPool,
        outbox: OutboxSignal,
        topics: Vec<String>,
    ) -> anyhow::Result<Self> {
        let signer =
            EventSigner::from_pem(settings.event_signing_key.expose(), "EVENT_SIGNING_KEY")?;
        let tls = match TlsFiles::from_settings(&settings)? {
            Some(files) => Some(tls::server_config(&files)?),
            None => None,
        };
        let (grpc_listener, grpc_addr) =
            grpc::bind(&settings.bind_host, settings.grpc_port).await?;
        let (admin_listener, admin_addr) =
            grpc::bind(&settings.bind_host, settings.admin_port).await?;
        let health_listener = match settings.health_port {
            0 => None,
            port => Some(grpc::bind(&settings.bind_host, port).await?.0),
        };
        Ok(Self {
            process,
            health_name,
            settings,
            pool,
            outbox,
            topics,
            signer,
            tls,
            health_listener,
            grpc_listener,
            admin_listener,
            grpc_addr,
            admin_addr,
            access_keys: None,
        })
    }

    /// Reports SERVING only once `keys` hold the access token keys (fetched ones
    /// may not yet): a copy that cannot verify a token takes no traffic.
    #[must_use]
    pub fn serving_once_keys_are_held(mut self, keys: TokenKeys) -> Self {
        self.access_keys = Some(keys);
        self
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.port()
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_addr.port()
    }

    /// Serves `routes` (the service's own gRPC services) until `shutdown` fires.
    /// `workers` start at once; `event_workers` once the topics exist.
    pub async fn run(
        self,
        routes: Routes,
        workers: Vec<Worker>,
        event_workers: EventWorkers,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let settings = self.settings.clone();
        let (health, health_service) = Health::new(self.health_name).await;
        tracing::info!(process = self.process, grpc = %self.grpc_addr, admin = %self.admin_addr, "listening");
        if settings.app_env == crate::config::Environment::Development {
            tracing::warn!(
                process = self.process,
                "development mode (APP_ENV=development): published development passwords and generated keys are accepted; not for a shared or public machine"
            );
        }

        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(health.clone().watch_readiness(
            self.pool.clone(),
            self.access_keys.clone(),
            shutdown.clone(),
        ));
        for worker in workers {
            tasks.spawn(worker);
        }
        let admin_task = admin::serve(
            self.admin_listener,
            self.process,
            health.clone(),
            self.pool.clone(),
            Duration::from_millis(self.settings.shutdown_timeout_ms),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            if let Err(err) = admin_task.await {
                tracing::error!(error = %err, "admin server failed");
            }
        });
        // The relay and the consumers stop only after the in-flight calls have finished,
        // so that events those calls commit during the drain are still published.
        let events_stop = Shutdown::new();
        let publisher = Publisher {
            source: self.process,
            signer: self.signer,
        };
        tasks.spawn(run_events(
            publisher,
            settings.clone(),
            self.pool.clone(),
            self.outbox.clone(),
            self.topics,
            event_workers,
            events_stop.clone(),
        ));

        let (reflection_v1, reflection_v1alpha) = health::reflection(&[self.health_name])?;
        let drain_delay = Duration::from_millis(settings.drain_delay_ms);
        let stop = {
            let shutdown = shutdown.clone();
            let health = health.clone();
            async move {
                shutdown.wait().await;
                health.set(false).await;
                health.set_stopping().await;
                tokio::time::sleep(drain_delay).await;
                health.close_watches().await;
            }
        };
        if let Some(listener) = self.health_listener {
            // Probes that cannot present a certificate (the kubelet's) ask here.
            let probes = tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    {
                        let stop = events_stop.clone();
                        async move { stop.wait().await }
                    },
                );
            tasks.spawn(async move {
                if let Err(err) = probes.await {
                    tracing::error!(error = %err, "health port failed");
                }
            });
        }
        let router = grpc::server()
            .add_routes(routes)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let mut server = match self.tls {
            // Mutual TLS only: a plaintext client gets a failed handshake.
            Some(config) => tokio::spawn(
                router
                    .serve_with_incoming_shutdown(tls::incoming(self.grpc_listener, config), stop),
            ),
            None => tokio::spawn(
                router.serve_with_incoming_shutdown(
                    // Small responses must not wait for the peer's delayed ACK (Nagle).
                    tonic::transport::server::TcpIncoming::from(self.grpc_listener)
                        .with_nodelay(Some(true)),
                    stop,
                ),
            ),
        };
        shutdown.wait().await;
        let limit = drain_delay + Duration::from_millis(settings.shutdown_timeout_ms);
        match tokio::time::timeout(limit, &mut server).await {
            Ok(Ok(result)) => result.context("gRPC server failed")?,
            Ok(Err(join)) => return Err(join.into()),
            Err(_) => {
                tracing::warn!(
                    "in-flight calls did not finish before SHUTDOWN_TIMEOUT_MS; cutting them off"
                );
                server.abort();
            }
        }
        events_stop.trigger();
        let stopping = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), stopping)
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop in time");
            tasks.abort_all();
        }
        if tokio::time::timeout(Duration::from_secs(5), self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still busy at exit");
        }
        tracing::info!(process = self.process, "stopped");
        Ok(())
    }
}

/// Who the outbox relay publishes as: the process (the events' source) and its key.
struct Publisher {
    source: &'static str,
    signer: EventSigner,
}

/// Creates the topics, then runs the outbox relay and the event workers until shutdown.
async fn run_events(
    publisher: Publisher,
    settings: ServiceSettings,
    pool: PgPool,
    signal: OutboxSignal,
    topics: Vec<String>,
    event_workers: EventWorkers,
    shutdown: Shutdown,
) {
    let connection = match kafka::KafkaConnection::from_settings(&settings) {
        Ok(connection) => connection,
        Err(err) => {
            tracing::error!(error = %err, "events not started");
            return;
        }
    };
    if let Err(err) = kafka::ensure_topics(
        &connection,
        &topics,
        settings.kafka_topic_partitions,
        &shutdown,
    )
    .await
    {
        tracing::info!(error = %err, "events not started");
        return;
    }
    let wake_ups = crate::outbox::wake_on_commits(pool.clone(), signal.clone(), shutdown.clone());
    let relay = match kafka::producer(&connection, settings.kafka_one_record_per_batch) {
        Ok(producer) => {
            OutboxRelay::new(pool, producer, signal, publisher.source, publisher.signer).batching(
                settings.outbox_batch_size,
                Duration::from_millis(settings.outbox_poll_ms),
            )
        }
        Err(err) => {
            tracing::error!(error = %err, "outbox relay not started");
            return;
        }
    };
    let workers = match event_workers(shutdown.clone()) {
        Ok(workers) => workers,
        Err(err) => {
            tracing::error!(error = %err, "event consumers not started");
            Vec::new()
        }
    };
    let mut all: Vec<Worker> = vec![Box::pin(relay.run(shutdown)), Box::pin(wake_ups)];
    all.extend(workers);
    futures::future::join_all(all).await;
}
