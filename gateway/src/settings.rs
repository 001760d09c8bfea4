//! The gateway's settings: defaults, then `CONFIG_FILE`, then the environment.

use serde::{Deserialize, Serialize};
use shop_platform::config::{self, ConfigError, Secret};

pub const HTTP_PORT: u16 = 8080;

/// The RPCs anyone may call without a token (DESIGN.md's table); every other
/// annotated RPC needs one, including ones added later.
pub const DEFAULT_PUBLIC_METHODS: &str = "shop.user.v1.UserService/Register,shop.user.v1.UserService/Login,\
shop.inventory.v1.InventoryService/GetProduct,shop.inventory.v1.InventoryService/ListProducts";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// `BIND_HOST` / `HTTP_PORT` (0 picks a free port).
    pub bind_host: String,
    pub http_port: u16,
    /// `USER_SERVICE_ADDR`, `INVENTORY_SERVICE_ADDR`, `ORDER_SERVICE_ADDR`: the backends
    /// of the `shop.user`, `shop.inventory` and `shop.order` packages.
    pub user_service_addr: String,
    pub inventory_service_addr: String,
    pub order_service_addr: String,
    /// `AUTH_PUBLIC_KEY`, `AUTH_ISSUER`, `AUTH_AUDIENCE`: how access tokens are checked at the edge.
    pub auth_public_key: Secret,
    pub auth_issuer: String,
    pub auth_audience: String,
    /// `PUBLIC_METHODS`: comma-separated `package.Service/Method` open without a token.
    pub public_methods: String,
    /// `MAX_BODY_BYTES`: larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `REQUEST_TIMEOUT_MS`: the deadline when the client sends no `grpc-timeout` (504 past it).
    pub request_timeout_ms: u64,
    /// `RATE_LIMIT_PER_SEC` / `RATE_LIMIT_BURST`: per client address and per user.
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    /// `CORS_ALLOWED_ORIGINS`: comma-separated origins, `*` for any, empty for none.
    pub cors_allowed_origins: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind_host: "0.0.0.0".into(),
            http_port: HTTP_PORT,
            user_service_addr: "http://127.0.0.1:50051".into(),
            inventory_service_addr: "http://127.0.0.1:50052".into(),
            order_service_addr: "http://127.0.0.1:50053".into(),
            auth_public_key: Secret::default(),
            auth_issuer: "shopmesh-user-service".into(),
            auth_audience: "shopmesh".into(),
            public_methods: DEFAULT_PUBLIC_METHODS.into(),
            max_body_bytes: 1024 * 1024,
            request_timeout_ms: 10_000,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            cors_allowed_origins: String::new(),
        }
    }
}

impl Settings {
    pub fn load() -> Result<Self, ConfigError> {
        let settings: Self = config::load(&Self::default())?;
        if settings.auth_public_key.is_empty() {
            return Err(ConfigError::missing("AUTH_PUBLIC_KEY", "must be set (PEM)"));
        }
        if settings.max_body_bytes == 0 {
            return Err(ConfigError::missing("MAX_BODY_BYTES", "must be at least 1"));
        }
        Ok(settings)
    }
}
