//! The keys that verify user access tokens.
//!
//! The user service signs with one key and publishes it, with any key retired
//! from signing or about to sign, as a JSON Web Key Set (`ListAccessTokenKeys`,
//! `/.well-known/jwks.json` through the gateway). Every other verifier either
//! pins keys (`AUTH_PUBLIC_KEY`) or fetches the set from the user service over
//! the mesh's gRPC channel (`AUTH_KEYS_ADDR`, mutual TLS where the mesh speaks
//! it) and fetches it again every `AUTH_KEYS_REFRESH_SECS`.
//!
//! Invariants of a fetched set: it is replaced whole by each good answer (a key
//! the user service stops publishing stops verifying within one refresh); a
//! failed or empty answer keeps the set it had (an outage of the user service
//! signs nobody out); a key is taken only under its own id (`kid` is derived
//! from the key, so a published entry cannot lend its id to another key).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use ed25519_dalek::VerifyingKey;
use jsonwebtoken::DecodingKey;
use shop_proto::user as pb;
use shop_proto::user::user_service_client::UserServiceClient;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::config::{ConfigError, Secret};
use crate::error::ApiError;
use crate::event_signature::{key_id, public_keys};
use crate::tls::TlsFiles;

/// `AUTH_KEYS_REFRESH_SECS` unless set: how often a verifier fetches the set.
pub const DEFAULT_REFRESH_SECS: u64 = 60;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The first retry after a failed fetch; each failure after it doubles the
/// wait up to `MAX_RETRY` (or the refresh period, if shorter). Short: until the
/// first fetch succeeds this copy is not ready, and a fetch is cheap.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// A token naming an unknown key asks for an early fetch at most this often, so
/// that a flood of forged key ids costs the user service one call per period.
const EARLY_FETCH_EVERY: Duration = Duration::from_secs(5);

/// The public key in JSON Web Key form.
pub fn to_jwk(key: &VerifyingKey) -> pb::JsonWebKey {
    pb::JsonWebKey {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: URL_SAFE_NO_PAD.encode(key.as_bytes()),
        kid: key_id(key),
        r#use: "sig".into(),
        alg: "EdDSA".into(),
    }
}

/// The key a published entry holds, or why it cannot verify access tokens.
pub fn from_jwk(jwk: &pb::JsonWebKey) -> Result<VerifyingKey, String> {
    if (jwk.kty.as_str(), jwk.crv.as_str()) != ("OKP", "Ed25519") {
        return Err(format!(
            "key {} is {}/{}, not OKP/Ed25519",
            jwk.kid, jwk.kty, jwk.crv
        ));
    }
    if !jwk.alg.is_empty() && jwk.alg != "EdDSA" {
        return Err(format!("key {} is for {}, not EdDSA", jwk.kid, jwk.alg));
    }
    if !jwk.r#use.is_empty() && jwk.r#use != "sig" {
        return Err(format!("key {} is for {:?}, not sig", jwk.kid, jwk.r#use));
    }
    let bytes: [u8; 32] = URL_SAFE_NO_PAD
        .decode(&jwk.x)
        .ok()
        .and_then(|x| x.try_into().ok())
        .ok_or_else(|| format!("key {}: x is not 32 bytes of base64url", jwk.kid))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| format!("key {}: x is not an Ed25519 point", jwk.kid))?;
    if key_id(&key) != jwk.kid {
        return Err(format!(
            "key {} is published under another key's id ({} is its own)",
            jwk.kid,
            key_id(&key)
        ));
    }
    Ok(key)
}

/// What a verifier does not have.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyMissing {
    /// No fetch has succeeded yet: the token may be fine.
    NotFetchedYet,
    /// The key is not (or no longer) among the trusted ones.
    Unknown,
}

/// The keys one verifier trusts, by key id: pinned, or fetched and kept fresh.
#[derive(Clone)]
pub struct TokenKeys {
    shared: Arc<Shared>,
}

struct Shared {
    /// None until the first fetch of a fetched set succeeds.
    keys: RwLock<Option<HashMap<String, DecodingKey>>>,
    /// Fetches the set; None for pinned keys.
    source: Option<Source>,
}

struct Source {
    client: UserServiceClient<Channel>,
    /// Wakes the refresher early (a token named a key this set lacks).
    early: Arc<Notify>,
    /// When the last early fetch was asked for (ms since `started`).
    early_asked_ms: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("key_ids", &self.key_ids())
            .field("fetched", &self.shared.source.is_some())
            .finish()
    }
}

impl TokenKeys {
    /// Exactly these keys, never fetched.
    pub fn pinned(keys: &[VerifyingKey]) -> Self {
        let keys = keys
            .iter()
            .map(|key| (key_id(key), DecodingKey::from_ed_der(key.as_bytes())))
            .collect();
        Self {
            shared: Arc::new(Shared {
                keys: RwLock::new(Some(keys)),
                source: None,
            }),
        }
    }

    /// The keys in `pems` (one or more SPKI PEM blocks); `setting` names them in errors.
    pub fn from_pems(pems: &str, setting: &str) -> Result<Self, ConfigError> {
        let keys: Vec<VerifyingKey> = public_keys(pems)
            .filter(|keys| !keys.is_empty())
            .ok_or_else(|| ConfigError::missing(setting, "not Ed25519 public key PEM blocks"))?
            .into_iter()
            .map(|(_, key, _)| key)
            .collect();
        Ok(Self::pinned(&keys))
    }

    /// The set the user service publishes on `channel`, fetched once now (for up
    /// to `FETCH_TIMEOUT`, so that a start beside a user service still starting
    /// is not held up) and then every `refresh` by a task that ends with the last
    /// copy of these keys.
    pub async fn fetched(channel: Channel, refresh: Duration) -> Self {
        let keys = Self {
            shared: Arc::new(Shared {
                keys: RwLock::new(None),
                source: Some(Source {
                    client: UserServiceClient::new(channel),
                    early: Arc::new(Notify::new()),
                    early_asked_ms: AtomicU64::new(0),
                    started: Instant::now(),
                }),
            }),
        };
        let first = keys.refresh().await;
        if let Err(err) = &first {
            tracing::warn!(error = %err, "access token keys not fetched at start; retrying");
        }
        tokio::spawn(keep_fresh(
            Arc::downgrade(&keys.shared),
            refresh,
            first.is_ok(),
        ));
        keys
    }

    /// The verifier's keys as its settings say: `AUTH_PUBLIC_KEY` pins them;
    /// otherwise they are fetched from `AUTH_KEYS_ADDR` (a gRPC address of the user
    /// service, https with `tls`) every `AUTH_KEYS_REFRESH_SECS`.
    pub async fn from_settings(
        public_pems: &Secret,
        keys_addr: &str,
        refresh_secs: u64,
        tls: Option<&TlsFiles>,
        resolve_every: Duration,
    ) -> Result<Self, ConfigError> {
        match (public_pems.is_empty(), keys_addr.trim().is_empty()) {
            (false, true) => Self::from_pems(public_pems.expose(), "AUTH_PUBLIC_KEY"),
            (true, false) => {
                if refresh_secs == 0 {
                    return Err(ConfigError::missing(
                        "AUTH_KEYS_REFRESH_SECS",
                        "must be at least 1",
                    ));
                }
                let channel = crate::grpc::channel_every(
                    keys_addr,
                    Duration::from_secs(1),
                    resolve_every,
                    tls,
                )
                .await
                .map_err(|e| ConfigError::missing("AUTH_KEYS_ADDR", &format!("{e:#}")))?;
                Ok(Self::fetched(channel, Duration::from_secs(refresh_secs)).await)
            }
            (false, false) => Err(ConfigError::missing(
                "AUTH_KEYS_ADDR",
                "set AUTH_KEYS_ADDR (fetch the keys from the user service) or AUTH_PUBLIC_KEY (pin them), not both",
            )),
            (true, true) => Err(ConfigError::missing(
                "AUTH_KEYS_ADDR",
                "must be set (the user service's gRPC address, whose published keys verify access tokens), or AUTH_PUBLIC_KEY to pin keys",
            )),
        }
    }

    /// Fetches the published set now and, if it holds a usable key, makes it the
    /// trusted set; returns how many keys it holds. Pinned keys are left as they are.
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        let Some(source) = &self.shared.source else {
            return Ok(self.key_ids().len());
        };
        let mut request = tonic::Request::new(pb::ListAccessTokenKeysRequest {});
        request.set_timeout(FETCH_TIMEOUT);
        let published = tokio::time::timeout(
            FETCH_TIMEOUT,
            source.client.clone().list_access_token_keys(request),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the user service did not answer within {FETCH_TIMEOUT:?}"))?
        .map_err(|status| {
            anyhow::anyhow!(
                "the user service answered {:?}: {}",
                status.code(),
                status.message()
            )
        })?
        .into_inner();
        let mut keys = HashMap::new();
        for jwk in &published.keys {
            match from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(jwk.kid.clone(), DecodingKey::from_ed_der(key.as_bytes()));
                }
                Err(why) => tracing::warn!(%why, "published access token key skipped"),
            }
        }
        anyhow::ensure!(
            !keys.is_empty(),
            "the user service published no usable key ({} entries)",
            published.keys.len()
        );
        let count = keys.len();
        let before = self.key_ids();
        let after: BTreeSet<String> = keys.keys().cloned().collect();
        *self.shared.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
        if before != after {
            tracing::info!(key_ids = ?after, "access token keys fetched");
        }
        Ok(count)
    }

    /// Whether any key is held: pinned keys always are; fetched ones once a
    /// fetch has succeeded.
    pub fn are_held(&self) -> bool {
        self.shared
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The ids of the keys trusted now.
    pub fn key_ids(&self) -> BTreeSet<String> {
        self.shared
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|keys| keys.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Runs `verify` with the key named `kid`. A fetched set that lacks it asks
    /// for an early fetch (rate-limited), so that a key published moments ago is
    /// trusted moments later.
    pub(crate) fn with_key<T>(
        &self,
        kid: &str,
        verify: impl FnOnce(&DecodingKey) -> Result<T, ApiError>,
    ) -> Result<Result<T, ApiError>, KeyMissing> {
        let keys = self.shared.keys.read().unwrap_or_else(|e| e.into_inner());
        let missing = match keys.as_ref() {
            None => KeyMissing::NotFetchedYet,
            Some(keys) => match keys.get(kid) {
                Some(key) => return Ok(verify(key)),
                None => KeyMissing::Unknown,
            },
        };
        drop(keys);
        if let Some(source) = &self.shared.source {
            source.ask_early();
        }
        Err(missing)
    }
}

impl Source {
    fn ask_early(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.early_asked_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < EARLY_FETCH_EVERY.as_millis() as u64 {
            return;
        }
        // One caller wins the slot; the others see it taken.
        if self
            .early_asked_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.early.notify_one();
        }
    }
}

/// Fetches the set every `refresh`, sooner when asked, and after a failure
/// again within `FIRST_RETRY`, doubling; ends once no copy of the keys is left.
async fn keep_fresh(shared: Weak<Shared>, refresh: Duration, mut last_ok: bool) {
    let mut retry = Backoff::new(FIRST_RETRY.min(refresh), MAX_RETRY.min(refresh));
    loop {
        let wait = if last_ok { refresh } else { retry.next_wait() };
        {
            let Some(strong) = shared.upgrade() else {
                return;
            };
            let Some(source) = &strong.source else {
                return;
            };
            let early = Arc::clone(&source.early);
            // Holding no strong reference while asleep lets the keys be dropped.
            drop(strong);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = early.notified() => {}
            }
        }
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let keys = TokenKeys { shared: strong };
        match keys.refresh().await {
            Ok(_) => {
                last_ok = true;
                retry.reset();
            }
            Err(err) => {
                tracing::warn!(error = %err, key_ids = ?keys.key_ids(), "access token keys not refreshed; keeping the ones held");
                last_ok = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VerifyingKey {
        ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng).verifying_key()
    }

    #[test]
    fn a_key_survives_its_json_web_key_form() {
        let original = key();
        let jwk = to_jwk(&original);
        assert_eq!(
            (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()),
            ("OKP", "Ed25519", "EdDSA")
        );
        assert_eq!(jwk.x.len(), 43, "32 bytes, base64url without padding");
        assert_eq!(from_jwk(&jwk), Ok(original));
    }

    #[test]
    fn an_entry_that_cannot_verify_tokens_is_named_and_refused() {
        let jwk = to_jwk(&key());
        let cases = [
            (
                pb::JsonWebKey {
                    kty: "RSA".into(),
                    ..jwk.clone()
                },
                "not OKP/Ed25519",
            ),
            (
                pb::JsonWebKey {
                    alg: "ES256".into(),
                    ..jwk.clone()
                },
                "not EdDSA",
            ),
            (
                pb::JsonWebKey {
                    r#use: "enc".into(),
                    ..jwk.clone()
                },
                "not sig",
            ),
            (
                pb::JsonWebKey {
                    x: "AAAA".into(),
                    ..jwk.clone()
                },
                "not 32 bytes",
            ),
            // Another key's id: a published entry cannot stand in for a trusted key.
            (
                pb::JsonWebKey {
                    kid: to_jwk(&key()).kid,
                    ..jwk.clone()
                },
                "another key's id",
            ),
        ];
        for (entry, why) in cases {
            let err = from_jwk(&entry).expect_err(why);
            assert!(err.contains(why), "{err} should say {why}");
        }
    }

    #[tokio::test]
    async fn a_set_nobody_answers_for_has_no_keys_and_says_not_fetched_yet() {
        // A port nothing listens on: the first fetch fails, the set stays empty.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let keys = TokenKeys::fetched(channel, Duration::from_secs(60)).await;
        assert!(keys.key_ids().is_empty());
        let missing = keys
            .with_key("0011223344556677", |_| Ok(()))
            .expect_err("no key");
        assert_eq!(missing, KeyMissing::NotFetchedYet);
        assert!(keys.refresh().await.is_err());
    }
}
