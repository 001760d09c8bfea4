//! The inventory service as a library: `Application::build` binds its ports and
//! prepares the database; `run_until_stopped` serves until shutdown.

use std::time::Duration;

use shop_platform::auth::Authenticator;
use shop_platform::event_signature::EventVerifier;
use shop_platform::inbox::InboxConsumer;
use shop_platform::outbox::OutboxSignal;
use shop_platform::runtime::{EventWorkers, ServiceRuntime, Worker};
use shop_platform::{Shutdown, db, grpc, kafka};
use shop_proto::inventory::inventory_service_server::InventoryServiceServer;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

use crate::api::InventoryApi;
use crate::events::{self, ORDER_EVENTS_TOPIC, OrderEventsHandler};
use crate::settings::Settings;
use crate::store::{Catalog, ProductCache, Reservations};

/// The name this service registers in grpc.health.v1.
pub use shop_proto::inventory::inventory_service_server::SERVICE_NAME;
const CONSUMER_NAME: &str = "inventory-service";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    runtime: ServiceRuntime,
    api: InventoryApi,
    /// The same holds the API takes, for the expiry sweep and the order-event consumer.
    reservations: Reservations,
    expiry_sweep: Duration,
    /// The order service's event keys: only its events are applied.
    order_events_owner: EventVerifier,
    /// Kept fresh by a worker that follows every copy's product changes.
    product_cache: ProductCache,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// The service's database, migrated to this build's schema.
pub(crate) async fn connect(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    db::connect_and_migrate(&settings.service, &MIGRATIONS).await
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth = Authenticator::from_settings(&settings.service).await?;
        let user_keys = auth.user_keys().clone();
        let pool = connect(&settings).await?;

        let outbox = OutboxSignal::default();
        let low_threshold = settings.stock.stock_low_threshold;
        let product_cache = ProductCache::new(
            Duration::from_millis(settings.stock.product_cache_ttl_ms),
            settings.stock.product_cache_entries,
        );
        let reservations = Reservations::new(
            pool.clone(),
            outbox.clone(),
            Duration::from_secs(settings.stock.reservation_ttl_secs),
            low_threshold,
            product_cache.clone(),
        );
        let api = InventoryApi::new(
            Catalog::new(
                pool.clone(),
                outbox.clone(),
                low_threshold,
                product_cache.clone(),
            ),
            reservations.clone(),
            auth,
            settings.stock.order_service_name.clone(),
        );
        let topics = vec![
            events::EVENTS_TOPIC.to_owned(),
            ORDER_EVENTS_TOPIC.to_owned(),
            kafka::dead_letter_topic(ORDER_EVENTS_TOPIC, CONSUMER_NAME),
        ];
        let runtime = ServiceRuntime::bind(
            "inventory-service",
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
            api,
            reservations,
            product_cache,
            expiry_sweep: Duration::from_millis(settings.stock.expiry_sweep_ms),
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
        let reservations = self.reservations;
        let expiry: Worker = Box::pin(
            reservations
                .clone()
                .run_expiry(self.expiry_sweep, shutdown.clone()),
        );
        let cache_follower: Worker = Box::pin(
            self.product_cache
                .follow_changes(self.runtime.pool.clone(), shutdown.clone()),
        );
        let routes = Routes::new(
            InventoryServiceServer::new(self.api)
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
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
                OrderEventsHandler::new(reservations),
            )?;
            Ok(vec![Box::pin(consumer.run(shutdown)) as Worker])
        });
        self.runtime
            .run(routes, vec![expiry, cache_follower], consumers, shutdown)
            .await
    }
}
