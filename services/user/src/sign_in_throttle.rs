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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shop_platform::ApiError;
use shop_platform::client_address::bucket;

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
    fn refusal(&self) -> &'static str {
        match self {
            Self::AccountFromAddress(..) => {
                "too many failed sign-ins for this account from your address"
            }
            Self::Address(_) => "too many failed sign-ins from your address",
            Self::Account(_) => "too many failed sign-ins for this account",
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

impl SignInThrottle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            state: Mutex::default(),
        }
    }

    fn keys(email: &str, address: IpAddr) -> [Key; 3] {
        let address = bucket(address);
        [
            Key::AccountFromAddress(email.to_owned(), address.clone()),
            Key::Address(address),
            Key::Account(email.to_owned()),
        ]
    }

    /// Whether an attempt may be checked now; RESOURCE_EXHAUSTED with the wait
    /// when a lockout applies.
    pub fn check(&self, email: &str, address: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let known = state
            .known
            .get(&(email.to_owned(), bucket(address)))
            .is_some_and(|at| now.duration_since(*at) < self.policy.remember_known_address);
        for key in Self::keys(email, address) {
            if known && matches!(key, Key::Account(_)) {
                continue;
            }
            let Some(failures) = state.failures.get(&key) else {
                continue;
            };
            if failures.locked_until > now {
                let wait = failures.locked_until - now;
                let secs = wait.as_secs_f64().ceil().max(1.0);
                tracing::info!(reason = key.refusal(), wait_secs = secs, "sign-in refused");
                return Err(ApiError::Throttled {
                    message: format!("{}; retry in {secs} s", key.refusal()),
                    retry_after: wait,
                });
            }
        }
        Ok(())
    }

    /// Counts a failed attempt against the account, the address and the pair.
    pub fn failed(&self, email: &str, address: IpAddr) {
        let now = Instant::now();
        let policy = self.policy;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.failures.len() >= MAX_ENTRIES {
            state
                .failures
                .retain(|_, f| now.duration_since(f.last) < policy.forget_after);
        }
        for key in Self::keys(email, address) {
            let (free, cap) = match key {
                Key::AccountFromAddress(..) => {
                    (policy.free_per_account_and_address, policy.max_lockout)
                }
                Key::Address(_) => (policy.free_per_address, policy.max_lockout),
                Key::Account(_) => (policy.free_per_account, policy.max_account_lockout),
            };
            let failures = state.failures.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: now,
            });
            if now.duration_since(failures.last) >= policy.forget_after {
                failures.count = 0;
            }
            failures.count = failures.count.saturating_add(1);
            failures.last = now;
            if failures.count >= free {
                let doublings = (failures.count - free).min(20);
                let lockout = policy.first_lockout.saturating_mul(1 << doublings).min(cap);
                failures.locked_until = now + lockout;
            }
        }
    }

    /// A correct password: the pair's failures are forgotten and the address
    /// becomes known to the account.
    pub fn succeeded(&self, email: &str, address: IpAddr) {
        let now = Instant::now();
        let keep = self.policy.remember_known_address;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let [pair, ..] = Self::keys(email, address);
        state.failures.remove(&pair);
        if state.known.len() >= MAX_ENTRIES {
            state.known.retain(|_, at| now.duration_since(*at) < keep);
        }
        state.known.insert((email.to_owned(), bucket(address)), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn wait_of(result: Result<(), ApiError>) -> Duration {
        match result {
            Err(ApiError::Throttled { retry_after, .. }) => retry_after,
            other => panic!("expected a lockout, got {other:?}"),
        }
    }

    #[test]
    fn lockouts_grow_per_account_and_address() {
        let throttle = SignInThrottle::default();
        let attacker = ip("203.0.113.7");
        for _ in 0..4 {
            throttle.failed("a@x.com", attacker);
            assert!(throttle.check("a@x.com", attacker).is_ok(), "four are free");
        }
        throttle.failed("a@x.com", attacker);
        let first = wait_of(throttle.check("a@x.com", attacker));
        assert!(first <= Duration::from_secs(1), "{first:?}");
        throttle.failed("a@x.com", attacker);
        throttle.failed("a@x.com", attacker);
        let later = wait_of(throttle.check("a@x.com", attacker));
        assert!(later > Duration::from_secs(3), "doubles: {later:?}");
        // The owner, from another address, is not affected.
        assert!(throttle.check("a@x.com", ip("198.51.100.1")).is_ok());
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked_out() {
        let throttle = SignInThrottle::default();
        let stuffer = ip("203.0.113.8");
        for i in 0..20 {
            throttle.failed(&format!("user{i}@x.com"), stuffer);
        }
        assert!(throttle.check("fresh@x.com", stuffer).is_err());
        assert!(throttle.check("fresh@x.com", ip("198.51.100.2")).is_ok());
    }

    #[test]
    fn a_distributed_attack_locks_an_account_briefly_and_never_for_known_addresses() {
        let throttle = SignInThrottle::default();
        let owner = ip("198.51.100.3");
        throttle.succeeded("b@x.com", owner);
        for i in 0..60u8 {
            throttle.failed("b@x.com", IpAddr::from([10, 9, 0, i]));
        }
        let wait = wait_of(throttle.check("b@x.com", ip("198.51.100.4")));
        assert!(wait <= Duration::from_secs(60), "capped: {wait:?}");
        assert!(throttle.check("b@x.com", owner).is_ok(), "known address");
    }

    #[test]
    fn success_clears_the_pair() {
        let throttle = SignInThrottle::default();
        let who = ip("198.51.100.5");
        for _ in 0..4 {
            throttle.failed("c@x.com", who);
        }
        throttle.succeeded("c@x.com", who);
        throttle.failed("c@x.com", who);
        assert!(throttle.check("c@x.com", who).is_ok());
    }
}
