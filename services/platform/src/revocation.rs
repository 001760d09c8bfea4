//! Revoked access tokens, shared by every copy of every process through Redis.
//!
//! A revocation names one token (its `jti`, on logout) or all of a user's tokens
//! issued up to a moment (an admin's "sign this user out everywhere"). Redis
//! keeps them in a log ordered by a counter that Redis itself increments, so
//! followers never miss an entry whatever the writers' clocks say. Each process
//! keeps a mirror of the log and reads it again every `FOLLOW_EVERY`: checking a
//! token costs no round trip, a revocation reaches every copy within a second,
//! and one made before a Redis outage still holds during it.
//!
//! Entries leave the log when the tokens they name have expired anyway.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use uuid::Uuid;

use crate::ApiError;
use crate::shared_store::SharedStore;

/// How often a process reads the revocations made since it last looked.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

const LOG: &str = "shopmesh:revocations:log";
const EXPIRIES: &str = "shopmesh:revocations:expiries";
const SEQUENCE: &str = "shopmesh:revocations:seq";

/// Appends ARGV[1] (the entry) to the log under the next sequence number, notes
/// when it may go (ARGV[2], unix seconds), and drops the entries whose time has
/// passed by Redis's clock.
const APPEND: &str = r"
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local now = tonumber(redis.call('TIME')[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, entry in ipairs(gone) do
  redis.call('ZREM', KEYS[1], entry)
  redis.call('ZREM', KEYS[2], entry)
end
return seq
";

/// What a token says about itself, as far as revocation cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFacts {
    pub id: String,
    pub user_id: Uuid,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, Default)]
struct Mirror {
    /// `jti` → when the token expires.
    tokens: HashMap<String, u64>,
    /// A user → tokens issued at or before this second are revoked.
    users: HashMap<Uuid, u64>,
    /// The highest sequence number read.
    cursor: u64,
}

impl Mirror {
    /// Applies one log entry: `t:<jti>:<expires>` or `u:<user>:<issued before>`.
    fn apply(&mut self, entry: &str) {
        let mut parts = entry.splitn(3, ':');
        let (Some(kind), Some(subject), Some(moment)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Ok(moment) = moment.parse::<u64>() else {
            return;
        };
        match kind {
            "t" => {
                self.tokens.insert(subject.to_owned(), moment);
            }
            "u" => {
                if let Ok(user) = Uuid::parse_str(subject) {
                    let before = self.users.entry(user).or_insert(moment);
                    *before = (*before).max(moment);
                }
            }
            _ => {}
        }
    }
}

/// The revocations this process knows, and the store they come from.
pub struct Revocations {
    store: Option<Arc<SharedStore>>,
    mirror: RwLock<Mirror>,
    append: redis::Script,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mirror = self.mirror.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Revocations")
            .field("tokens", &mirror.tokens.len())
            .field("users", &mirror.users.len())
            .finish_non_exhaustive()
    }
}

impl Revocations {
    /// Revocations shared through `store` (followed by a task that lives as long
    /// as the returned handle), or, with none, known to this process alone.
    pub fn follow(store: Option<Arc<SharedStore>>) -> Arc<Self> {
        let revocations = Arc::new(Self {
            store,
            mirror: RwLock::new(Mirror::default()),
            append: redis::Script::new(APPEND),
        });
        if revocations.store.is_some() {
            tokio::spawn(follow(Arc::downgrade(&revocations)));
        }
        revocations
    }

    /// Whether `token` has been revoked, by its id or by its user's.
    pub fn is_revoked(&self, token: &TokenFacts) -> bool {
        let mirror = self.mirror.read().unwrap_or_else(|e| e.into_inner());
        mirror.tokens.contains_key(&token.id)
            || mirror
                .users
                .get(&token.user_id)
                .is_some_and(|before| token.issued_at <= *before)
    }

    /// Revokes one token (a logout).
    pub async fn revoke_token(&self, token: &TokenFacts) -> Result<(), ApiError> {
        let entry = format!("t:{}:{}", token.id, token.expires_at);
        self.append(entry, token.expires_at).await
    }

    /// Revokes every token of `user_id` issued up to now; `longest_lifetime` is
    /// the longest a token lives, after which the entry can go.
    pub async fn revoke_user(
        &self,
        user_id: Uuid,
        longest_lifetime: Duration,
    ) -> Result<(), ApiError> {
        let now = crate::auth::now_secs();
        let entry = format!("u:{user_id}:{now}");
        self.append(entry, now + longest_lifetime.as_secs()).await
    }

    /// Writes `entry` to the shared log (and to this process's mirror at once).
    async fn append(&self, entry: String, drop_after: u64) -> Result<(), ApiError> {
        if let Some(store) = &self.store {
            let written = store
                .patient("revoke", |mut connection| {
                    let entry = entry.clone();
                    async move {
                        self.append
                            .key(LOG)
                            .key(EXPIRIES)
                            .key(SEQUENCE)
                            .arg(entry)
                            .arg(drop_after)
                            .invoke_async::<u64>(&mut connection)
                            .await
                    }
                })
                .await;
            if written.is_none() {
                return Err(ApiError::Unavailable(
                    "the revocation store (redis) is unreachable; the token was not revoked".into(),
                ));
            }
        }
        self.mirror
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&entry);
        Ok(())
    }

    /// Reads the entries appended since the last read. A sequence below the
    /// cursor means Redis lost its data: everything is read again (the mirror
    /// keeps what it knew).
    async fn catch_up(&self, store: &SharedStore) {
        let cursor = self.mirror.read().unwrap_or_else(|e| e.into_inner()).cursor;
        let read = store
            .patient("follow revocations", |mut connection| async move {
                let (sequence, entries): (Option<u64>, Vec<(String, u64)>) = redis::pipe()
                    .get(SEQUENCE)
                    .zrangebyscore_withscores(LOG, format!("({cursor}"), "+inf")
                    .query_async(&mut connection)
                    .await?;
                Ok((sequence.unwrap_or(0), entries))
            })
            .await;
        let Some((sequence, entries)) = read else {
            return;
        };
        let mut mirror = self.mirror.write().unwrap_or_else(|e| e.into_inner());
        if sequence < mirror.cursor {
            tracing::warn!(
                was = mirror.cursor,
                now = sequence,
                "revocation log restarted; reading it whole"
            );
            mirror.cursor = 0;
            return;
        }
        for (entry, seq) in entries {
            mirror.apply(&entry);
            mirror.cursor = mirror.cursor.max(seq);
        }
        let now = crate::auth::now_secs();
        mirror.tokens.retain(|_, expires| *expires + 60 > now);
    }
}

/// Follows the log until the revocations are dropped.
async fn follow(revocations: Weak<Revocations>) {
    let mut ticks = tokio::time::interval(FOLLOW_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(revocations) = revocations.upgrade() else {
            return;
        };
        if let Some(store) = revocations.store.clone() {
            revocations.catch_up(&store).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, user: Uuid, issued_at: u64) -> TokenFacts {
        TokenFacts {
            id: id.into(),
            user_id: user,
            issued_at,
            expires_at: issued_at + 900,
        }
    }

    #[test]
    fn a_token_or_its_users_earlier_tokens_are_revoked() {
        let user = Uuid::now_v7();
        let mut mirror = Mirror::default();
        mirror.apply("t:abc:2000");
        mirror.apply(&format!("u:{user}:1500"));
        mirror.apply("garbage");
        mirror.apply("u:not-a-uuid:1");
        let revocations = Revocations {
            store: None,
            mirror: RwLock::new(mirror),
            append: redis::Script::new(APPEND),
        };
        assert!(revocations.is_revoked(&token("abc", Uuid::now_v7(), 1)));
        assert!(revocations.is_revoked(&token("old", user, 1500)));
        assert!(!revocations.is_revoked(&token("new", user, 1501)));
        assert!(!revocations.is_revoked(&token("other", Uuid::now_v7(), 1000)));
    }
}
