//! Password hashing: Argon2id with OWASP's minimum parameters (19 MiB, 2 passes,
//! 1 lane), run off the async runtime and bounded so that a burst of sign-ins
//! cannot exhaust memory: a few hashes at once, a short queue behind them, and
//! RESOURCE_EXHAUSTED at once for anything past the queue.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Params, Version};
use std::net::IpAddr;

use shop_platform::ApiError;
use shop_platform::budget::{Grant, Refusal, SharedBudget};
use shop_platform::client_address::bucket;
use tokio::sync::Semaphore;

/// At most this many hashes at once (each holds 19 MiB).
const CONCURRENT_HASHES: usize = 8;

/// Requests that may wait for a hash; more are refused rather than queued.
const QUEUED_HASHES: usize = 32;

/// Hashes one client address may have running or waiting.
const HASHES_PER_CLIENT: usize = 4;

/// Verified against when the email is unknown, so both cases take as long: a
/// well-formed hash with the same parameters, which no password produces.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hvcG1lc2hkZWNveQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[derive(Clone, Debug)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    /// Places among the running and waiting hashes, in all and per client
    /// address, so that one client cannot fill the queue for everyone.
    admitted: Arc<SharedBudget>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Default for PasswordHasherPool {
    fn default() -> Self {
        Self::new()
    }
}

impl PasswordHasherPool {
    pub fn new() -> Self {
        Self::with_capacity(CONCURRENT_HASHES, QUEUED_HASHES, HASHES_PER_CLIENT)
    }

    pub fn with_capacity(concurrent: usize, queued: usize, per_client: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrent)),
            admitted: Arc::new(SharedBudget::new(concurrent + queued, per_client)),
        }
    }

    /// A place among the running or waiting hashes, or at once: RESOURCE_EXHAUSTED
    /// when this client holds its share (its own doing), UNAVAILABLE when the
    /// queue is full (the server's state; another replica may have room).
    fn admit(&self, client: Option<IpAddr>) -> Result<Grant, ApiError> {
        let key = client.map(bucket);
        self.admitted.take(key.as_deref(), 1).map_err(|refusal| {
            tracing::warn!(?refusal, "password hashing refused");
            match refusal {
                Refusal::Client => ApiError::Throttled {
                    message: "too many sign-ins in progress from your address; retry in 1 s".into(),
                    retry_after: Duration::from_secs(1),
                },
                Refusal::Total => {
                    ApiError::Unavailable("too many sign-ins in progress; retry in 1 s".into())
                }
            }
        })
    }

    /// Hashes a new password; `client` is None for the service's own accounts.
    pub async fn hash(&self, password: String, client: Option<IpAddr>) -> Result<String, ApiError> {
        let _admitted = self.admit(client)?;
        let _permit = self.permits.acquire().await.map_err(internal)?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(internal)?
            .map_err(ApiError::Internal)
    }

    /// Whether `password` matches `stored`; with no stored hash, spends the same time
    /// and answers false.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
        client: IpAddr,
    ) -> Result<bool, ApiError> {
        let _admitted = self.admit(Some(client))?;
        let _permit = self.permits.acquire().await.map_err(internal)?;
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| DECOY_HASH.to_owned());
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(internal)?;
        Ok(known && matches)
    }
}

fn internal(err: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::Internal(anyhow::Error::new(err).context("password hashing failed"))
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let pool = PasswordHasherPool::new();
        let me = ip("198.51.100.1");
        let hash = pool
            .hash("correct horse battery".into(), Some(me))
            .await
            .expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            pool.verify("correct horse battery".into(), Some(hash.clone()), me)
                .await
                .expect("verify")
        );
        assert!(
            !pool
                .verify("wrong horse battery".into(), Some(hash), me)
                .await
                .expect("verify")
        );
        assert!(
            !pool
                .verify("decoy password that matches nothing".into(), None, me)
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_per_client_and_in_all() {
        let pool = PasswordHasherPool::with_capacity(1, 1, 1);
        let (a, b) = (ip("198.51.100.1"), ip("198.51.100.2"));
        let _running = pool.admit(Some(a)).expect("a's place");
        let refused = pool.verify("any password".into(), None, a).await;
        assert!(
            matches!(refused, Err(ApiError::Throttled { .. })),
            "a holds its share: {refused:?}"
        );
        let _waiting = pool.admit(Some(b)).expect("b's place");
        let started = std::time::Instant::now();
        let refused = pool
            .verify("any password".into(), None, ip("198.51.100.3"))
            .await;
        assert!(
            matches!(refused, Err(ApiError::Unavailable(_))),
            "the queue is full: {refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "refused without waiting"
        );
    }

    #[test]
    fn the_decoy_costs_what_a_real_hash_costs() {
        let decoy = PasswordHash::new(DECOY_HASH).expect("a well-formed hash");
        let real = hash_blocking("any password at all").expect("hash");
        let real = PasswordHash::new(&real).expect("parse");
        assert_eq!(decoy.algorithm, real.algorithm);
        assert_eq!(decoy.params, real.params);
        assert_eq!(decoy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
    }
}
