//! WatchOrder: the order now, then on every change, until a final state, the
//! client leaving, the stream's lifetime running out, or shutdown.
//!
//! No watcher polls. A trigger NOTIFYs `order_changed` with the order id when a
//! change commits; one LISTEN connection per process hears it, reads the order
//! once and hands it to every watcher of that order, so a thousand watchers of
//! one order cost one read per change. Each user may hold a few watches at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shop_platform::db::{self, Notice};
use shop_platform::{ApiError, Shutdown};
use shop_proto::order as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::store::Orders;

/// The channel the orders table's trigger notifies (migration 0200).
pub const ORDER_CHANGED_CHANNEL: &str = "order_changed";

pub type WatchStream = ReceiverStream<Result<pb::WatchOrderResponse, Status>>;

/// The latest state of a watched order, and whether it is final.
type Latest = Option<Arc<(pb::Order, bool)>>;

#[derive(Clone, Copy, Debug)]
pub struct WatchLimits {
    /// Watches this process holds open at once, everyone's together; kept below
    /// the streams the gateway's connections to one copy may carry
    /// (`grpc::STREAMS_PER_CONNECTION` × `grpc::STREAM_CONNECTIONS_PER_PEER`),
    /// since the gateway carries many users' watches over those few.
    pub total: usize,
    /// Watches one user may hold open at once.
    pub per_user: usize,
    /// How long one watch may stay open.
    pub lifetime: Duration,
}

#[derive(Debug)]
struct Hub {
    orders: Orders,
    limits: WatchLimits,
    watched: Mutex<HashMap<Uuid, watch::Sender<Latest>>>,
    open: Mutex<Open>,
}

/// Watches open now, in all and per user.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_user: HashMap<Uuid, usize>,
}

/// Every watch of this process, fed by one LISTEN connection.
#[derive(Clone, Debug)]
pub struct Watches {
    hub: Arc<Hub>,
}

/// A user's place among their open watches, and the order's subscription;
/// both are given back when the stream ends.
struct Slot {
    hub: Arc<Hub>,
    user_id: Uuid,
    order_id: Uuid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.hub.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_user.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                open.by_user.remove(&self.user_id);
            }
        }
        drop(open);
        let mut watched = self.hub.watched.lock().unwrap_or_else(|e| e.into_inner());
        // This slot's receiver is gone already (dropped before the slot).
        if watched
            .get(&self.order_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            watched.remove(&self.order_id);
        }
    }
}

impl Watches {
    pub fn new(orders: Orders, limits: WatchLimits) -> Self {
        Self {
            hub: Arc::new(Hub {
                orders,
                limits,
                watched: Mutex::default(),
                open: Mutex::default(),
            }),
        }
    }

    /// A stream of `order_id`'s states for `user_id`, who must already be
    /// allowed to see it; RESOURCE_EXHAUSTED when the user holds too many.
    pub async fn watch(
        &self,
        user_id: Uuid,
        order_id: Uuid,
        shutdown: Shutdown,
    ) -> Result<WatchStream, ApiError> {
        {
            let limits = self.hub.limits;
            let mut open = self.hub.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.total >= limits.total {
                return Err(ApiError::Unavailable(
                    "this server holds as many watches as it may; retry shortly".into(),
                ));
            }
            let mine = open.by_user.entry(user_id).or_default();
            if *mine >= limits.per_user {
                return Err(ApiError::ResourceExhausted(format!(
                    "you already watch {mine} orders at once, the most allowed; close one first"
                )));
            }
            *mine += 1;
            open.total += 1;
        }
        let slot = Slot {
            hub: self.hub.clone(),
            user_id,
            order_id,
        };
        let (mut changes, first) = {
            let mut watched = self.hub.watched.lock().unwrap_or_else(|e| e.into_inner());
            match watched.get(&order_id) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    watched.insert(order_id, tx);
                    (rx, true)
                }
            }
        };
        // The first watcher reads the order; so does any that finds no state yet
        // (the first one's read failed, or it left before finishing).
        if first || changes.borrow().is_none() {
            self.hub.refresh(order_id).await?;
        }
        let (tx, rx) = mpsc::channel(8);
        let lifetime = self.hub.limits.lifetime;
        tokio::spawn(async move {
            let ends = tokio::time::sleep(lifetime);
            tokio::pin!(ends);
            let mut last: Latest = None;
            loop {
                let current = changes.borrow_and_update().clone();
                if let Some(state) = current
                    && last.as_ref().is_none_or(|l| l.0 != state.0)
                {
                    let message = pb::WatchOrderResponse {
                        order: Some(state.0.clone()),
                    };
                    // A reader too slow to take it still ends at the lifetime.
                    let sent = tokio::select! {
                        sent = tx.send(Ok(message)) => sent.is_ok(),
                        () = &mut ends => false,
                    };
                    if !sent || state.1 {
                        break;
                    }
                    last = Some(state);
                }
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                    () = shutdown.wait() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; watch again"))).await;
                        break;
                    }
                    () = &mut ends => {
                        let message = format!("watch ended after its {} s limit; watch again", lifetime.as_secs());
                        let _ = tx.send(Err(Status::unavailable(message))).await;
                        break;
                    }
                }
            }
            drop(changes);
            drop(slot);
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Listens for committed changes until shutdown, handing each watched
    /// order's new state to its watchers. Each time listening starts (again)
    /// every watched order is read, since notifications sent meanwhile are lost.
    pub async fn run_listener(self, pool: sqlx::PgPool, shutdown: Shutdown) {
        let watches = &self;
        db::follow_notifications(
            pool,
            ORDER_CHANGED_CHANNEL,
            shutdown,
            move |notice| async move {
                match notice {
                    Notice::Listening => watches.refresh_all().await,
                    Notice::Notified(payload) => {
                        if let Ok(order_id) = Uuid::parse_str(&payload) {
                            watches.refresh_if_watched(order_id).await;
                        }
                    }
                    Notice::Lost => {}
                }
            },
        )
        .await;
    }

    async fn refresh_all(&self) {
        let ids: Vec<Uuid> = self
            .hub
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for order_id in ids {
            self.refresh_if_watched(order_id).await;
        }
    }

    async fn refresh_if_watched(&self, order_id: Uuid) {
        let watched = self
            .hub
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&order_id);
        if !watched {
            return;
        }
        if let Err(err) = self.hub.refresh(order_id).await {
            tracing::warn!(%order_id, error = %err, "reading a watched order failed");
        }
    }
}

impl Hub {
    /// Reads the order and hands it to its watchers.
    async fn refresh(&self, order_id: Uuid) -> Result<(), ApiError> {
        let Some(order) = self.orders.get(order_id).await? else {
            return Ok(());
        };
        let state = Arc::new((order.to_proto(), order.status().is_final()));
        if let Some(tx) = self
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&order_id)
        {
            // Two reads can finish out of order; an older state never replaces a newer one.
            let stamp = |o: &pb::Order| o.update_time.map(|t| (t.seconds, t.nanos));
            tx.send_if_modified(|current| {
                let newer = current
                    .as_ref()
                    .is_none_or(|c| stamp(&c.0) <= stamp(&state.0));
                if newer {
                    *current = Some(state);
                }
                newer
            });
        }
        Ok(())
    }
}
