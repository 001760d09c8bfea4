//! Accounts in the database: registration with its UserRegistered event, sign-in,
//! reads with each user's order figures, and the bootstrap admin.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::auth::{Role, TokenSigner};
use shop_platform::outbox::{self, OutboxSignal};
use shop_platform::pagination::{self, timestamp};
use shop_proto::common::Money;
use shop_proto::user as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::account::{self, LoginAttempt, Registration};
use crate::credentials::PasswordHasherPool;
use crate::sign_in_throttle::SignInThrottle;

/// The topic of this service's events.
pub use shop_proto::user::EVENTS_TOPIC as USER_EVENTS_TOPIC;

#[derive(sqlx::FromRow)]
struct UserRow {
    user_id: Uuid,
    email: String,
    display_name: String,
    role: String,
    created_at: DateTime<Utc>,
}

/// A user row with its password hash, for sign-in only.
#[derive(sqlx::FromRow)]
struct Credentials {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

/// What the gRPC layer needs to serve accounts.
#[derive(Clone, Debug)]
pub struct Accounts {
    pool: PgPool,
    hasher: PasswordHasherPool,
    signer: TokenSigner,
    token_ttl: Duration,
    outbox: OutboxSignal,
    sign_in: Arc<SignInThrottle>,
}

impl Accounts {
    /// Accounts in `pool`, signing tokens that live `token_ttl`; a new account's
    /// event wakes the relay through `outbox`. Sign-ins are throttled as
    /// `sign_in_throttle` says.
    pub fn new(
        pool: PgPool,
        signer: TokenSigner,
        token_ttl: Duration,
        outbox: OutboxSignal,
    ) -> Self {
        Self {
            pool,
            hasher: PasswordHasherPool::new(),
            signer,
            token_ttl,
            outbox,
            sign_in: Arc::new(SignInThrottle::default()),
        }
    }

    #[tracing::instrument(name = "db users.register", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "users", db.operation.name = "register"))]
    pub async fn register(
        &self,
        registration: Registration,
        role: Role,
        client: Option<IpAddr>,
    ) -> Result<pb::User, ApiError> {
        let hash = self
            .hasher
            .hash(registration.password.expose().to_owned(), client)
            .await?;
        let user_id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query_as::<_, UserRow>(
            "INSERT INTO users (user_id, email, display_name, password_hash, role)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING user_id, email, display_name, role, created_at",
        )
        .bind(user_id)
        .bind(registration.email.as_str())
        .bind(&registration.display_name)
        .bind(&hash)
        .bind(account::role_to_db(role))
        .fetch_one(&mut *tx)
        .await;
        let row = match inserted {
            Ok(row) => row,
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(ApiError::AlreadyExists {
                    resource: "user with email",
                    id: registration.email.as_str().to_owned(),
                });
            }
            Err(err) => return Err(err.into()),
        };
        let event = pb::UserRegistered {
            user_id: row.user_id.to_string(),
            email: row.email.clone(),
            role: account::role_to_proto(role) as i32,
            register_time: Some(timestamp(row.created_at)),
        };
        outbox::enqueue(&mut tx, USER_EVENTS_TOPIC, &event.user_id, &event).await?;
        tx.commit().await?;
        self.outbox.notify();
        tracing::info!(user_id = %row.user_id, "user registered");
        Ok(to_proto(row, pb::UserStats::default()))
    }

    /// A token for matching credentials; the same error whether the email is
    /// unknown or the password wrong. Refused without checking while `client` or
    /// the account is locked out after failures (see `sign_in_throttle`).
    #[tracing::instrument(name = "db users.login", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "users", db.operation.name = "login"))]
    pub async fn login(
        &self,
        attempt: LoginAttempt,
        client: IpAddr,
    ) -> Result<pb::LoginResponse, ApiError> {
        let throttled = self.sign_in.begin(&attempt.email, client)?;
        let found = sqlx::query_as::<_, Credentials>(
            "SELECT user_id, email, display_name, role, created_at, password_hash FROM users WHERE email = $1",
        )
        .bind(&attempt.email)
        .fetch_optional(&self.pool)
        .await?;
        let (row, hash) = match found {
            Some(Credentials {
                user,
                password_hash,
            }) => (Some(user), Some(password_hash)),
            None => (None, None),
        };
        let matches = self.hasher.verify(attempt.password, hash, client).await?;
        let Some(row) = row.filter(|_| matches) else {
            throttled.failed();
            return Err(ApiError::Unauthenticated(
                "invalid email or password".into(),
            ));
        };
        throttled.succeeded();
        let role = account::role_from_db(&row.role);
        let (token, exp) =
            self.signer
                .sign(&row.user_id.to_string(), Some(role), self.token_ttl)?;
        let stats = self
            .stats(&[row.user_id])
            .await?
            .remove(&row.user_id)
            .unwrap_or_default();
        Ok(pb::LoginResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: i64::try_from(exp).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            user: Some(to_proto(row, stats)),
        })
    }

    #[tracing::instrument(name = "db users.get", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "users", db.operation.name = "get"))]
    pub async fn get(&self, user_id: Uuid) -> Result<pb::User, ApiError> {
        let row = sqlx::query_as::<_, UserRow>(
            "SELECT user_id, email, display_name, role, created_at FROM users WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            resource: "user",
            id: user_id.to_string(),
        })?;
        let stats = self
            .stats(&[user_id])
            .await?
            .remove(&user_id)
            .unwrap_or_default();
        Ok(to_proto(row, stats))
    }

    /// Users in id order (UUIDv7: registration order), after the token's key.
    #[tracing::instrument(name = "db users.list", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "users", db.operation.name = "list"))]
    pub async fn list(
        &self,
        page_size: i64,
        after: Option<Uuid>,
    ) -> Result<pb::ListUsersResponse, ApiError> {
        let rows = sqlx::query_as::<_, UserRow>(
            "SELECT user_id, email, display_name, role, created_at FROM users
             WHERE $1::uuid IS NULL OR user_id > $1
             ORDER BY user_id LIMIT $2",
        )
        .bind(after)
        .bind(page_size + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() as i64 > page_size;
        let rows: Vec<UserRow> = rows.into_iter().take(page_size as usize).collect();
        let next_page_token = match (has_more, rows.last()) {
            (true, Some(last)) => pagination::encode_token(&last.user_id.to_string()),
            _ => String::new(),
        };
        let ids: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
        let mut stats = self.stats(&ids).await?;
        let users = rows
            .into_iter()
            .map(|row| {
                let s = stats.remove(&row.user_id).unwrap_or_default();
                to_proto(row, s)
            })
            .collect();
        Ok(pb::ListUsersResponse {
            users,
            next_page_token,
        })
    }

    /// Order count and spend per currency over confirmed, not cancelled orders.
    async fn stats(&self, user_ids: &[Uuid]) -> Result<HashMap<Uuid, pb::UserStats>, ApiError> {
        let rows: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
            "SELECT user_id, currency_code, count(*), sum(amount_minor)::bigint FROM user_orders
             WHERE user_id = ANY($1) AND cancelled_at IS NULL
             GROUP BY user_id, currency_code ORDER BY currency_code",
        )
        .bind(user_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut stats: HashMap<Uuid, pb::UserStats> = HashMap::new();
        for (user_id, currency_code, count, amount_minor) in rows {
            let entry = stats.entry(user_id).or_default();
            entry.order_count += count;
            entry.lifetime_spend.push(Money {
                currency_code,
                amount_minor,
            });
        }
        Ok(stats)
    }

    /// Creates the configured admin account unless that email exists.
    pub async fn ensure_admin(&self, registration: Registration) -> anyhow::Result<()> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)")
                .bind(registration.email.as_str())
                .fetch_one(&self.pool)
                .await?;
        if exists {
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

fn to_proto(row: UserRow, stats: pb::UserStats) -> pb::User {
    pb::User {
        user_id: row.user_id.to_string(),
        email: row.email,
        display_name: row.display_name,
        role: account::role_to_proto(account::role_from_db(&row.role)) as i32,
        create_time: Some(timestamp(row.created_at)),
        stats: Some(stats),
    }
}
