//! Products as last read, so that GetProduct need not ask the database each
//! time. Every write to `products`, from any copy or from SQL typed by hand,
//! notifies `product_changed` with the SKU (a trigger, migration 0101), and each
//! copy forgets the SKU when that notification arrives; the copy that wrote also
//! forgets it right after its own commit, so it reads its own writes.
//!
//! The staleness bound: another copy's change is seen once PostgreSQL has
//! delivered its notification (milliseconds); an entry is never older than the
//! TTL; and while the listening connection is down (and until it listens again)
//! nothing is cached, so a missed notification can never leave a stale entry.
//!
//! A read that misses claims the slot before asking the database and fills it
//! only if the slot is still its claim: a change forgotten while the read was in
//! flight removed the claim, so the read's possibly older row is not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shop_platform::Shutdown;
use shop_platform::db::{self, Notice};
use sqlx::PgPool;

use crate::model::Product;

/// The channel the products trigger notifies on, with the SKU as payload.
const CHANGE_CHANNEL: &str = "product_changed";

#[derive(Debug)]
enum Slot {
    /// A read is asking the database; only the claim with this number may fill it.
    Claimed(u64),
    Held {
        product: Product,
        read_at: Instant,
    },
}

#[derive(Debug)]
struct Shelf {
    slots: HashMap<String, Slot>,
    /// Whether changes are being followed: nothing is kept while they are not.
    following: bool,
    next_claim: u64,
    last_sweep: Instant,
}

/// Shared by the catalogue and the reservations of one copy; cloning shares it.
#[derive(Clone, Debug)]
pub struct ProductCache {
    shelf: Option<Arc<Mutex<Shelf>>>,
    ttl: Duration,
    capacity: usize,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Product),
    /// Ask the database; fill the claim with what it says (None: do not keep it).
    Miss(Option<Claim>),
}

/// The right to fill one slot with the row a read is about to fetch. Dropped
/// unfilled (the read failed, or found nothing), it gives the slot up.
#[derive(Debug)]
pub struct Claim {
    shelf: Arc<Mutex<Shelf>>,
    sku: String,
    number: u64,
}

fn lock(shelf: &Mutex<Shelf>) -> MutexGuard<'_, Shelf> {
    // A panic while holding the lock cannot leave the map half-changed in a way
    // that matters: every entry is whole, and the worst is a missing one.
    shelf
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ProductCache {
    /// Entries kept at most `ttl`, at most `capacity` of them; a zero TTL or
    /// capacity turns the cache off (every read asks the database).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let on = !ttl.is_zero() && capacity > 0;
        let shelf = on.then(|| {
            Arc::new(Mutex::new(Shelf {
                slots: HashMap::new(),
                following: false,
                next_claim: 0,
                last_sweep: Instant::now(),
            }))
        });
        Self {
            shelf,
            ttl,
            capacity,
        }
    }

    /// A cache that keeps nothing.
    pub fn off() -> Self {
        Self::new(Duration::ZERO, 0)
    }

    pub fn lookup(&self, sku: &str) -> Lookup {
        let Some(shelf) = &self.shelf else {
            return Lookup::Miss(None);
        };
        let mut guard = lock(shelf);
        if !guard.following {
            return Lookup::Miss(None);
        }
        match guard.slots.get(sku) {
            Some(Slot::Held { product, read_at }) if read_at.elapsed() < self.ttl => {
                return Lookup::Hit(product.clone());
            }
            // Another read is already asking; this one asks too, without a claim.
            Some(Slot::Claimed(_)) => return Lookup::Miss(None),
            Some(Slot::Held { .. }) | None => {}
        }
        if !guard.slots.contains_key(sku) && guard.slots.len() >= self.capacity {
            self.sweep(&mut guard);
            if guard.slots.len() >= self.capacity {
                return Lookup::Miss(None);
            }
        }
        let number = guard.next_claim;
        guard.next_claim += 1;
        guard.slots.insert(sku.to_owned(), Slot::Claimed(number));
        Lookup::Miss(Some(Claim {
            shelf: Arc::clone(shelf),
            sku: sku.to_owned(),
            number,
        }))
    }

    /// Drops expired entries, at most once per half TTL (a full shelf of fresh
    /// entries would otherwise be scanned on every miss).
    fn sweep(&self, shelf: &mut Shelf) {
        if shelf.last_sweep.elapsed() < self.ttl / 2 {
            return;
        }
        shelf.last_sweep = Instant::now();
        let ttl = self.ttl;
        shelf.slots.retain(|_, slot| match slot {
            Slot::Claimed(_) => true,
            Slot::Held { read_at, .. } => read_at.elapsed() < ttl,
        });
    }

    /// Forgets `skus`, and any read of them in flight: called after a commit that
    /// changed them, and for each change notification.
    pub fn forget<S: AsRef<str>>(&self, skus: impl IntoIterator<Item = S>) {
        let Some(shelf) = &self.shelf else {
            return;
        };
        let mut guard = lock(shelf);
        for sku in skus {
            guard.slots.remove(sku.as_ref());
        }
    }

    fn set_following(&self, following: bool) {
        let Some(shelf) = &self.shelf else {
            return;
        };
        let mut guard = lock(shelf);
        guard.following = following;
        // Whatever was kept may have missed a change, and so may reads in flight.
        guard.slots.clear();
    }

    /// Follows every copy's product changes until shutdown (a worker of the
    /// application).
    pub async fn follow_changes(self, pool: PgPool, shutdown: Shutdown) {
        if self.shelf.is_none() {
            return;
        }
        db::follow_notifications(pool, CHANGE_CHANNEL, shutdown, |notice| {
            match notice {
                Notice::Listening => self.set_following(true),
                Notice::Notified(sku) => self.forget([sku]),
                Notice::Lost => self.set_following(false),
            }
            std::future::ready(())
        })
        .await;
    }
}

impl Claim {
    /// Keeps `product` if no change to it was forgotten since the claim.
    pub fn fill(self, product: &Product) {
        let mut guard = lock(&self.shelf);
        if let Some(slot) = guard.slots.get_mut(&self.sku)
            && matches!(slot, Slot::Claimed(n) if *n == self.number)
        {
            *slot = Slot::Held {
                product: product.clone(),
                read_at: Instant::now(),
            };
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut guard = lock(&self.shelf);
        if matches!(guard.slots.get(&self.sku), Some(Slot::Claimed(n)) if *n == self.number) {
            guard.slots.remove(&self.sku);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn product(sku: &str, available: i64) -> Product {
        Product {
            sku: sku.into(),
            name: "n".into(),
            description: String::new(),
            currency_code: "EUR".into(),
            unit_price_minor: 100,
            available,
            reserved: 0,
            sold: 0,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn following(ttl: Duration, capacity: usize) -> ProductCache {
        let cache = ProductCache::new(ttl, capacity);
        cache.set_following(true);
        cache
    }

    fn claim(cache: &ProductCache, sku: &str) -> Claim {
        match cache.lookup(sku) {
            Lookup::Miss(Some(claim)) => claim,
            other => panic!("expected a claimed miss, got {other:?}"),
        }
    }

    fn held(cache: &ProductCache, sku: &str) -> Option<i64> {
        match cache.lookup(sku) {
            Lookup::Hit(p) => Some(p.available),
            Lookup::Miss(_) => None,
        }
    }

    #[test]
    fn a_filled_claim_is_a_hit_until_forgotten() {
        let cache = following(Duration::from_secs(60), 10);
        claim(&cache, "A").fill(&product("A", 3));
        assert_eq!(held(&cache, "A"), Some(3));
        cache.forget(["A"]);
        assert_eq!(held(&cache, "A"), None);
    }

    #[test]
    fn a_change_during_the_read_keeps_the_older_row_out() {
        let cache = following(Duration::from_secs(60), 10);
        let read = claim(&cache, "A");
        // The row was read, then a commit changed it and its SKU was forgotten.
        cache.forget(["A"]);
        read.fill(&product("A", 3));
        assert_eq!(held(&cache, "A"), None, "the read's row may be the old one");
        // A later read claims afresh and is kept.
        claim(&cache, "A").fill(&product("A", 2));
        assert_eq!(held(&cache, "A"), Some(2));
    }

    #[test]
    fn a_second_reader_asks_without_a_claim_and_an_abandoned_claim_frees_the_slot() {
        let cache = following(Duration::from_secs(60), 10);
        let first = claim(&cache, "A");
        assert!(matches!(cache.lookup("A"), Lookup::Miss(None)));
        drop(first);
        claim(&cache, "A").fill(&product("A", 1));
        assert_eq!(held(&cache, "A"), Some(1));
    }

    #[test]
    fn nothing_is_kept_while_changes_are_not_followed() {
        let cache = ProductCache::new(Duration::from_secs(60), 10);
        assert!(matches!(cache.lookup("A"), Lookup::Miss(None)));
        cache.set_following(true);
        claim(&cache, "A").fill(&product("A", 1));
        // The listening connection dropped: what was held may miss a change.
        cache.set_following(false);
        assert!(matches!(cache.lookup("A"), Lookup::Miss(None)));
        cache.set_following(true);
        assert_eq!(held(&cache, "A"), None, "listening again starts empty");
    }

    #[test]
    fn entries_expire_and_a_full_shelf_stops_taking_new_ones() {
        let cache = following(Duration::from_millis(30), 1);
        claim(&cache, "A").fill(&product("A", 1));
        assert!(matches!(cache.lookup("B"), Lookup::Miss(None)), "full");
        std::thread::sleep(Duration::from_millis(40));
        // The expired entry is swept to make room.
        claim(&cache, "B").fill(&product("B", 2));
        assert_eq!(held(&cache, "B"), Some(2));
        assert_eq!(held(&cache, "A"), None, "expired");
    }

    #[test]
    fn off_keeps_nothing() {
        let cache = ProductCache::off();
        assert!(matches!(cache.lookup("A"), Lookup::Miss(None)));
    }
}
