//! Access tokens and service identity.
//!
//! User access tokens are EdDSA JWTs signed by the user service and checked
//! everywhere for signature (by the key their `kid` names, from the set the user
//! service publishes: platform::access_keys), issuer, audience and expiry. A service proves who it
//! is with its own short-lived token (key held by services only) in the
//! `x-service-authorization` header; the end user's token travels alongside in
//! `authorization` for audit.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::access_keys::{KeyMissing, TokenKeys};
use crate::config::{ConfigError, Secret, ServiceSettings};
use crate::error::ApiError;
use crate::revocation::Revocations;
pub use crate::revocation::TokenFacts;
use crate::shared_store::SharedStore;

/// The audience and issuer of service identity tokens.
pub const SERVICE_AUDIENCE: &str = "shopmesh-internal";
pub const SERVICE_ISSUER: &str = "shopmesh-services";
/// The header a service puts its own identity token in.
pub const SERVICE_AUTHORIZATION: &str = "x-service-authorization";
const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

/// What a token says. `role` is set on user tokens only.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// A signed-in end user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPrincipal {
    pub user_id: Uuid,
    pub role: Role,
    /// The access token the user called with (what a logout revokes).
    pub token: TokenFacts,
}

/// Who is calling: possibly nobody, an end user, a service, or a service acting
/// for an end user.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub user: Option<UserPrincipal>,
    pub service: Option<String>,
}

impl Caller {
    /// The signed-in user, or UNAUTHENTICATED.
    pub fn require_user(&self) -> Result<&UserPrincipal, ApiError> {
        self.user.as_ref().ok_or_else(|| {
            ApiError::Unauthenticated("missing bearer token in authorization header".into())
        })
    }

    /// An admin user, or UNAUTHENTICATED / PERMISSION_DENIED.
    pub fn require_admin(&self) -> Result<&UserPrincipal, ApiError> {
        let user = self.require_user()?;
        if user.role == Role::Admin {
            Ok(user)
        } else {
            Err(ApiError::PermissionDenied("admin role required".into()))
        }
    }

    /// The named service, whatever user it acts for.
    pub fn require_service(&self, name: &str) -> Result<(), ApiError> {
        match self.service.as_deref() {
            Some(s) if s == name => Ok(()),
            Some(other) => Err(ApiError::PermissionDenied(format!(
                "service {other} may not call this method"
            ))),
            None => Err(ApiError::PermissionDenied(format!(
                "internal method: only the {name} may call it"
            ))),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role == Role::Admin)
    }
}

/// Checks the tokens on incoming calls.
#[derive(Clone)]
pub struct Authenticator {
    /// The keys that verify user access tokens, by key id.
    user_keys: TokenKeys,
    user_validation: Validation,
    /// The keys that sign service tokens, by key id (two while one rotates).
    service_keys: Option<TokenKeys>,
    service_validation: Validation,
    /// Revoked tokens, when this process follows them (platform::revocation).
    revocations: Option<Arc<Revocations>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.user_validation.iss)
            .field("audience", &self.user_validation.aud)
            .finish_non_exhaustive()
    }
}

fn validation(issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 5;
    v
}

impl Authenticator {
    pub fn new(
        user_keys: TokenKeys,
        issuer: &str,
        audience: &str,
        service_public_pem: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let service_keys = service_public_pem
            .map(|pems| TokenKeys::from_pems(pems, "SERVICE_PUBLIC_KEY"))
            .transpose()?;
        Ok(Self {
            user_keys,
            user_validation: validation(issuer, audience),
            service_keys,
            service_validation: validation(SERVICE_ISSUER, SERVICE_AUDIENCE),
            revocations: None,
        })
    }

    /// The same, also refusing the tokens that `revocations` names.
    #[must_use]
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// The revocations this authenticator refuses by, if it follows any.
    pub fn revocations(&self) -> Option<&Arc<Revocations>> {
        self.revocations.as_ref()
    }

    /// The verifier that the common settings describe (access token keys pinned by
    /// `AUTH_PUBLIC_KEY` or fetched from `AUTH_KEYS_ADDR`; `SERVICE_PUBLIC_KEY` when
    /// this service accepts calls from other services), refusing revoked tokens:
    /// those shared in `REDIS_URL`'s store, or with no store, those revoked in this
    /// process. Call within the runtime: fetching keys and following the store are tasks.
    pub async fn from_settings(settings: &ServiceSettings) -> Result<Self, ConfigError> {
        let user_keys = TokenKeys::from_settings(
            &settings.auth_public_key,
            &settings.auth_keys_addr,
            settings.auth_keys_refresh_secs,
            crate::tls::TlsFiles::from_settings(settings)?.as_ref(),
            Duration::from_millis(settings.peer_resolve_every_ms),
        )
        .await?;
        let store = SharedStore::from_url(settings.redis_url.expose())?;
        Self::from_settings_sharing(settings, user_keys, store)
    }

    /// The verifier of `from_settings` with the user keys given, following the
    /// revocations in a store the caller shares (the user service: it holds the
    /// keys itself).
    pub fn from_settings_sharing(
        settings: &ServiceSettings,
        user_keys: TokenKeys,
        store: Option<Arc<SharedStore>>,
    ) -> Result<Self, ConfigError> {
        let service_key = Some(settings.service_public_key.expose()).filter(|k| !k.is_empty());
        Ok(Self::new(
            user_keys,
            &settings.auth_issuer,
            &settings.auth_audience,
            service_key,
        )?
        .with_revocations(Revocations::follow(store)))
    }

    /// The keys this verifier checks access tokens with.
    pub fn user_keys(&self) -> &TokenKeys {
        &self.user_keys
    }

    /// Reads `authorization` and `x-service-authorization`. No token is an anonymous
    /// caller; a token that is present but invalid is UNAUTHENTICATED.
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Caller, ApiError> {
        let mut caller = Caller::default();
        if let Some(token) = bearer(metadata, "authorization")? {
            let claims = self.verify_user_token(token)?;
            let user_id = Uuid::parse_str(&claims.sub).map_err(|_| {
                ApiError::Unauthenticated("access token subject is not a user id".into())
            })?;
            let role = claims
                .role
                .ok_or_else(|| ApiError::Unauthenticated("access token has no role".into()))?;
            let token = TokenFacts {
                id: claims.jti,
                user_id,
                issued_at: claims.iat,
                expires_at: claims.exp,
            };
            if self
                .revocations
                .as_ref()
                .is_some_and(|revocations| revocations.is_revoked(&token))
            {
                return Err(ApiError::Unauthenticated(
                    "access token has been revoked; sign in again".into(),
                ));
            }
            caller.user = Some(UserPrincipal {
                user_id,
                role,
                token,
            });
        }
        if let Some(token) = bearer(metadata, SERVICE_AUTHORIZATION)? {
            let keys = self.service_keys.as_ref().ok_or_else(|| {
                ApiError::Unauthenticated("this service does not accept service tokens".into())
            })?;
            // Only a key this service was given verifies.
            let claims = verify_by_key_id(
                token,
                keys,
                &self.service_validation,
                "service token",
                |_| "service token is signed by a key this service does not trust".into(),
            )?;
            caller.service = Some(claims.sub);
        }
        Ok(caller)
    }
}

impl Authenticator {
    /// An access token's claims, checked with the published key its header names.
    fn verify_user_token(&self, token: &str) -> Result<Claims, ApiError> {
        verify_by_key_id(
            token,
            &self.user_keys,
            &self.user_validation,
            "access token",
            |kid| {
                format!(
                    "access token is signed by key {kid}, which the user service does not publish"
                )
            },
        )
    }
}

/// The claims of `token`, checked with the key among `keys` that its header's
/// `kid` names; `what` names the token in errors, and `not_held` says why a key
/// id that `keys` lack is refused.
fn verify_by_key_id(
    token: &str,
    keys: &TokenKeys,
    validation: &Validation,
    what: &str,
    not_held: impl FnOnce(&str) -> String,
) -> Result<Claims, ApiError> {
    let kid = jsonwebtoken::decode_header(token)
        .map_err(|_| ApiError::Unauthenticated(format!("{what} is malformed")))?
        .kid
        .ok_or_else(|| ApiError::Unauthenticated(format!("{what} names no key (kid)")))?;
    match keys.with_key(&kid, |key| decode(token, key, validation, what)) {
        Ok(claims) => claims,
        Err(KeyMissing::Unknown) => Err(ApiError::Unauthenticated(not_held(printable_key_id(
            &kid,
        )))),
        // Only a fetched set can lack its keys, and only the user service's is fetched.
        Err(KeyMissing::NotFetchedYet) => Err(ApiError::Unavailable(
            "the keys that verify access tokens have not been fetched from the user service yet; retry shortly".into(),
        )),
    }
}

/// A token's `kid` as an error may repeat it: the id if it looks like one.
fn printable_key_id(kid: &str) -> &str {
    let readable = kid.len() <= 64
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if readable { kid } else { "(an unreadable id)" }
}

fn bearer<'a>(metadata: &'a MetadataMap, header: &str) -> Result<Option<&'a str>, ApiError> {
    let Some(value) = metadata.get(header) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthenticated(format!("{header} header is not ASCII")))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::Unauthenticated(format!("{header} header must be 'Bearer <token>'"))
        })?;
    Ok(Some(token.trim()))
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    what: &str,
) -> Result<Claims, ApiError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|err| {
            let why = match err.kind() {
                ErrorKind::ExpiredSignature => "has expired",
                ErrorKind::InvalidSignature => "signature is invalid",
                ErrorKind::InvalidIssuer => "issuer is not accepted",
                ErrorKind::InvalidAudience => "audience is not accepted",
                ErrorKind::InvalidAlgorithm => "algorithm is not accepted",
                ErrorKind::ImmatureSignature => "is not valid yet",
                ErrorKind::MissingRequiredClaim(_) => "lacks a required claim",
                _ => "is malformed",
            };
            ApiError::Unauthenticated(format!("{what} {why}"))
        })
}

/// Signs tokens with an Ed25519 private key.
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
    /// The key's id, written as `kid` in every token's header.
    key_id: String,
    /// The public half, which verifies what this signs.
    public: ed25519_dalek::VerifyingKey,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl TokenSigner {
    pub fn new(
        private_pem: &str,
        issuer: &str,
        audience: &str,
        key_name: &str,
    ) -> Result<Self, ConfigError> {
        let key = EncodingKey::from_ed_pem(private_pem.as_bytes()).map_err(|e| {
            ConfigError::missing(
                key_name,
                &format!("not an Ed25519 PKCS#8 private key PEM: {e}"),
            )
        })?;
        let public = {
            use ed25519_dalek::pkcs8::DecodePrivateKey as _;
            ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem)
                .map_err(|_| {
                    ConfigError::missing(key_name, "not an Ed25519 PKCS#8 private key PEM")
                })?
                .verifying_key()
        };
        Ok(Self {
            key,
            key_id: crate::event_signature::key_id(&public),
            public,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// The public key that verifies this signer's tokens.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.public
    }

    /// A signer for this service's identity tokens.
    pub fn for_service(private_pem: &str) -> Result<Self, ConfigError> {
        Self::new(
            private_pem,
            SERVICE_ISSUER,
            SERVICE_AUDIENCE,
            "SERVICE_PRIVATE_KEY",
        )
    }

    /// Signs a token for `subject`, valid for `ttl`; returns it and its expiry (unix seconds).
    pub fn sign(
        &self,
        subject: &str,
        role: Option<Role>,
        ttl: Duration,
    ) -> Result<(String, u64), ApiError> {
        let iat = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.into(),
            aud: self.audience.clone(),
            exp: iat + ttl.as_secs(),
            iat,
            jti: Uuid::now_v7().to_string(),
            role,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("signing token")))?;
        Ok((token, claims.exp))
    }

    /// A fresh service identity token for `service_name`.
    pub fn service_token(&self, service_name: &str) -> Result<String, ApiError> {
        self.sign(service_name, None, SERVICE_TOKEN_TTL)
            .map(|(t, _)| t)
    }
}

/// A new Ed25519 key pair as (PKCS#8 private PEM, SPKI public PEM).
pub fn generate_keypair() -> (Secret, String) {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let private = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map(|p| Secret::new(p.as_str()))
        .unwrap_or_default();
    let public = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap_or_default();
    (private, public)
}

/// The key pairs `write_keypairs` makes: user access tokens, service identity,
/// and each publishing service's own event-signing key.
pub const KEY_PAIRS: [&str; 5] = [
    "auth",
    "service",
    "events-user",
    "events-inventory",
    "events-order",
];

/// Writes the `KEY_PAIRS` into `dir` as `<name>.key` (PKCS#8, mode 0600) and
/// `<name>.pub` (SPKI). A pair already there is kept, so a restarted key job
/// never invalidates issued tokens or signed events; a missing one is made.
pub fn write_keypairs(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in KEY_PAIRS {
        let key = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        if key.is_file() && public.is_file() {
            continue;
        }
        let (private, public_pem) = generate_keypair();
        std::fs::write(&key, private.expose())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::write(public, public_pem)?;
        eprintln!("made {name}.key and {name}.pub in {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn md(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
        );
        m
    }

    #[test]
    fn round_trip_and_rejections() {
        let (private, public) = generate_keypair();
        let signer = TokenSigner::new(private.expose(), "iss", "aud", "K").expect("signer");
        let keys = TokenKeys::from_pems(&public, "K").expect("keys");
        let auth = Authenticator::new(keys, "iss", "aud", None).expect("auth");
        let id = Uuid::now_v7();
        let (token, _) = signer
            .sign(&id.to_string(), Some(Role::Admin), Duration::from_secs(60))
            .expect("sign");
        let caller = auth.caller(&md(&token)).expect("valid");
        let user = caller.user.expect("a user");
        assert_eq!((user.user_id, user.role), (id, Role::Admin));
        assert_eq!(user.token.user_id, id);
        assert!(user.token.expires_at > user.token.issued_at);

        // wrong audience
        let other = TokenSigner::new(private.expose(), "iss", "someone-else", "K").expect("signer");
        let (token, _) = other
            .sign(&id.to_string(), Some(Role::Admin), Duration::from_secs(60))
            .expect("sign");
        let err = auth.caller(&md(&token)).expect_err("wrong audience");
        assert!(err.to_string().contains("audience"), "{err}");

        // signed by a key that is not published
        let (forger, _) = generate_keypair();
        let forged = TokenSigner::new(forger.expose(), "iss", "aud", "K").expect("signer");
        let (token, _) = forged
            .sign(&id.to_string(), Some(Role::Admin), Duration::from_secs(60))
            .expect("sign");
        let err = auth.caller(&md(&token)).expect_err("unknown key");
        assert!(err.to_string().contains("does not publish"), "{err}");

        // forged: another key's signature under the trusted key's id
        let claims = Claims {
            iss: "iss".into(),
            sub: id.to_string(),
            aud: "aud".into(),
            exp: now_secs() + 60,
            iat: now_secs(),
            jti: "forged".into(),
            role: Some(Role::Admin),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.key_id.clone());
        let key = EncodingKey::from_ed_pem(forger.expose().as_bytes()).expect("key");
        let token = jsonwebtoken::encode(&header, &claims, &key).expect("jwt");
        let err = auth.caller(&md(&token)).expect_err("forged");
        assert!(err.to_string().contains("signature is invalid"), "{err}");

        // no key id
        let key = EncodingKey::from_ed_pem(private.expose().as_bytes()).expect("key");
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("jwt");
        let err = auth.caller(&md(&token)).expect_err("no kid");
        assert!(err.to_string().contains("names no key"), "{err}");

        // alg none
        let header = base64_url(r#"{"alg":"none","typ":"JWT"}"#);
        let body = base64_url(&format!(
            r#"{{"iss":"iss","aud":"aud","sub":"{id}","exp":{},"iat":0,"jti":"x","role":"admin"}}"#,
            now_secs() + 60
        ));
        let err = auth
            .caller(&md(&format!("{header}.{body}.")))
            .expect_err("alg none");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    fn service_md(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(
            SERVICE_AUTHORIZATION,
            MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
        );
        m
    }

    #[test]
    fn service_tokens_name_their_key_and_only_trusted_keys_verify() {
        let (_, user_public) = generate_keypair();
        let (old_private, old_public) = generate_keypair();
        let (new_private, new_public) = generate_keypair();
        // While a key rotates, both public keys are trusted.
        let both = format!("{old_public}\n{new_public}");
        let user_keys = TokenKeys::from_pems(&user_public, "K").expect("keys");
        let auth = Authenticator::new(user_keys, "iss", "aud", Some(&both)).expect("auth");
        for private in [&old_private, &new_private] {
            let token = TokenSigner::for_service(private.expose())
                .expect("signer")
                .service_token("order-service")
                .expect("token");
            let caller = auth.caller(&service_md(&token)).expect("trusted key");
            assert_eq!(caller.service.as_deref(), Some("order-service"));
        }
        // Another service's own key is not trusted here.
        let (other_private, _) = generate_keypair();
        let token = TokenSigner::for_service(other_private.expose())
            .expect("signer")
            .service_token("order-service")
            .expect("token");
        let err = auth.caller(&service_md(&token)).expect_err("untrusted key");
        assert!(err.to_string().contains("does not trust"), "{err}");
        // A token without a key id is refused.
        let claims = format!(
            r#"{{"iss":"{SERVICE_ISSUER}","aud":"{SERVICE_AUDIENCE}","sub":"order-service","exp":{},"iat":0,"jti":"x"}}"#,
            now_secs() + 60
        );
        let key = EncodingKey::from_ed_pem(old_private.expose().as_bytes()).expect("key");
        let claims: serde_json::Value = serde_json::from_str(&claims).expect("json");
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("jwt");
        let err = auth.caller(&service_md(&token)).expect_err("no kid");
        assert!(err.to_string().contains("kid"), "{err}");
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
