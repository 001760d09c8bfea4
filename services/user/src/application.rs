//! The user service as a library: `Application::build` binds its ports and
//! prepares the database; `run_until_stopped` serves until shutdown. `main.rs`
//! and the tests run this same code.

use std::time::Duration;

use shop_platform::access_keys::{TokenKeys, VerifyingKey};
use shop_platform::auth::{Authenticator, TokenSigner, generate_keypair};
use shop_platform::client_address::Networks;
use shop_platform::config::{ConfigError, Environment};
use shop_platform::event_signature::EventVerifier;
use shop_platform::event_signature::public_keys;
use shop_platform::inbox::InboxConsumer;
use shop_platform::outbox::OutboxSignal;
use shop_platform::rate_limit::SharedRateLimiter;
use shop_platform::runtime::{EventWorkers, ServiceRuntime, Worker};
use shop_platform::shared_store::SharedStore;
use shop_platform::{Shutdown, db, grpc, kafka};
use shop_proto::user::user_service_server::UserServiceServer;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

use crate::accounts::Accounts;
use crate::api::UserApi;
use crate::events::{self, ORDER_EVENTS_TOPIC, OrderStatsHandler};
use crate::model::Registration;
use crate::settings::Settings;
use crate::store::Users;

/// The name this service registers in grpc.health.v1.
pub use shop_proto::user::user_service_server::SERVICE_NAME;
const CONSUMER_NAME: &str = "user-service";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    runtime: ServiceRuntime,
    api: UserApi,
    /// The order service's event keys: only its events are applied.
    order_events_owner: EventVerifier,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// The key that signs access tokens, and the keys published to verify them: its
/// own public half and every key in `AUTH_PUBLIC_KEY` (one retired from signing,
/// or one about to sign: the rotation steps of docs/adr/0014).
/// Configured, or in development generated for this process.
fn token_keys(settings: &mut Settings) -> Result<(TokenSigner, Vec<VerifyingKey>), ConfigError> {
    if !settings.service.auth_keys_addr.trim().is_empty() {
        return Err(ConfigError::missing(
            "AUTH_KEYS_ADDR",
            "must be empty in the user service: it publishes the keys the others fetch",
        ));
    }
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
        settings.accounts.auth_private_key = generate_keypair().0;
    }
    let signer = TokenSigner::new(
        settings.accounts.auth_private_key.expose(),
        &settings.service.auth_issuer,
        &settings.service.auth_audience,
        "AUTH_PRIVATE_KEY",
    )?;
    let mut published = vec![signer.verifying_key()];
    if !settings.service.auth_public_key.is_empty() {
        let also = public_keys(settings.service.auth_public_key.expose()).ok_or_else(|| {
            ConfigError::missing("AUTH_PUBLIC_KEY", "not Ed25519 public key PEM blocks")
        })?;
        for (_, key, _) in also {
            if !published.contains(&key) {
                published.push(key);
            }
        }
    }
    Ok((signer, published))
}

impl Application {
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        let (signer, published) = token_keys(&mut settings)?;
        // One connection to the shared Redis for revocations, sign-in lockouts and
        // the registration limit.
        let shared = SharedStore::from_url(settings.service.redis_url.expose())?;
        let auth = Authenticator::from_settings_sharing(
            &settings.service,
            TokenKeys::pinned(&published),
            shared.clone(),
        )?;
        let user_keys = auth.user_keys().clone();
        let service = &settings.service;

        let pool = db::connect_and_migrate(service, &MIGRATIONS).await?;

        let outbox = OutboxSignal::default();
        let accounts = Accounts::new(
            Users::new(pool.clone(), outbox.clone()),
            signer,
            Duration::from_secs(settings.accounts.access_token_ttl_secs),
            shared.clone(),
        );
        if !settings.accounts.bootstrap_admin_email.is_empty() {
            let admin = shop_proto::user::RegisterRequest {
                email: settings.accounts.bootstrap_admin_email.clone(),
                password: settings
                    .accounts
                    .bootstrap_admin_password
                    .expose()
                    .to_owned(),
                display_name: "Administrator".into(),
            };
            shop_platform::contract::check(&admin)
                .map_err(|e| ConfigError::missing("BOOTSTRAP_ADMIN_EMAIL", &e.to_string()))?;
            let admin = Registration::from(admin);
            accounts.ensure_admin(admin).await?;
        }

        let topics = vec![
            events::EVENTS_TOPIC.to_owned(),
            ORDER_EVENTS_TOPIC.to_owned(),
            kafka::dead_letter_topic(ORDER_EVENTS_TOPIC, CONSUMER_NAME),
        ];
        let runtime = ServiceRuntime::bind(
            "user-service",
            SERVICE_NAME,
            settings.service.clone(),
            pool,
            outbox,
            topics,
        )
        .await?
        .serving_once_keys_are_held(user_keys);
        let order_events_owner = EventVerifier::from_settings(&settings.service)?;
        Ok(Self {
            runtime,
            order_events_owner,
            api: UserApi::new(
                accounts,
                auth,
                Networks::parse(&settings.service.trusted_proxies)
                    .map_err(|e| ConfigError::missing("TRUSTED_PROXIES", &e))?,
                SharedRateLimiter::per_minute(
                    "registrations",
                    settings.accounts.registrations_per_address_per_min,
                    settings.accounts.registrations_burst_per_address,
                    shared,
                ),
                settings.accounts.order_service_name.clone(),
                &published,
            ),
        })
    }

    pub fn grpc_port(&self) -> u16 {
        self.runtime.grpc_port()
    }

    pub fn admin_port(&self) -> u16 {
        self.runtime.admin_port()
    }

    /// Serves until `shutdown` fires (see `ServiceRuntime::run` for the sequence).
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let routes = Routes::new(
            UserServiceServer::new(self.api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
        );
        let pool = self.runtime.pool.clone();
        let service = self.runtime.settings.clone();
        let order_events_owner = self.order_events_owner;
        let consumers: EventWorkers = Box::new(move |shutdown| {
            let consumer = InboxConsumer::new(
                CONSUMER_NAME,
                ORDER_EVENTS_TOPIC,
                pool,
                &service,
                order_events_owner,
                OrderStatsHandler,
            )?;
            Ok(vec![Box::pin(consumer.run(shutdown)) as Worker])
        });
        self.runtime
            .run(routes, Vec::new(), consumers, shutdown)
            .await
    }
}
