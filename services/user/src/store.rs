//! The service's database: users and their password hashes, and the order
//! figures the order events keep. A new user is written with its
//! UserRegistered event in one transaction. Returns model types; the wire is
//! api.rs's.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use shop_platform::auth::Role;
use shop_platform::outbox::OutboxSignal;
use shop_platform::pagination;
use shop_platform::{ApiError, db};
use shop_proto::common::Money;
use sqlx::PgPool;
use uuid::Uuid;

use crate::events;
use crate::model::{self, Email, User, UserPage, UserStats};

#[derive(sqlx::FromRow)]
struct UserRow {
    user_id: Uuid,
    email: String,
    display_name: String,
    role: String,
    created_at: DateTime<Utc>,
}

impl UserRow {
    fn with_stats(self, stats: UserStats) -> User {
        User {
            user_id: self.user_id,
            email: self.email,
            display_name: self.display_name,
            role: model::role_from_db(&self.role),
            created_at: self.created_at,
            stats,
        }
    }
}

/// A user row with its password hash, for sign-in only.
#[derive(sqlx::FromRow)]
struct CredentialsRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

/// A new account, its password already hashed.
pub struct NewUser<'a> {
    pub email: &'a Email,
    pub display_name: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
}

impl std::fmt::Debug for NewUser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("email", self.email)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct Users {
    pool: PgPool,
    outbox: OutboxSignal,
}

impl Users {
    /// Users in `pool`; a new user's event wakes the relay through `outbox`.
    pub fn new(pool: PgPool, outbox: OutboxSignal) -> Self {
        Self { pool, outbox }
    }

    /// Inserts the user and its UserRegistered event; ALREADY_EXISTS names the email.
    #[tracing::instrument(name = "db users.insert", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "users", db.operation.name = "insert"))]
    pub async fn insert(&self, new: NewUser<'_>) -> Result<User, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        let inserted = sqlx::query_as::<_, UserRow>(
            "INSERT INTO users (user_id, email, display_name, password_hash, role)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING user_id, email, display_name, role, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(new.email.as_str())
        .bind(new.display_name)
        .bind(new.password_hash)
        .bind(model::role_to_db(new.role))
        .fetch_one(&mut *tx)
        .await;
        let row = db::unless_exists(inserted, "user with email", || {
            new.email.as_str().to_owned()
        })?;
        let user = row.with_stats(UserStats::default());
        events::user_registered(&mut tx, &user).await?;
        tx.commit().await?;
        self.outbox.notify();
        Ok(user)
    }

    /// The user with `email` (without order figures: see `stats_of`) and its
    /// password hash, if there is one.
    #[tracing::instrument(name = "db users.credentials", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "users", db.operation.name = "credentials"))]
    pub async fn credentials(&self, email: &str) -> Result<Option<(User, String)>, ApiError> {
        let found = sqlx::query_as::<_, CredentialsRow>(
            "SELECT user_id, email, display_name, role, created_at, password_hash FROM users WHERE email = $1",
        )
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        let Some(CredentialsRow {
            user,
            password_hash,
        }) = found
        else {
            return Ok(None);
        };
        Ok(Some((user.with_stats(UserStats::default()), password_hash)))
    }

    #[tracing::instrument(name = "db users.get", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "users", db.operation.name = "get"))]
    pub async fn get(&self, user_id: Uuid) -> Result<User, ApiError> {
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
        let stats = self.stats_of(user_id).await?;
        Ok(row.with_stats(stats))
    }

    /// Users in id order (UUIDv7: registration order), after the token's key.
    #[tracing::instrument(name = "db users.list", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "users", db.operation.name = "list"))]
    pub async fn list(&self, page_size: i64, after: Option<Uuid>) -> Result<UserPage, ApiError> {
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
                row.with_stats(s)
            })
            .collect();
        Ok(UserPage {
            users,
            next_page_token,
        })
    }

    pub async fn email_exists(&self, email: &Email) -> Result<bool, ApiError> {
        let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)")
            .bind(email.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(exists)
    }

    pub async fn stats_of(&self, user_id: Uuid) -> Result<UserStats, ApiError> {
        Ok(self
            .stats(&[user_id])
            .await?
            .remove(&user_id)
            .unwrap_or_default())
    }

    /// Order count and spend per currency over confirmed, not cancelled orders.
    async fn stats(&self, user_ids: &[Uuid]) -> Result<HashMap<Uuid, UserStats>, ApiError> {
        let rows: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
            "SELECT user_id, currency_code, count(*), sum(amount_minor)::bigint FROM user_orders
             WHERE user_id = ANY($1) AND cancelled_at IS NULL
             GROUP BY user_id, currency_code ORDER BY currency_code",
        )
        .bind(user_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut stats: HashMap<Uuid, UserStats> = HashMap::new();
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
}
