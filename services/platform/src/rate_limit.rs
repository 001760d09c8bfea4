//! Token buckets by key (a client address, a user): the gateway's request limits
//! and the user service's registration limit. An empty bucket says how many
//! seconds to wait, which callers send as 429 `Retry-After` or RESOURCE_EXHAUSTED
//! with RetryInfo.
//!
//! `SharedRateLimiter` keeps the buckets in Redis, so that N copies of the gateway
//! admit the configured rate in all, not N times it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::{LimitDecider, LimiterLabels, metrics};
use crate::shared_store::SharedStore;

/// Keys a limiter remembers at most.
const MAX_KEYS: usize = 100_000;

/// Keeps `map` below `cap` entries once it has reached it: first it drops the
/// entries `forgettable` names, then, if that is not enough, any entries down to
/// nine tenths of `cap`. A forgotten entry is a client starting afresh, which is
/// better than memory without bound; and since each pass frees a tenth of the cap,
/// the cost of a pass is spread over that many insertions.
pub fn bound_entries<K, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    mut forgettable: impl FnMut(&V) -> bool,
) {
    if map.len() < cap {
        return;
    }
    map.retain(|_, v| !forgettable(v));
    let target = cap - cap / 10;
    if map.len() > target {
        let excess = map.len() - target;
        let mut dropped = 0;
        map.retain(|_, _| {
            dropped += 1;
            dropped > excess
        });
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self::per_minute(per_second.max(1).saturating_mul(60), burst)
    }

    /// `per_minute` tokens a minute, `burst` at most.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; Err(seconds to wait) when none is left.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS {
            // A full bucket is what a new one would be: forgetting it changes nothing.
            let (rate, burst) = (self.per_second, self.burst);
            bound_entries(&mut buckets, MAX_KEYS, |b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate >= burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// The generic cell rate algorithm in one round trip: the key holds the
/// theoretical arrival time (TAT) in microseconds of Redis's clock, so every copy
/// judges by one clock. Answers 0 when admitted, else the microseconds to wait.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local wait = next_tat - tolerance - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return 0
";

/// A rate limit that every copy shares through Redis, with this copy's own
/// buckets deciding while Redis is unreachable (then each copy admits up to the
/// whole rate: N copies admit N times it until Redis is back, which keeps a
/// flood bounded without refusing anyone for the outage).
pub struct SharedRateLimiter {
    /// Keys in Redis start with this (`shopmesh:rl:gateway:`).
    prefix: String,
    /// Microseconds between two admitted requests of one key.
    interval_micros: u64,
    burst: u32,
    store: Option<Arc<SharedStore>>,
    script: redis::Script,
    local: RateLimiter,
}

impl std::fmt::Debug for SharedRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRateLimiter")
            .field("prefix", &self.prefix)
            .field("shared", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl SharedRateLimiter {
    /// `per_second` requests a second and `burst` at once per key, across every
    /// copy that names the same `store` and `scope`; with no store, this copy's alone.
    pub fn new(scope: &str, per_second: u32, burst: u32, store: Option<Arc<SharedStore>>) -> Self {
        Self::per_minute(scope, per_second.max(1).saturating_mul(60), burst, store)
    }

    /// `per_minute` requests a minute and `burst` at once per key, shared as `new`.
    pub fn per_minute(
        scope: &str,
        per_minute: u32,
        burst: u32,
        store: Option<Arc<SharedStore>>,
    ) -> Self {
        let per_minute = per_minute.max(1);
        Self {
            prefix: format!("shopmesh:rl:{scope}:"),
            interval_micros: 60_000_000 / u64::from(per_minute),
            burst: burst.max(1),
            store,
            script: redis::Script::new(GCRA),
            local: RateLimiter::per_minute(per_minute, burst),
        }
    }

    /// Takes a request for `key`; Err(seconds to wait) when the rate is used up.
    pub async fn check(&self, key: &str) -> Result<(), u64> {
        let shared = match &self.store {
            Some(store) => {
                let redis_key = format!("{}{key}", self.prefix);
                store
                    .call("rate limit", |mut connection| async move {
                        self.script
                            .key(redis_key)
                            .arg(self.interval_micros)
                            .arg(self.burst)
                            .invoke_async::<u64>(&mut connection)
                            .await
                    })
                    .await
            }
            None => None,
        };
        let (decided_by, verdict) = match shared {
            Some(0) => (LimitDecider::Shared, Ok(())),
            Some(wait_micros) => (
                LimitDecider::Shared,
                Err(wait_micros.div_ceil(1_000_000).max(1)),
            ),
            None => (LimitDecider::Local, self.local.check(key)),
        };
        if verdict.is_err() {
            metrics()
                .rate_limited
                .get_or_create(&LimiterLabels { decided_by })
                .inc();
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_sheds_forgettable_entries_then_any_down_to_nine_tenths() {
        let mut map: HashMap<u32, bool> = (0..100).map(|i| (i, i % 2 == 0)).collect();
        bound_entries(&mut map, 200, |stale| *stale);
        assert_eq!(map.len(), 100, "below the cap nothing goes");
        bound_entries(&mut map, 100, |stale| *stale);
        assert_eq!(map.len(), 50, "the forgettable half goes");
        assert!(map.values().all(|stale| !stale));
        bound_entries(&mut map, 40, |_| false);
        assert_eq!(map.len(), 36, "then any, down to nine tenths of the cap");
    }

    #[test]
    fn a_burst_then_refusal_with_a_wait() {
        let limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        assert_eq!(limiter.check("a"), Err(1));
        assert!(limiter.check("b").is_ok(), "buckets are per key");
    }
}
