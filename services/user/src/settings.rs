//! The user service's settings (see `shop_platform::config` for the common ones).

use serde::{Deserialize, Serialize};
use shop_platform::config::{self, ConfigError, Secret, ServiceSettings};

pub const GRPC_PORT: u16 = 50051;
pub const ADMIN_PORT: u16 = 9101;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub service: ServiceSettings,
    /// `AUTH_PRIVATE_KEY`: PEM (PKCS#8) Ed25519 key that signs access tokens.
    pub auth_private_key: Secret,
    /// `ACCESS_TOKEN_TTL_SECS`.
    pub access_token_ttl_secs: u64,
    /// `BOOTSTRAP_ADMIN_EMAIL` / `BOOTSTRAP_ADMIN_PASSWORD`: an admin account created at
    /// start when no account has that email.
    pub bootstrap_admin_email: String,
    pub bootstrap_admin_password: Secret,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service: ServiceSettings::with_ports("user-service", GRPC_PORT, ADMIN_PORT),
            auth_private_key: Secret::default(),
            access_token_ttl_secs: 900,
            bootstrap_admin_email: String::new(),
            bootstrap_admin_password: Secret::default(),
        }
    }
}

impl Settings {
    /// Defaults, then `CONFIG_FILE`, then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let settings: Self = config::load(&Self::default())?;
        settings.service.validate()?;
        if !(60..=86_400).contains(&settings.access_token_ttl_secs) {
            return Err(ConfigError::missing(
                "ACCESS_TOKEN_TTL_SECS",
                "must be between 60 and 86400",
            ));
        }
        if settings.bootstrap_admin_email.is_empty() != settings.bootstrap_admin_password.is_empty()
        {
            return Err(ConfigError::missing(
                "BOOTSTRAP_ADMIN_PASSWORD",
                "BOOTSTRAP_ADMIN_EMAIL and BOOTSTRAP_ADMIN_PASSWORD go together",
            ));
        }
        Ok(settings)
    }
}
