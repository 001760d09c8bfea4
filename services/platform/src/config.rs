//! Typed settings: defaults, then an optional TOML file named by `CONFIG_FILE`,
//! then environment variables (the names docker compose and Kubernetes set, e.g.
//! `DATABASE_URL`). A value of the wrong type stops startup with the key's name.
//! A text setting can instead be read from a file named by `<KEY>_FILE` (how Docker and
//! Kubernetes hand over secrets), e.g. `AUTH_PRIVATE_KEY_FILE=/run/secrets/auth.key`.

use std::fmt;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Loads settings of type `T` over the given defaults.
pub fn load<T>(defaults: &T) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Ok(path) = std::env::var("CONFIG_FILE") {
        if !std::path::Path::new(&path).is_file() {
            return Err(ConfigError(format!("CONFIG_FILE: no such file: {path}")));
        }
        figment = figment.merge(Toml::file(path));
    }
    let known = Figment::from(Serialized::defaults(defaults));
    for (key, value) in file_values(std::env::vars(), |key| known.contains(key))? {
        figment = figment.merge((key, value));
    }
    figment = figment.merge(Env::raw().ignore(&["config_file"]));
    figment.extract().map_err(|err| ConfigError(describe(&err)))
}

/// The settings given as `<KEY>_FILE=path` for keys that `is_key` knows and that
/// are not also set directly; the file's trailing newline is not part of the value.
fn file_values(
    vars: impl Iterator<Item = (String, String)>,
    is_key: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, ConfigError> {
    let vars: Vec<(String, String)> = vars.collect();
    let mut values = Vec::new();
    for (var, path) in &vars {
        let Some(key) = var.strip_suffix("_FILE").map(str::to_lowercase) else {
            continue;
        };
        if !is_key(&key) || vars.iter().any(|(k, _)| k.eq_ignore_ascii_case(&key)) {
            continue;
        }
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigError(format!("{var}: cannot read {path}: {err}")))?;
        values.push((key, text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(values)
}

fn describe(err: &figment::Error) -> String {
    let mut parts = Vec::new();
    for e in err.clone() {
        // Environment keys are lower-cased by the loader; report them as set.
        let key = e
            .path
            .last()
            .map(|k| k.to_uppercase())
            .or_else(|| e.metadata.as_ref().map(|m| m.name.to_string()))
            .unwrap_or_else(|| "settings".into());
        parts.push(format!("{key}: {}", e.kind));
    }
    parts.join("; ")
}

/// Settings could not be loaded; the message names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    pub fn missing(key: &str, why: &str) -> Self {
        Self(format!("{key}: {why}"))
    }
}

/// A value that must never appear in logs or debug output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Whether development conveniences (generated keys) are allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    #[default]
    Production,
}

/// The passwords that docker-compose.yml and the dev scripts publish. A process
/// outside development mode refuses to start with one of them in its settings.
pub const DEVELOPMENT_PASSWORDS: [&str; 5] = [
    "dev-admin-password",
    "shopmesh-dev",
    "shop-user-dev",
    "shop-inventory-dev",
    "shop-order-dev",
];

/// The password in a `scheme://user:password@host/…` URL, if any.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let credentials = rest.split_once('@')?.0;
    Some(credentials.split_once(':')?.1)
}

/// Refuses a published development password for `key` outside development mode.
pub fn refuse_development_password(
    env: Environment,
    key: &str,
    password: &str,
) -> Result<(), ConfigError> {
    if env == Environment::Development || !DEVELOPMENT_PASSWORDS.contains(&password) {
        return Ok(());
    }
    Err(ConfigError::missing(
        key,
        "holds a published development password; set your own, or APP_ENV=development on a laptop",
    ))
}

/// What every service's settings contain; flattened into each service's own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceSettings {
    /// `APP_ENV`: `development` or `production`.
    pub app_env: Environment,
    /// `BIND_HOST`: the address the gRPC and admin servers listen on.
    pub bind_host: String,
    /// `GRPC_PORT` (0 picks a free port).
    pub grpc_port: u16,
    /// `ADMIN_PORT`: /metrics and /healthz (0 picks a free port).
    pub admin_port: u16,
    /// `DATABASE_URL`.
    pub database_url: Secret,
    /// `DATABASE_MAX_CONNECTIONS`.
    pub database_max_connections: u32,
    /// `KAFKA_BROKERS`: comma-separated host:port list.
    pub kafka_brokers: String,
    /// `KAFKA_GROUP_ID`: the consumer group of this service's consumers.
    pub kafka_group_id: String,
    /// `KAFKA_ONE_RECORD_PER_BATCH`: send each record as a batch of its own. A
    /// workaround for tansu 0.6, the development and test broker, which answers a
    /// fetch from inside a batch with the next batch (ADR 0006); the dev and test
    /// scripts turn it on. Leave it off with Apache Kafka.
    pub kafka_one_record_per_batch: bool,
    /// `KAFKA_TOPIC_PARTITIONS`: partitions of the topics a service creates when missing.
    pub kafka_topic_partitions: i32,
    /// `KAFKA_SECURITY_PROTOCOL`: `plaintext`, `ssl` (TLS, with this workload's
    /// certificate where the broker asks for one), `sasl_ssl` or `sasl_plaintext`.
    pub kafka_security_protocol: String,
    /// `KAFKA_SSL_CA_FILE` / `KAFKA_SSL_CERT_FILE` / `KAFKA_SSL_KEY_FILE`: PEM files
    /// for TLS to the brokers (their CA, this client's certificate and key); each
    /// unset falls back to the workload's `TLS_CA_FILE`, `TLS_CERT_FILE`, `TLS_KEY_FILE`.
    pub kafka_ssl_ca_file: String,
    pub kafka_ssl_cert_file: String,
    pub kafka_ssl_key_file: String,
    /// `KAFKA_SASL_MECHANISM` (`SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`),
    /// `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`: this service's own credentials
    /// with the `sasl_*` protocols.
    pub kafka_sasl_mechanism: String,
    pub kafka_sasl_username: String,
    pub kafka_sasl_password: Secret,
    /// `DRAIN_DELAY_MS`: time between NOT_SERVING and closing the listener, so that
    /// load balancers stop sending new calls first.
    pub drain_delay_ms: u64,
    /// `SHUTDOWN_TIMEOUT_MS`: how long in-flight calls may take to finish.
    pub shutdown_timeout_ms: u64,
    /// `AUTH_ISSUER` / `AUTH_AUDIENCE`: what user access tokens must say.
    pub auth_issuer: String,
    pub auth_audience: String,
    /// `AUTH_PUBLIC_KEY`: PEM (SPKI) Ed25519 keys, one or more blocks. In the user
    /// service: the keys it publishes beside the one it signs with (retired, or
    /// about to sign). Elsewhere: pins the keys that verify access tokens, instead
    /// of fetching them (`AUTH_KEYS_ADDR`).
    pub auth_public_key: Secret,
    /// `AUTH_KEYS_ADDR`: the user service's gRPC address (as `USER_SERVICE_ADDR`),
    /// whose published keys verify access tokens (platform::access_keys).
    pub auth_keys_addr: String,
    /// `AUTH_KEYS_REFRESH_SECS`: how often those keys are fetched again; a key
    /// published for rotation is trusted everywhere this long after.
    pub auth_keys_refresh_secs: u64,
    /// `SERVICE_PUBLIC_KEY`: PEM key that verifies service identity tokens.
    pub service_public_key: Secret,
    /// `SERVICE_PRIVATE_KEY`: PEM (PKCS#8) key this service signs its identity with.
    pub service_private_key: Secret,
    /// `TLS_CERT_FILE` / `TLS_KEY_FILE` / `TLS_CA_FILE`: the workload's certificate
    /// (its `spiffe://shopmesh/<name>` identity), key, and the mesh's CA. Set, the
    /// gRPC port speaks mutual TLS only (platform::tls); unset, plaintext.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_ca_file: String,
    /// `HEALTH_PORT`: a plaintext port serving grpc.health.v1 alone, for probes
    /// that cannot present a client certificate (the kubelet's); 0 for none.
    pub health_port: u16,
    /// `EVENT_SIGNING_KEY`: this service's own Ed25519 key (PKCS#8 PEM) that signs
    /// every event it publishes (platform::event_signature).
    pub event_signing_key: Secret,
    /// `EVENT_PUBLIC_KEYS`: the public key(s) (SPKI PEM; two while one rotates) of
    /// the service whose events this one consumes; events not signed by one of them
    /// are dead-lettered.
    pub event_public_keys: Secret,
    /// `TRUSTED_PROXIES`: comma-separated networks (CIDR) whose `x-forwarded-for`
    /// metadata names the client (the gateway's); empty trusts no one.
    pub trusted_proxies: String,
    /// `PEER_RESOLVE_EVERY_MS`: how often peers' names are looked up again, so that a
    /// peer on a new address is followed.
    pub peer_resolve_every_ms: u64,
    /// `OUTBOX_BATCH_SIZE` / `OUTBOX_POLL_MS`: events the relay publishes per batch,
    /// and how often it looks for events when no commit has woken it.
    pub outbox_batch_size: i64,
    pub outbox_poll_ms: u64,
    /// `KAFKA_SESSION_TIMEOUT_MS`: how long a silent consumer keeps its partitions;
    /// longer than a broker outage should last, shorter than a crash may wait.
    pub kafka_session_timeout_ms: u64,
    /// `REDIS_URL`: the Redis that every copy shares revoked tokens through
    /// (platform::revocation); empty keeps them in this process alone.
    pub redis_url: Secret,
}

impl ServiceSettings {
    /// Defaults for a service listening on the given ports; the database and
    /// broker addresses have no default.
    pub fn with_ports(name: &str, grpc_port: u16, admin_port: u16) -> Self {
        Self {
            app_env: Environment::Production,
            bind_host: "0.0.0.0".into(),
            grpc_port,
            admin_port,
            database_url: Secret::default(),
            database_max_connections: 10,
            kafka_brokers: String::new(),
            kafka_group_id: name.into(),
            kafka_one_record_per_batch: false,
            kafka_topic_partitions: 3,
            kafka_security_protocol: "plaintext".into(),
            kafka_ssl_ca_file: String::new(),
            kafka_ssl_cert_file: String::new(),
            kafka_ssl_key_file: String::new(),
            kafka_sasl_mechanism: String::new(),
            kafka_sasl_username: String::new(),
            kafka_sasl_password: Secret::default(),
            drain_delay_ms: 0,
            shutdown_timeout_ms: 10_000,
            auth_issuer: "shopmesh-user-service".into(),
            auth_audience: "shopmesh".into(),
            auth_public_key: Secret::default(),
            auth_keys_addr: String::new(),
            auth_keys_refresh_secs: crate::access_keys::DEFAULT_REFRESH_SECS,
            service_public_key: Secret::default(),
            service_private_key: Secret::default(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            health_port: 0,
            event_signing_key: Secret::default(),
            event_public_keys: Secret::default(),
            trusted_proxies: String::new(),
            peer_resolve_every_ms: crate::grpc::RESOLVE_EVERY.as_millis() as u64,
            outbox_batch_size: 256,
            outbox_poll_ms: 250,
            kafka_session_timeout_ms: 30_000,
            redis_url: Secret::default(),
        }
    }

    /// Checks the values that have no usable default.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.database_url.is_empty() {
            return Err(ConfigError::missing("DATABASE_URL", "must be set"));
        }
        if let Some(password) = url_password(self.database_url.expose()) {
            refuse_development_password(self.app_env, "DATABASE_URL", password)?;
        }
        if self.kafka_brokers.trim().is_empty() {
            return Err(ConfigError::missing("KAFKA_BROKERS", "must be set"));
        }
        crate::client_address::Networks::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError::missing("TRUSTED_PROXIES", &e))?;
        if self.peer_resolve_every_ms < 100 {
            return Err(ConfigError::missing(
                "PEER_RESOLVE_EVERY_MS",
                "must be at least 100",
            ));
        }
        if !(1..=10_000).contains(&self.outbox_batch_size) {
            return Err(ConfigError::missing(
                "OUTBOX_BATCH_SIZE",
                "must be between 1 and 10000",
            ));
        }
        if self.outbox_poll_ms < 10 {
            return Err(ConfigError::missing(
                "OUTBOX_POLL_MS",
                "must be at least 10",
            ));
        }
        // Kafka brokers accept 6 s to 30 min by default (group.min/max.session.timeout.ms).
        if !(6_000..=1_800_000).contains(&self.kafka_session_timeout_ms) {
            return Err(ConfigError::missing(
                "KAFKA_SESSION_TIMEOUT_MS",
                "must be between 6000 and 1800000",
            ));
        }
        if self.kafka_topic_partitions < 1 {
            return Err(ConfigError::missing(
                "KAFKA_TOPIC_PARTITIONS",
                "must be at least 1",
            ));
        }
        crate::kafka::KafkaConnection::from_settings(self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> std::vec::IntoIter<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn file_values_read_known_keys_without_the_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("shop-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("secret");
        std::fs::write(&path, "s3cret\n").expect("write");
        let path = path.to_str().expect("utf-8 path");

        let known = |key: &str| key == "database_url";
        let read = file_values(vars(&[("DATABASE_URL_FILE", path)]), known).expect("read");
        assert_eq!(read, vec![("database_url".to_owned(), "s3cret".to_owned())]);

        // Set directly, the key wins; unknown keys are not read at all.
        let both = vars(&[("DATABASE_URL_FILE", path), ("DATABASE_URL", "direct")]);
        assert!(file_values(both, known).expect("read").is_empty());
        let unknown = vars(&[("HISTORY_FILE", "/nonexistent")]);
        assert!(file_values(unknown, known).expect("ignored").is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn published_passwords_are_refused_outside_development() {
        let mut settings = ServiceSettings::with_ports("x", 1, 2);
        settings.database_url = Secret::new("postgres://shop_user:shop-user-dev@db:5432/shop_user");
        settings.kafka_brokers = "kafka:9092".into();
        let err = settings.validate().expect_err("production");
        assert!(
            err.0.starts_with("DATABASE_URL: holds a published"),
            "{err}"
        );
        settings.app_env = Environment::Development;
        settings.validate().expect("development allows it");
        settings.app_env = Environment::Production;
        settings.database_url = Secret::new("postgres://shop_user:s3cret@db/shop_user");
        settings.validate().expect("a password of one's own");
        assert_eq!(url_password("postgres://db/x"), None);
    }

    #[test]
    fn operator_timings_out_of_range_are_refused_by_name() {
        let valid = || {
            let mut settings = ServiceSettings::with_ports("x", 1, 2);
            settings.database_url = Secret::new("postgres://db/x");
            settings.kafka_brokers = "kafka:9092".into();
            settings
        };
        valid().validate().expect("the defaults are valid");
        let mut settings = valid();
        settings.kafka_session_timeout_ms = 1_000;
        let err = settings.validate().expect_err("below the broker's minimum");
        assert!(err.0.starts_with("KAFKA_SESSION_TIMEOUT_MS"), "{err}");
        let mut settings = valid();
        settings.outbox_batch_size = 0;
        let err = settings.validate().expect_err("an empty batch");
        assert!(err.0.starts_with("OUTBOX_BATCH_SIZE"), "{err}");
        let mut settings = valid();
        settings.peer_resolve_every_ms = 0;
        let err = settings.validate().expect_err("a busy loop");
        assert!(err.0.starts_with("PEER_RESOLVE_EVERY_MS"), "{err}");
    }

    #[test]
    fn an_unreadable_file_names_the_variable() {
        let err = file_values(
            vars(&[("DATABASE_URL_FILE", "/nonexistent/db-url")]),
            |key| key == "database_url",
        )
        .expect_err("missing file");
        assert!(
            err.0
                .starts_with("DATABASE_URL_FILE: cannot read /nonexistent/db-url"),
            "{err}"
        );
    }
}
