//! Shares of a bounded resource (open connections, request body bytes held in
//! memory), in all and per client: a grant is taken at once or refused at once,
//! never waited for, and given back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which bound a refused grant would have crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client holds its whole share.
    Client,
    /// Everyone together holds the whole resource.
    Total,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_client: HashMap<String, usize>,
}

#[derive(Debug)]
pub struct SharedBudget {
    total: usize,
    per_client: usize,
    held: Arc<Mutex<Held>>,
}

/// Units of a `SharedBudget`, given back on drop.
#[derive(Debug)]
pub struct Grant {
    held: Arc<Mutex<Held>>,
    client: Option<String>,
    units: usize,
}

impl SharedBudget {
    pub fn new(total: usize, per_client: usize) -> Self {
        Self {
            total,
            per_client,
            held: Arc::default(),
        }
    }

    /// `units` for `client` (None: counted in the total only, e.g. a trusted proxy
    /// that carries many clients).
    pub fn take(&self, client: Option<&str>, units: usize) -> Result<Grant, Refusal> {
        self.hold(client, units)?;
        Ok(Grant {
            held: self.held.clone(),
            client: client.map(str::to_owned),
            units,
        })
    }

    /// `more` units for what `grant` holds already (a body whose length was not
    /// declared, reserved as it arrives); refused as `take` would refuse them.
    pub fn extend(&self, grant: &mut Grant, more: usize) -> Result<(), Refusal> {
        self.hold(grant.client.as_deref(), more)?;
        grant.units += more;
        Ok(())
    }

    fn hold(&self, client: Option<&str>, units: usize) -> Result<(), Refusal> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total + units > self.total {
            return Err(Refusal::Total);
        }
        if let Some(client) = client {
            let mine = held.by_client.get(client).copied().unwrap_or(0);
            if mine + units > self.per_client {
                return Err(Refusal::Client);
            }
            held.by_client.insert(client.to_owned(), mine + units);
        }
        held.total += units;
        Ok(())
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total -= self.units;
        if let Some(client) = &self.client
            && let Some(mine) = held.by_client.get_mut(client)
        {
            *mine -= self.units;
            if *mine == 0 {
                held.by_client.remove(client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_grows_within_the_shares_and_all_of_it_comes_back() {
        let budget = SharedBudget::new(100, 10);
        let mut growing = budget.take(Some("a"), 0).expect("nothing yet");
        budget.extend(&mut growing, 6).expect("within the share");
        assert_eq!(budget.extend(&mut growing, 5), Err(Refusal::Client));
        let other = budget
            .take(Some("a"), 4)
            .expect("what is left of the share");
        drop((growing, other));
        assert!(budget.take(Some("a"), 10).is_ok(), "all of it on drop");
    }

    #[test]
    fn shares_are_bounded_per_client_and_in_all_and_come_back() {
        let budget = SharedBudget::new(10, 4);
        let a = budget.take(Some("a"), 4).expect("within a's share");
        assert_eq!(budget.take(Some("a"), 1).err(), Some(Refusal::Client));
        let b = budget.take(Some("b"), 4).expect("b has its own share");
        assert_eq!(budget.take(Some("c"), 3).err(), Some(Refusal::Total));
        let proxy = budget.take(None, 2).expect("counted in the total only");
        drop(a);
        budget.take(Some("a"), 2).expect("a's share came back");
        drop((b, proxy));
        let held = budget.held.lock().expect("lock");
        assert_eq!(held.total, 0, "every grant was given back");
        assert!(held.by_client.is_empty());
    }
}
