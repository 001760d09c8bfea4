//! Failed sign-ins slow the next ones down, in the service itself, so that the
//! gRPC port is protected as well as the gateway.
//!
//! Three counters, each with a lockout that doubles with every failure past its
//! free allowance and is forgotten after a quiet spell:
//! - one account from one client address: the guessing attacker, locked out for
//!   up to `max_lockout`;
//! - one client address over all accounts: credential stuffing, likewise;
//! - one account from every address: a distributed attack on one account. Its
//!   lockout is capped short (`max_account_lockout`) and never applies to an
//!   address that signed in to the account before, so an attacker cannot keep
//!   the owner out for long.
//!
//! While a lockout runs, attempts are refused before the password is checked
//! (no hashing cost) and are not counted.
//!
//! Every copy of the service keeps these counters for the attempts it sees, and
//! with a shared Redis (`REDIS_URL`) the same three counters are kept there too
//! (`SharedLockouts`), so that N copies lock out after the same failures as one:
//! an attempt is refused when either says so. While Redis is unreachable each
//! copy still throttles what it sees.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shop_platform::ApiError;
use shop_platform::client_address::bucket;
use shop_platform::rate_limit::bound_entries;
use shop_platform::shared_store::SharedStore;

/// Entries kept at most per map; past it, entries quiet for `forget_after` go.
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Copy, Debug)]
pub struct ThrottlePolicy {
    /// Failures allowed before the first lockout, per account and address.
    pub free_per_account_and_address: u32,
    /// Failures allowed before the first lockout, per address (all accounts).
    pub free_per_address: u32,
    /// Failures allowed before the first lockout, per account (all addresses).
    pub free_per_account: u32,
    /// The first lockout; each further failure doubles it.
    pub first_lockout: Duration,
    pub max_lockout: Duration,
    /// The longest an account is locked for addresses it has not signed in from.
    pub max_account_lockout: Duration,
    /// Failures are forgotten after this long without one.
    pub forget_after: Duration,
    /// How long a successful sign-in makes its address known to the account.
    pub remember_known_address: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            free_per_account_and_address: 5,
            free_per_address: 20,
            free_per_account: 50,
            first_lockout: Duration::from_secs(1),
            max_lockout: Duration::from_secs(15 * 60),
            max_account_lockout: Duration::from_secs(60),
            forget_after: Duration::from_secs(15 * 60),
            remember_known_address: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

#[derive(Debug)]
struct Failures {
    count: u32,
    /// Attempts admitted and not yet judged: each may still be a failure.
    in_flight: u32,
    last: Instant,
    locked_until: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    AccountFromAddress(String, String),
    Address(String),
    Account(String),
}

impl Key {
    /// The three counters an attempt on `email` from `address` (a client-address
    /// bucket) counts against, in the order every check reads them.
    fn of_attempt(email: &str, address: &str) -> [Key; 3] {
        [
            Key::AccountFromAddress(email.to_owned(), address.to_owned()),
            Key::Address(address.to_owned()),
            Key::Account(email.to_owned()),
        ]
    }

    /// The counter's name in the shared store (`SharedLockouts`).
    fn shared_name(&self) -> String {
        match self {
            Self::AccountFromAddress(email, address) => {
                format!("shopmesh:signin:pair:{address}:{email}")
            }
            Self::Address(address) => format!("shopmesh:signin:address:{address}"),
            Self::Account(email) => format!("shopmesh:signin:account:{email}"),
        }
    }

    /// RESOURCE_EXHAUSTED naming this counter and the wait, logged.
    fn refuse(&self, wait: Duration) -> ApiError {
        let secs = wait.as_secs_f64().ceil().max(1.0);
        tracing::info!(reason = self.refusal(), wait_secs = secs, "sign-in refused");
        ApiError::Throttled {
            message: format!("{}; retry in {secs} s", self.refusal()),
            retry_after: wait,
        }
    }

    fn refusal(&self) -> &'static str {
        match self {
            Self::AccountFromAddress(..) => {
                "too many failed sign-ins for this account from your address"
            }
            Self::Address(_) => "too many failed sign-ins from your address",
            Self::Account(_) => "too many failed sign-ins for this account",
        }
    }

    /// Failures allowed before the first lockout, and the longest lockout.
    fn allowance(&self, policy: &ThrottlePolicy) -> (u32, Duration) {
        match self {
            Self::AccountFromAddress(..) => {
                (policy.free_per_account_and_address, policy.max_lockout)
            }
            Self::Address(_) => (policy.free_per_address, policy.max_lockout),
            Self::Account(_) => (policy.free_per_account, policy.max_account_lockout),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    failures: HashMap<Key, Failures>,
    /// (account, address bucket) → last successful sign-in.
    known: HashMap<(String, String), Instant>,
}

#[derive(Debug, Default)]
pub struct SignInThrottle {
    policy: ThrottlePolicy,
    state: Mutex<State>,
}

/// A sign-in admitted for checking. Its outcome is reported with `failed` or
/// `succeeded`; dropped without one (an error before the password was judged),
/// it counts as neither.
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a SignInThrottle,
    /// None once the attempt has been finished.
    keys: Option<[Key; 3]>,
    address: String,
    email: String,
}

impl SignInThrottle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits an attempt, or RESOURCE_EXHAUSTED with the wait when a lockout
    /// applies. Admitted attempts are counted as they start, so concurrent
    /// guesses cannot all slip past the check before the first failure lands:
    /// no more are in flight than the failures still free (one at a time once
    /// the allowance is spent).
    pub fn begin(&self, email: &str, address: IpAddr) -> Result<Attempt<'_>, ApiError> {
        let now = Instant::now();
        let address = bucket(address);
        let keys = Key::of_attempt(email, &address);
        let mut state = self.state();
        let known = state
            .known
            .get(&(email.to_owned(), address.clone()))
            .is_some_and(|at| now.duration_since(*at) < self.policy.remember_known_address);
        for key in &keys {
            if known && matches!(key, Key::Account(_)) {
                continue;
            }
            let Some(failures) = state.failures.get(key) else {
                continue;
            };
            let (free, _) = key.allowance(&self.policy);
            let wait = if failures.locked_until > now {
                failures.locked_until - now
            } else if failures.in_flight > 0 && failures.count + failures.in_flight >= free {
                Duration::from_secs(1)
            } else {
                continue;
            };
            return Err(key.refuse(wait));
        }
        let forget_after = self.policy.forget_after;
        bound_entries(&mut state.failures, MAX_ENTRIES, |f| {
            f.in_flight == 0 && f.locked_until <= now && now.duration_since(f.last) >= forget_after
        });
        for key in &keys {
            let failures = state.failures.entry(key.clone()).or_insert(Failures {
                count: 0,
                in_flight: 0,
                last: now,
                locked_until: now,
            });
            failures.in_flight += 1;
        }
        drop(state);
        Ok(Attempt {
            throttle: self,
            keys: Some(keys),
            address,
            email: email.to_owned(),
        })
    }
}

impl Attempt<'_> {
    /// Ends the attempt: every key gives back its place in flight, and `judge`
    /// updates it.
    fn finish(&mut self, mut judge: impl FnMut(&Key, &mut Failures)) {
        let Some(keys) = self.keys.take() else {
            return;
        };
        let mut state = self.throttle.state();
        for key in &keys {
            if let Some(failures) = state.failures.get_mut(key) {
                failures.in_flight = failures.in_flight.saturating_sub(1);
                judge(key, failures);
            }
        }
    }

    /// A wrong password: counted against the pair, the address and the account;
    /// past its allowance each locks for a period that doubles per failure.
    pub fn failed(mut self) {
        let now = Instant::now();
        let policy = self.throttle.policy;
        self.finish(|key, failures| {
            if now.duration_since(failures.last) >= policy.forget_after {
                failures.count = 0;
            }
            failures.count = failures.count.saturating_add(1);
            failures.last = now;
            let (free, cap) = key.allowance(&policy);
            if failures.count >= free {
                let doublings = (failures.count - free).min(20);
                let lockout = policy.first_lockout.saturating_mul(1 << doublings).min(cap);
                failures.locked_until = now + lockout;
            }
        });
    }

    /// A correct password: the pair's failures are forgotten and the address
    /// becomes known to the account.
    pub fn succeeded(mut self) {
        let now = Instant::now();
        self.finish(|key, failures| {
            if matches!(key, Key::AccountFromAddress(..)) {
                failures.count = 0;
                failures.locked_until = now;
            }
        });
        let keep = self.throttle.policy.remember_known_address;
        let mut state = self.throttle.state();
        bound_entries(&mut state.known, MAX_ENTRIES, |at| {
            now.duration_since(*at) >= keep
        });
        state
            .known
            .insert((self.email.clone(), self.address.clone()), now);
        drop(state);
    }
}

/// The lockouts of every copy, in Redis: the same counters, allowances and
/// doubling lockouts as `SignInThrottle`, counted from every copy's failures.
pub struct SharedLockouts {
    store: Option<Arc<SharedStore>>,
    policy: ThrottlePolicy,
    check: redis::Script,
    fail: redis::Script,
    succeed: redis::Script,
}

impl std::fmt::Debug for SharedLockouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLockouts")
            .field("shared", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

/// KEYS: pair, address, account, known pair. Answers {milliseconds to wait, the
/// key (1–3) that says so}; the account's lockout does not apply to a known pair.
const CHECK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('EXISTS', KEYS[4]) == 1
local wait, which = 0, 0
for i = 1, 3 do
  if not (i == 3 and known) then
    local locked = tonumber(redis.call('HGET', KEYS[i], 'until') or '0')
    if locked - now > wait then wait, which = locked - now, i end
  end
end
return {wait, which}
";

/// KEYS: pair, address, account. ARGV: the three allowances, the first lockout,
/// the two caps (pair and address; account), the quiet spell that forgets, all
/// in milliseconds but the allowances.
const FAIL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, 3 do
  local count = redis.call('HINCRBY', KEYS[i], 'count', 1)
  local free = tonumber(ARGV[i])
  local cap = tonumber(ARGV[5])
  if i == 3 then cap = tonumber(ARGV[6]) end
  local keep = tonumber(ARGV[7])
  if count >= free then
    local lockout = math.min(tonumber(ARGV[4]) * 2 ^ math.min(count - free, 20), cap)
    redis.call('HSET', KEYS[i], 'until', string.format('%d', now + lockout))
    keep = math.max(keep, lockout)
  end
  redis.call('PEXPIRE', KEYS[i], keep)
end
return 0
";

/// KEYS: pair, known pair. ARGV: how long a pair stays known, in milliseconds.
const SUCCEED: &str = r"
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 0
";

impl SharedLockouts {
    /// Lockouts kept in `store`; with none, this copy's `SignInThrottle` decides alone.
    pub fn new(store: Option<Arc<SharedStore>>, policy: ThrottlePolicy) -> Self {
        Self {
            store,
            policy,
            check: redis::Script::new(CHECK),
            fail: redis::Script::new(FAIL),
            succeed: redis::Script::new(SUCCEED),
        }
    }

    /// The attempt's three counters, and the names in Redis of those counters and
    /// of the "known pair" mark.
    fn keys(email: &str, address: IpAddr) -> ([Key; 3], [String; 4]) {
        let address = bucket(address);
        let counters = Key::of_attempt(email, &address);
        let [pair, by_address, account] = counters.each_ref().map(Key::shared_name);
        let known = format!("shopmesh:signin:known:{address}:{email}");
        (counters, [pair, by_address, account, known])
    }

    /// RESOURCE_EXHAUSTED with the wait when any copy's failures lock this
    /// attempt out.
    pub async fn check(&self, email: &str, address: IpAddr) -> Result<(), ApiError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let (counters, names) = Self::keys(email, address);
        let answer = store
            .call("sign-in lockouts", |mut connection| async move {
                self.check
                    .key(&names[..])
                    .invoke_async::<(u64, usize)>(&mut connection)
                    .await
            })
            .await;
        let Some((wait_ms, which @ 1..=3)) = answer else {
            return Ok(());
        };
        Err(counters[which - 1].refuse(Duration::from_millis(wait_ms)))
    }

    /// A wrong password, counted for every copy.
    pub async fn failed(&self, email: &str, address: IpAddr) {
        let Some(store) = &self.store else {
            return;
        };
        let (_, names) = Self::keys(email, address);
        let policy = self.policy;
        let ms = |d: Duration| d.as_millis() as u64;
        store
            .call("sign-in failure", |mut connection| async move {
                self.fail
                    .key(&names[..3])
                    .arg(policy.free_per_account_and_address)
                    .arg(policy.free_per_address)
                    .arg(policy.free_per_account)
                    .arg(ms(policy.first_lockout))
                    .arg(ms(policy.max_lockout))
                    .arg(ms(policy.max_account_lockout))
                    .arg(ms(policy.forget_after))
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await;
    }

    /// A correct password: the pair's failures are forgotten, the address known.
    pub async fn succeeded(&self, email: &str, address: IpAddr) {
        let Some(store) = &self.store else {
            return;
        };
        let (_, names) = Self::keys(email, address);
        let remember = self.policy.remember_known_address.as_millis() as u64;
        store
            .call("sign-in success", |mut connection| async move {
                self.succeed
                    .key(&names[0])
                    .key(&names[3])
                    .arg(remember)
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        // An error before the password was judged: neither a failure nor a success.
        self.finish(|_, _| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    /// Lockouts in milliseconds, so that a test can wait them out.
    fn quick() -> SignInThrottle {
        SignInThrottle::new(ThrottlePolicy {
            first_lockout: Duration::from_millis(10),
            ..ThrottlePolicy::default()
        })
    }

    fn wait_of(result: Result<Attempt<'_>, ApiError>) -> Duration {
        match result {
            Err(ApiError::Throttled { retry_after, .. }) => retry_after,
            Err(other) => panic!("expected a lockout, got {other:?}"),
            Ok(_) => panic!("expected a lockout, the attempt was admitted"),
        }
    }

    /// A wrong password once the throttle lets it be checked.
    fn fail_when_admitted(throttle: &SignInThrottle, email: &str, who: IpAddr) {
        loop {
            match throttle.begin(email, who) {
                Ok(attempt) => return attempt.failed(),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    #[test]
    fn lockouts_grow_per_account_and_address() {
        let throttle = quick();
        let attacker = ip("203.0.113.7");
        for _ in 0..4 {
            fail_when_admitted(&throttle, "a@x.com", attacker);
            assert!(throttle.begin("a@x.com", attacker).is_ok(), "four are free");
        }
        fail_when_admitted(&throttle, "a@x.com", attacker);
        let first = wait_of(throttle.begin("a@x.com", attacker));
        assert!(first <= Duration::from_millis(10), "{first:?}");
        fail_when_admitted(&throttle, "a@x.com", attacker);
        fail_when_admitted(&throttle, "a@x.com", attacker);
        let later = wait_of(throttle.begin("a@x.com", attacker));
        assert!(later > Duration::from_millis(30), "doubles: {later:?}");
        // The owner, from another address, is not affected.
        assert!(throttle.begin("a@x.com", ip("198.51.100.1")).is_ok());
    }

    #[test]
    fn concurrent_guesses_cannot_outrun_the_count() {
        let throttle = SignInThrottle::default();
        let attacker = ip("203.0.113.9");
        let admitted: Vec<Attempt<'_>> = (0..5)
            .map(|_| {
                throttle
                    .begin("d@x.com", attacker)
                    .expect("within the allowance")
            })
            .collect();
        let refused = wait_of(throttle.begin("d@x.com", attacker));
        assert_eq!(
            refused,
            Duration::from_secs(1),
            "wait for the ones in flight"
        );
        for attempt in admitted {
            attempt.failed();
        }
        assert!(
            throttle.begin("d@x.com", attacker).is_err(),
            "five failures lock"
        );
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked_out() {
        let throttle = SignInThrottle::default();
        let stuffer = ip("203.0.113.8");
        for i in 0..20 {
            throttle
                .begin(&format!("user{i}@x.com"), stuffer)
                .expect("admitted")
                .failed();
        }
        assert!(throttle.begin("fresh@x.com", stuffer).is_err());
        assert!(throttle.begin("fresh@x.com", ip("198.51.100.2")).is_ok());
    }

    #[test]
    fn a_distributed_attack_locks_an_account_briefly_and_never_for_known_addresses() {
        let throttle = SignInThrottle::default();
        let owner = ip("198.51.100.3");
        throttle
            .begin("b@x.com", owner)
            .expect("admitted")
            .succeeded();
        for i in 0..50u8 {
            throttle
                .begin("b@x.com", IpAddr::from([10, 9, 0, i]))
                .expect("admitted")
                .failed();
        }
        let wait = wait_of(throttle.begin("b@x.com", ip("198.51.100.4")));
        assert!(wait <= Duration::from_secs(60), "capped: {wait:?}");
        assert!(throttle.begin("b@x.com", owner).is_ok(), "known address");
    }

    #[test]
    fn success_clears_the_pair_and_an_unjudged_attempt_counts_for_nothing() {
        let throttle = SignInThrottle::default();
        let who = ip("198.51.100.5");
        for _ in 0..4 {
            throttle.begin("c@x.com", who).expect("admitted").failed();
        }
        throttle
            .begin("c@x.com", who)
            .expect("admitted")
            .succeeded();
        for _ in 0..4 {
            throttle.begin("c@x.com", who).expect("admitted").failed();
        }
        drop(throttle.begin("c@x.com", who).expect("admitted"));
        assert!(
            throttle.begin("c@x.com", who).is_ok(),
            "four failures since the success"
        );
    }
}
