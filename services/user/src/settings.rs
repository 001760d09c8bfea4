//! The user service's settings (see `shop_platform::config` for the common ones).

use serde::{Deserialize, Serialize};
use shop_platform::config::{self, ConfigError, Secret, ServiceSettings};

pub const GRPC_PORT: u16 = 50051;
pub const ADMIN_PORT: u16 = 9101;
/// The longest an access token may live (`ACCESS_TOKEN_TTL_SECS` at most); a
/// revocation of all of a user's tokens is kept this long.
pub const MAX_ACCESS_TOKEN_TTL_SECS: u64 = 86_400;

#[derive(Clone, Debug)]
pub struct Settings {
    pub service: ServiceSettings,
    pub accounts: AccountSettings,
}

/// What only the user service reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountSettings {
    /// `AUTH_PRIVATE_KEY`: PEM (PKCS#8) Ed25519 key that signs access tokens.
    pub auth_private_key: Secret,
    /// `ACCESS_TOKEN_TTL_SECS`.
    pub access_token_ttl_secs: u64,
    /// `BOOTSTRAP_ADMIN_EMAIL` / `BOOTSTRAP_ADMIN_PASSWORD`: an admin account created at
    /// start when no account has that email.
    pub bootstrap_admin_email: String,
    pub bootstrap_admin_password: Secret,
    /// `REGISTRATIONS_PER_ADDRESS_PER_MIN` / `REGISTRATIONS_BURST_PER_ADDRESS`:
    /// how many accounts one client address may create.
    pub registrations_per_address_per_min: u32,
    pub registrations_burst_per_address: u32,
    /// `ORDER_SERVICE_NAME`: the one service identity that may read any user
    /// (the saga checks its customer exists).
    pub order_service_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service: ServiceSettings::with_ports("user-service", GRPC_PORT, ADMIN_PORT),
            accounts: AccountSettings::default(),
        }
    }
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            auth_private_key: Secret::default(),
            access_token_ttl_secs: 900,
            bootstrap_admin_email: String::new(),
            bootstrap_admin_password: Secret::default(),
            registrations_per_address_per_min: 20,
            registrations_burst_per_address: 20,
            order_service_name: "order-service".into(),
        }
    }
}

impl Settings {
    /// Defaults, then `CONFIG_FILE`, then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let settings = Self {
            service: config::load(&defaults.service)?,
            accounts: config::load(&defaults.accounts)?,
        };
        settings.service.validate()?;
        let accounts = &settings.accounts;
        if !(60..=MAX_ACCESS_TOKEN_TTL_SECS).contains(&accounts.access_token_ttl_secs) {
            return Err(ConfigError::missing(
                "ACCESS_TOKEN_TTL_SECS",
                "must be between 60 and 86400",
            ));
        }
        config::refuse_development_password(
            settings.service.app_env,
            "BOOTSTRAP_ADMIN_PASSWORD",
            accounts.bootstrap_admin_password.expose(),
        )?;
        if accounts.bootstrap_admin_email.is_empty() != accounts.bootstrap_admin_password.is_empty()
        {
            return Err(ConfigError::missing(
                "BOOTSTRAP_ADMIN_PASSWORD",
                "BOOTSTRAP_ADMIN_EMAIL and BOOTSTRAP_ADMIN_PASSWORD go together",
            ));
        }
        Ok(settings)
    }
}
