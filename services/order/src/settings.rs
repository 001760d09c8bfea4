//! The order service's settings (see `shop_platform::config` for the common ones).

use serde::{Deserialize, Serialize};
use shop_platform::config::{self, ConfigError, ServiceSettings};
use shop_platform::grpc;

pub const GRPC_PORT: u16 = 50053;
pub const ADMIN_PORT: u16 = 9103;

#[derive(Clone, Debug)]
pub struct Settings {
    pub service: ServiceSettings,
    pub saga: SagaSettings,
    pub watch: WatchSettings,
}

/// How many WatchOrder streams a user may hold, and for how long.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchSettings {
    /// `MAX_WATCHES`: open watches in this process, everyone's; UNAVAILABLE past it.
    pub max_watches: usize,
    /// `MAX_WATCHES_PER_USER`: open watches per user; RESOURCE_EXHAUSTED past it.
    pub max_watches_per_user: usize,
    /// `MAX_WATCH_SECS`: a watch ends (UNAVAILABLE, "watch again") after this long.
    pub max_watch_secs: u64,
}

/// What only the order service reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SagaSettings {
    /// `INVENTORY_SERVICE_ADDR`: e.g. `https://inventory-service:50052`
    /// (comma-separated for several copies).
    pub inventory_service_addr: String,
    /// `RPC_TIMEOUT_MS`: the deadline of each call to a dependency.
    pub rpc_timeout_ms: u64,
    /// `REQUEST_DEADLINE_MS`: the budget of a CreateOrder when the caller sent no grpc-timeout.
    pub request_deadline_ms: u64,
    /// `RECOVERY_INTERVAL_MS`: how often PENDING orders are looked for.
    pub recovery_interval_ms: u64,
    /// `RECOVERY_AFTER_MS`: a PENDING order this old is resumed by the recovery loop.
    pub recovery_after_ms: u64,
    /// `PENDING_GIVE_UP_MS`: a PENDING order this old is rejected and its stock released.
    pub pending_give_up_ms: u64,
    /// `SERVICE_IDENTITY`: the name this service signs its identity tokens with.
    pub service_identity: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service: ServiceSettings::with_ports("order-service", GRPC_PORT, ADMIN_PORT),
            saga: SagaSettings {
                inventory_service_addr: "http://127.0.0.1:50052".into(),
                rpc_timeout_ms: 2000,
                request_deadline_ms: 8000,
                recovery_interval_ms: 1000,
                recovery_after_ms: 15_000,
                pending_give_up_ms: 600_000,
                service_identity: "order-service".into(),
            },
            watch: WatchSettings {
                max_watches: 2048,
                max_watches_per_user: 10,
                max_watch_secs: 600,
            },
        }
    }
}

impl Settings {
    /// Defaults, then `CONFIG_FILE`, then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let settings = Self {
            service: config::load(&defaults.service)?,
            saga: config::load(&defaults.saga)?,
            watch: config::load(&defaults.watch)?,
        };
        let watch = &settings.watch;
        if watch.max_watches_per_user == 0 || watch.max_watch_secs == 0 {
            return Err(ConfigError::missing(
                "MAX_WATCHES_PER_USER / MAX_WATCH_SECS",
                "must be at least 1",
            ));
        }
        // Watches arrive over the gateway's few stream connections per copy; past
        // half what they carry, they would queue for stream slots there.
        let most = grpc::STREAMS_PER_CONNECTION as usize / 2 * grpc::STREAM_CONNECTIONS_PER_PEER;
        if !(1..=most).contains(&watch.max_watches) {
            return Err(ConfigError::missing(
                "MAX_WATCHES",
                &format!(
                    "must be between 1 and half the streams the gateway's {} stream connections to a copy carry ({most})",
                    grpc::STREAM_CONNECTIONS_PER_PEER
                ),
            ));
        }
        settings.service.validate()?;
        if settings.service.service_private_key.is_empty() {
            return Err(ConfigError::missing(
                "SERVICE_PRIVATE_KEY",
                "must be set (PEM): the order service proves its identity to inventory",
            ));
        }
        let saga = &settings.saga;
        if saga.rpc_timeout_ms < 10 || saga.request_deadline_ms < saga.rpc_timeout_ms {
            return Err(ConfigError::missing(
                "RPC_TIMEOUT_MS",
                "must be at least 10 and at most REQUEST_DEADLINE_MS",
            ));
        }
        if saga.pending_give_up_ms <= saga.recovery_after_ms {
            return Err(ConfigError::missing(
                "PENDING_GIVE_UP_MS",
                "must exceed RECOVERY_AFTER_MS",
            ));
        }
        Ok(settings)
    }
}
