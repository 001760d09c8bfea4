//! The order service as a library: `Application::build` binds its ports and
//! prepares the database; `run_until_stopped` serves until shutdown.

use std::time::Duration;

use anyhow::Context as _;
use shop_platform::auth::{Authenticator, TokenSigner};
use shop_platform::outbox::OutboxSignal;
use shop_platform::runtime::{EventWorkers, ServiceRuntime, Worker};
use shop_platform::tls::TlsFiles;
use shop_platform::{Shutdown, db, grpc};
use shop_proto::order::order_service_server::OrderServiceServer;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

use crate::api::OrderApi;
use crate::checkout::Checkout;
use crate::events::EVENTS_TOPIC;
use crate::peers::Peers;
use crate::settings::{SagaSettings, Settings};
use crate::store::Orders;
use crate::watch::{WatchLimits, Watches};

/// The name this service registers in grpc.health.v1.
pub use shop_proto::order::order_service_server::SERVICE_NAME;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    runtime: ServiceRuntime,
    api: OrderApi,
    /// The saga and the watches the API uses, for the recovery loop and the listener.
    checkout: Checkout,
    watches: Watches,
    /// Ends the watch streams when the service stops.
    watch_stop: Shutdown,
    saga: SagaSettings,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth = Authenticator::from_settings(&settings.service).await?;
        let user_keys = auth.user_keys().clone();
        let signer = TokenSigner::for_service(settings.service.service_private_key.expose())?;
        let service = &settings.service;
        let saga = settings.saga.clone();
        let pool = db::connect_and_migrate(service, &MIGRATIONS).await?;

        let outbox = OutboxSignal::default();
        let tls = TlsFiles::from_settings(service)?;
        let peers = Peers::connect(
            &saga.inventory_service_addr,
            signer,
            &saga.service_identity,
            Duration::from_millis(saga.rpc_timeout_ms),
            Duration::from_millis(service.peer_resolve_every_ms),
            tls.as_ref(),
        )
        .await
        .context("INVENTORY_SERVICE_ADDR")?;
        let orders = Orders::new(pool.clone(), outbox.clone());
        let watches = Watches::new(
            orders.clone(),
            WatchLimits {
                total: settings.watch.max_watches,
                per_user: settings.watch.max_watches_per_user,
                lifetime: Duration::from_secs(settings.watch.max_watch_secs),
            },
        );
        let checkout = Checkout::new(
            orders.clone(),
            peers,
            Duration::from_millis(saga.pending_give_up_ms),
        );
        let watch_stop = Shutdown::new();
        let api = OrderApi::new(
            orders,
            checkout.clone(),
            watches.clone(),
            auth,
            Duration::from_millis(saga.request_deadline_ms),
            watch_stop.clone(),
        );
        let runtime = ServiceRuntime::bind(
            "order-service",
            SERVICE_NAME,
            settings.service.clone(),
            pool,
            outbox,
            vec![EVENTS_TOPIC.to_owned()],
        )
        .await?
        .serving_once_keys_are_held(user_keys);
        Ok(Self {
            runtime,
            api,
            checkout,
            watches,
            watch_stop,
            saga,
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
        let watch_stop = self.watch_stop;
        let forward = shutdown.clone();
        tokio::spawn(async move {
            forward.wait().await;
            watch_stop.trigger();
        });
        let recovery: Worker = Box::pin(self.checkout.run_recovery(
            Duration::from_millis(self.saga.recovery_interval_ms),
            Duration::from_millis(self.saga.recovery_after_ms),
            Duration::from_millis(self.saga.request_deadline_ms),
            shutdown.clone(),
        ));
        let listener: Worker = Box::pin(
            self.watches
                .run_listener(self.runtime.pool.clone(), shutdown.clone()),
        );
        let routes = Routes::new(
            OrderServiceServer::new(self.api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
        );
        let no_consumers: EventWorkers = Box::new(|_| Ok(Vec::new()));
        self.runtime
            .run(routes, vec![recovery, listener], no_consumers, shutdown)
            .await
    }
}
