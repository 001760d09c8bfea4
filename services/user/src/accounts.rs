//! Registration and sign-in: passwords hashed on a bounded pool, tokens signed,
//! sign-ins throttled per client and per account, over the user store.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use shop_platform::ApiError;
use shop_platform::auth::{Role, TokenSigner};
use shop_platform::shared_store::SharedStore;
use uuid::Uuid;

use crate::credentials::PasswordHasherPool;
use crate::model::{LoginAttempt, Registration, SignedIn, User, UserPage};
use crate::sign_in_throttle::{SharedLockouts, SignInThrottle, ThrottlePolicy};
use crate::store::{NewUser, Users};

/// What the gRPC layer needs to serve accounts.
#[derive(Clone, Debug)]
pub struct Accounts {
    users: Users,
    hasher: PasswordHasherPool,
    signer: TokenSigner,
    token_ttl: Duration,
    sign_in: Arc<SignInThrottle>,
    /// The same lockouts counted over every copy (Redis), when shared.
    shared_lockouts: Arc<SharedLockouts>,
}

impl Accounts {
    /// Accounts in `users`, signing tokens that live `token_ttl`; sign-in
    /// lockouts shared with the other copies through `shared`, if any.
    pub fn new(
        users: Users,
        signer: TokenSigner,
        token_ttl: Duration,
        shared: Option<Arc<SharedStore>>,
    ) -> Self {
        let policy = ThrottlePolicy::default();
        Self {
            users,
            hasher: PasswordHasherPool::new(),
            signer,
            token_ttl,
            sign_in: Arc::new(SignInThrottle::new(policy)),
            shared_lockouts: Arc::new(SharedLockouts::new(shared, policy)),
        }
    }

    /// Hashes the password (the hashing pool's share for `client` bounds the
    /// cost one address can cause) and stores the user with its event.
    pub async fn register(
        &self,
        registration: Registration,
        role: Role,
        client: Option<IpAddr>,
    ) -> Result<User, ApiError> {
        let hash = self
            .hasher
            .hash(registration.password.expose().to_owned(), client)
            .await?;
        let user = self
            .users
            .insert(NewUser {
                email: &registration.email,
                display_name: &registration.display_name,
                password_hash: &hash,
                role,
            })
            .await?;
        tracing::info!(user_id = %user.user_id, "user registered");
        Ok(user)
    }

    /// A token for matching credentials; the same error whether the email is
    /// unknown or the password wrong. Refused without checking while `client` or
    /// the account is locked out after failures (see `sign_in_throttle`).
    pub async fn login(&self, attempt: LoginAttempt, client: IpAddr) -> Result<SignedIn, ApiError> {
        self.shared_lockouts.check(&attempt.email, client).await?;
        let throttled = self.sign_in.begin(&attempt.email, client)?;
        let (user, hash) = match self.users.credentials(&attempt.email).await? {
            Some((user, hash)) => (Some(user), Some(hash)),
            None => (None, None),
        };
        // An unknown email is verified against a decoy hash: both take as long.
        let matches = self.hasher.verify(attempt.password, hash, client).await?;
        let Some(mut user) = user.filter(|_| matches) else {
            throttled.failed();
            self.shared_lockouts.failed(&attempt.email, client).await;
            return Err(ApiError::Unauthenticated(
                "invalid email or password".into(),
            ));
        };
        throttled.succeeded();
        self.shared_lockouts.succeeded(&attempt.email, client).await;
        let (access_token, expires_at) =
            self.signer
                .sign(&user.user_id.to_string(), Some(user.role), self.token_ttl)?;
        user.stats = self.users.stats_of(user.user_id).await?;
        Ok(SignedIn {
            access_token,
            expires_at,
            user,
        })
    }

    pub async fn get(&self, user_id: Uuid) -> Result<User, ApiError> {
        self.users.get(user_id).await
    }

    pub async fn list(&self, page_size: i64, after: Option<Uuid>) -> Result<UserPage, ApiError> {
        self.users.list(page_size, after).await
    }

    /// Creates the configured admin account unless that email exists.
    pub async fn ensure_admin(&self, registration: Registration) -> anyhow::Result<()> {
        if self.users.email_exists(&registration.email).await? {
            return Ok(());
        }
        match self.register(registration, Role::Admin, None).await {
            Ok(user) => {
                tracing::info!(user_id = %user.user_id, email = %user.email, "bootstrap admin created");
                Ok(())
            }
            Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(err) => Err(anyhow::anyhow!("creating the bootstrap admin: {err}")),
        }
    }
}
