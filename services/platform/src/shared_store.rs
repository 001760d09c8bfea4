//! State that every copy of a process shares, kept in Redis (`REDIS_URL`): the
//! gateway's rate limits and the revoked tokens.
//!
//! Redis is a help, never a dependency of a request: every call has a short
//! deadline, and after a failure the store rests (answers `None` at once) for
//! `REST_AFTER_FAILURE`, so that an outage costs one timeout per copy and second,
//! not one per request. Callers fall back to what they know locally.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ConfigError;

/// How long one Redis call may take before the local fallback answers instead.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a call that no request is held up by may take: a write that a
/// client waits on (a revocation) or a background read (following the log).
pub const PATIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the store stays unasked after a call failed.
pub const REST_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// A connection to the shared Redis, made lazily and remade after a failure.
pub struct SharedStore {
    connection: ConnectionManager,
    resting_until: Mutex<Option<Instant>>,
    /// Whether the last call reached Redis; logged on every change.
    reachable: AtomicBool,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("reachable", &self.reachable())
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// The store at `url` (`redis://host:port/db`); nothing is dialled until the
    /// first call, so a process starts while Redis is down.
    pub fn connect(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|err| ConfigError::missing("REDIS_URL", &format!("not a Redis URL: {err}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(PATIENT_TIMEOUT))
            .set_response_timeout(Some(PATIENT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(CALL_TIMEOUT);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| ConfigError::missing("REDIS_URL", &format!("{err}")))?;
        Ok(Self {
            connection,
            resting_until: Mutex::new(None),
            reachable: AtomicBool::new(true),
        })
    }

    /// The store `url` names, or none when it is empty (every copy then keeps its
    /// own state, which is right for one copy).
    pub fn from_url(url: &str) -> Result<Option<std::sync::Arc<Self>>, ConfigError> {
        if url.trim().is_empty() {
            return Ok(None);
        }
        Self::connect(url.trim()).map(|store| Some(std::sync::Arc::new(store)))
    }

    /// Whether the last call reached Redis.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Runs `call` on the connection; `None` when Redis failed, timed out, or is
    /// resting after a failure. For what a request consults on its way.
    pub async fn call<T, F, Fut>(&self, what: &'static str, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.resting() {
            return None;
        }
        self.run(what, CALL_TIMEOUT, call).await
    }

    /// Runs `call` even while the store rests, with `PATIENT_TIMEOUT`: for a write
    /// that a client waits on and that must not be skipped (a revocation), and
    /// for background work. The first call also dials Redis, which on a busy host
    /// can outlast `CALL_TIMEOUT`; a background call timing out would make every
    /// request skip the shared state for `REST_AFTER_FAILURE`.
    pub async fn patient<T, F, Fut>(&self, what: &'static str, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run(what, PATIENT_TIMEOUT, call).await
    }

    async fn run<T, F, Fut>(&self, what: &'static str, timeout: Duration, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let outcome = tokio::time::timeout(timeout, call(self.connection.clone())).await;
        let error = match outcome {
            Ok(Ok(value)) => {
                crate::metrics::metrics().shared_store_up.set(1);
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(call = what, "redis reachable again; shared state in use");
                }
                return Some(value);
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {} ms", timeout.as_millis()),
        };
        *self.resting_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + REST_AFTER_FAILURE);
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(call = what, %error, "redis unreachable; each copy decides alone until it is back");
        }
        let metrics = crate::metrics::metrics();
        metrics.shared_store_failures.inc();
        metrics.shared_store_up.set(0);
        None
    }

    fn resting(&self) -> bool {
        let resting = self.resting_until.lock().unwrap_or_else(|e| e.into_inner());
        resting.is_some_and(|until| Instant::now() < until)
    }
}
