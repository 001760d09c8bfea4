//! The user service as a library: `Application::build` binds its ports and
//! prepares the database; `run_until_stopped` serves until shutdown. `main.rs`
//! and the tests run this same code.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use shop_platform::auth::{Authenticator, TokenSigner, generate_keypair};
use shop_platform::config::{ConfigError, Environment, Secret};
use shop_platform::health::{Health, HealthService};
use shop_platform::inbox::InboxConsumer;
use shop_platform::outbox::{OutboxRelay, OutboxSignal};
use shop_platform::{Shutdown, admin, db, grpc, kafka, outbox};
use shop_proto::user::user_service_server::UserServiceServer;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::account::Registration;
use crate::api::UserApi;
use crate::credentials::PasswordHasherPool;
use crate::order_stats::{ORDER_EVENTS_TOPIC, OrderStatsHandler};
use crate::settings::Settings;
use crate::users::{Accounts, USER_EVENTS_TOPIC};

/// The name this service registers in grpc.health.v1.
pub const SERVICE_NAME: &str = "shop.user.v1.UserService";
const CONSUMER_NAME: &str = "user-service";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    settings: Settings,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    pool: PgPool,
    api: UserApi,
    outbox: OutboxSignal,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// The key that signs access tokens and the one that verifies them: configured,
/// or in development generated for this process.
fn token_keys(settings: &mut Settings) -> Result<TokenSigner, ConfigError> {
    if settings.accounts.auth_private_key.is_empty() {
        if settings.service.app_env != Environment::Development {
            return Err(ConfigError::missing(
                "AUTH_PRIVATE_KEY",
                "must be set (PEM) outside APP_ENV=development",
            ));
        }
        tracing::warn!(
            "AUTH_PRIVATE_KEY unset: signing with a key generated for this process (development only)"
        );
        let (private, public) = generate_keypair();
        settings.accounts.auth_private_key = private;
        settings.service.auth_public_key = Secret::new(public);
    }
    TokenSigner::new(
        settings.accounts.auth_private_key.expose(),
        &settings.service.auth_issuer,
        &settings.service.auth_audience,
        "AUTH_PRIVATE_KEY",
    )
}

impl Application {
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        let signer = token_keys(&mut settings)?;
        let auth = Authenticator::from_settings(&settings.service)?;
        let service = &settings.service;

        let pool = db::pool(
            service.database_url.expose(),
            service.database_max_connections,
        )?;
        tokio::time::timeout(
            Duration::from_secs(60),
            db::migrate(&pool, &MIGRATIONS, &Shutdown::new()),
        )
        .await
        .context("DATABASE_URL: database not reachable within 60 s")??;

        let outbox = OutboxSignal::default();
        let accounts = Accounts {
            pool: pool.clone(),
            hasher: PasswordHasherPool::new()?,
            signer,
            token_ttl: Duration::from_secs(settings.accounts.access_token_ttl_secs),
            outbox: outbox.clone(),
        };
        if !settings.accounts.bootstrap_admin_email.is_empty() {
            let admin = Registration::try_from(shop_proto::user::RegisterRequest {
                email: settings.accounts.bootstrap_admin_email.clone(),
                password: settings
                    .accounts
                    .bootstrap_admin_password
                    .expose()
                    .to_owned(),
                display_name: "Administrator".into(),
            })
            .map_err(|e| ConfigError::missing("BOOTSTRAP_ADMIN_EMAIL", &e.to_string()))?;
            accounts.ensure_admin(admin).await?;
        }

        let (grpc_listener, grpc_addr) = grpc::bind(&service.bind_host, service.grpc_port).await?;
        let (admin_listener, admin_addr) =
            grpc::bind(&service.bind_host, service.admin_port).await?;
        Ok(Self {
            api: UserApi { accounts, auth },
            settings,
            grpc_listener,
            admin_listener,
            grpc_addr,
            admin_addr,
            pool,
            outbox,
        })
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.port()
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_addr.port()
    }

    /// Serves until `shutdown` fires: NOT_SERVING first, then a drain delay, then
    /// in-flight calls finish (within SHUTDOWN_TIMEOUT_MS), then consumers and the
    /// relay stop and the producer flushes.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let service = self.settings.service.clone();
        let (health, health_service) = Health::new(SERVICE_NAME).await;
        tracing::info!(grpc = %self.grpc_addr, admin = %self.admin_addr, "user service listening");

        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(
            health
                .clone()
                .watch_database(self.pool.clone(), shutdown.clone()),
        );
        let backlog_pool = self.pool.clone();
        let gauges: Vec<(&'static str, &'static str, admin::Gauge)> = vec![(
            "shop_outbox_backlog_events",
            "Events written to the outbox and not yet published.",
            std::sync::Arc::new(move || {
                let pool = backlog_pool.clone();
                Box::pin(async move { outbox::backlog(&pool).await.ok().map(|n| n as f64) })
            }),
        )];
        let admin_shutdown = shutdown.clone();
        let admin_health = health.clone();
        tasks.spawn(async move {
            if let Err(err) = admin::serve(
                self.admin_listener,
                "user-service",
                admin_health,
                gauges,
                admin_shutdown,
            )
            .await
            {
                tracing::error!(error = %err, "admin server failed");
            }
        });
        tasks.spawn(run_events(
            service.clone(),
            self.pool.clone(),
            self.outbox.clone(),
            shutdown.clone(),
        ));

        let grpc = serve_grpc(
            self.grpc_listener,
            self.api,
            health.clone(),
            health_service,
            shutdown.clone(),
            Duration::from_millis(service.drain_delay_ms),
        );
        let grpc = tokio::spawn(grpc);
        shutdown.wait().await;
        let limit = Duration::from_millis(service.drain_delay_ms + service.shutdown_timeout_ms);
        match tokio::time::timeout(limit, grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => return Err(err),
            Ok(Err(join)) => return Err(join.into()),
            Err(_) => tracing::warn!("in-flight calls did not finish before SHUTDOWN_TIMEOUT_MS"),
        }
        let stopping = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), stopping)
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop in time");
        }
        self.pool.close().await;
        tracing::info!("user service stopped");
        Ok(())
    }
}

async fn serve_grpc(
    listener: TcpListener,
    api: UserApi,
    health: Health,
    health_service: HealthService,
    shutdown: Shutdown,
    drain_delay: Duration,
) -> anyhow::Result<()> {
    let (reflection_v1, reflection_v1alpha) = shop_platform::health::reflection(&[SERVICE_NAME])?;
    let stop = async move {
        shutdown.wait().await;
        health.set(false).await;
        tokio::time::sleep(drain_delay).await;
        health.close_watches().await;
    };
    grpc::server()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(UserServiceServer::new(api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .context("gRPC server failed")
}

/// Creates the topics, then relays the outbox and consumes order events until shutdown.
async fn run_events(
    service: shop_platform::config::ServiceSettings,
    pool: PgPool,
    signal: OutboxSignal,
    shutdown: Shutdown,
) {
    let dead_letters = kafka::dead_letter_topic(ORDER_EVENTS_TOPIC, CONSUMER_NAME);
    let topics = [
        USER_EVENTS_TOPIC.to_owned(),
        ORDER_EVENTS_TOPIC.to_owned(),
        dead_letters,
    ];
    if let Err(err) = kafka::ensure_topics(
        &service.kafka_brokers,
        &topics,
        service.kafka_topic_partitions,
        &shutdown,
    )
    .await
    {
        tracing::info!(error = %err, "events not started");
        return;
    }
    let relay = match kafka::producer(&service.kafka_brokers) {
        Ok(producer) => OutboxRelay::new(pool.clone(), producer, signal, "user-service"),
        Err(err) => {
            tracing::error!(error = %err, "outbox relay not started");
            return;
        }
    };
    let consumer = match InboxConsumer::new(
        CONSUMER_NAME,
        ORDER_EVENTS_TOPIC,
        pool,
        &service.kafka_brokers,
        &service.kafka_group_id,
        OrderStatsHandler,
    ) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "order event consumer not started");
            return;
        }
    };
    tokio::join!(relay.run(shutdown.clone()), consumer.run(shutdown));
}
