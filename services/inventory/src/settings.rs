//! The inventory service's settings (see `shop_platform::config` for the common ones).

use serde::{Deserialize, Serialize};
use shop_platform::config::{self, ConfigError, ServiceSettings};

pub const GRPC_PORT: u16 = 50052;
pub const ADMIN_PORT: u16 = 9102;

#[derive(Clone, Debug)]
pub struct Settings {
    pub service: ServiceSettings,
    pub stock: StockSettings,
}

/// What only the inventory service reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StockSettings {
    /// `RESERVATION_TTL_SECS`: a held reservation that nothing commits returns its stock after this.
    pub reservation_ttl_secs: u64,
    /// `EXPIRY_SWEEP_MS`: how often expired reservations are looked for.
    pub expiry_sweep_ms: u64,
    /// `STOCK_LOW_THRESHOLD`: StockLow is published when available stock falls below this.
    pub stock_low_threshold: i64,
    /// `ORDER_SERVICE_NAME`: the service identity allowed to call the internal RPCs.
    pub order_service_name: String,
    /// `PRODUCT_CACHE_TTL_MS`: the longest a product read is served from memory
    /// (changes are followed as they commit, so this is only the backstop); 0
    /// turns the cache off.
    pub product_cache_ttl_ms: u64,
    /// `PRODUCT_CACHE_ENTRIES`: the most products held in memory per copy.
    pub product_cache_entries: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service: ServiceSettings::with_ports("inventory-service", GRPC_PORT, ADMIN_PORT),
            stock: StockSettings {
                reservation_ttl_secs: 900,
                expiry_sweep_ms: 1000,
                stock_low_threshold: 5,
                order_service_name: "order-service".into(),
                product_cache_ttl_ms: 5000,
                product_cache_entries: 10_000,
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
            stock: config::load(&defaults.stock)?,
        };
        settings.service.validate()?;
        if settings.stock.reservation_ttl_secs == 0 {
            return Err(ConfigError::missing(
                "RESERVATION_TTL_SECS",
                "must be at least 1",
            ));
        }
        if settings.stock.expiry_sweep_ms < 10 {
            return Err(ConfigError::missing(
                "EXPIRY_SWEEP_MS",
                "must be at least 10",
            ));
        }
        if settings.stock.stock_low_threshold < 0 {
            return Err(ConfigError::missing(
                "STOCK_LOW_THRESHOLD",
                "must not be negative",
            ));
        }
        Ok(settings)
    }
}
