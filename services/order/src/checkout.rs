//! The CreateOrder saga: validate → PENDING → ReserveStock (keyed by
//! order id) → CONFIRMED or REJECTED, each step persisted so that a crash at any
//! point converges (the recovery loop resumes PENDING orders with the same calls,
//! which are idempotent).

use std::collections::BTreeMap;
use std::time::Duration;

use shop_platform::ApiError;
use shop_platform::auth::UserPrincipal;
use shop_platform::error::PreconditionViolation;
use shop_platform::grpc::Deadline;
use shop_proto::inventory as inv;
use tonic::Code;
use tonic_types::StatusExt;
use tracing::Instrument;

use crate::model::{NewOrder, Order, Price, Status};
use crate::peers::{OnBehalfOf, Peers};
use crate::store::Orders;

#[derive(Clone, Debug)]
pub struct Checkout {
    orders: Orders,
    peers: Peers,
    /// How long a PENDING order may stay so before it is rejected and its stock released.
    give_up_after: Duration,
}

/// Where the saga left an order.
fn outcome(order: Order) -> Result<Order, ApiError> {
    let labels = shop_platform::metrics::SagaLabels {
        status: order.status().as_db(),
    };
    shop_platform::metrics::metrics()
        .saga_outcomes
        .get_or_create(&labels)
        .inc();
    match order.status() {
        Status::Confirmed | Status::Cancelled => Ok(order),
        Status::Pending => Err(ApiError::Unavailable(format!(
            "order {} is pending: a dependency did not answer; it will be confirmed or rejected shortly \
             (retry with the same request_id to see the outcome)",
            order.row.order_id
        ))),
        Status::Rejected => {
            let violations = order
                .row
                .unavailable_skus
                .iter()
                .map(|sku| PreconditionViolation {
                    kind: "STOCK".into(),
                    subject: sku.clone(),
                    description: "not enough stock".into(),
                })
                .collect();
            Err(ApiError::Precondition {
                message: format!(
                    "order {} rejected: {}",
                    order.row.order_id, order.row.rejection_reason
                ),
                violations,
            })
        }
    }
}

impl Checkout {
    pub fn new(orders: Orders, peers: Peers, give_up_after: Duration) -> Self {
        Self {
            orders,
            peers,
            give_up_after,
        }
    }

    pub async fn create(
        &self,
        user: &UserPrincipal,
        on_behalf: OnBehalfOf,
        new: NewOrder,
        deadline: Deadline,
    ) -> Result<Order, ApiError> {
        // The user is who the token says: only the user service signs tokens,
        // for accounts it holds (none is ever deleted), and revoked ones were
        // refused before this. So the saga reads nothing of the user's.
        let (order, created) = self.orders.insert_pending(user.user_id, &new).await?;
        if !created {
            return self.replay(order, &new, &on_behalf, &deadline).await;
        }
        tracing::info!(order_id = %order.row.order_id, user_id = %user.user_id, "order pending");
        outcome(self.resume(order, &on_behalf, &deadline).await?)
    }

    /// A retried request: the first outcome, or the saga resumed where it stopped.
    async fn replay(
        &self,
        order: Order,
        new: &NewOrder,
        on_behalf: &OnBehalfOf,
        deadline: &Deadline,
    ) -> Result<Order, ApiError> {
        // The key names an order that exists (a well-formed request that meets
        // the state of things): ALREADY_EXISTS, as a reservation does.
        if order.quantities() != new.lines {
            return Err(ApiError::AlreadyExists {
                resource: "order with other lines for request_id",
                id: new.request_id.clone().unwrap_or_default(),
            });
        }
        let order = if order.status() == Status::Pending {
            self.resume(order, on_behalf, deadline).await?
        } else {
            order
        };
        outcome(order)
    }

    /// Reserves stock for a PENDING order and records the result. Leaves the order
    /// PENDING (for the recovery loop) when inventory does not answer.
    pub async fn resume(
        &self,
        order: Order,
        on_behalf: &OnBehalfOf,
        deadline: &Deadline,
    ) -> Result<Order, ApiError> {
        let order_id = order.row.order_id;
        let lines: Vec<(String, i64)> = order.quantities().into_iter().collect();
        let reserved = self
            .peers
            .reserve(&order_id.to_string(), &lines, on_behalf, deadline)
            .instrument(tracing::info_span!(
                "saga.reserve_stock",
                otel.name = "shop.inventory.v1.InventoryService/ReserveStock",
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.service = shop_proto::inventory::inventory_service_server::SERVICE_NAME,
                rpc.method = "ReserveStock",
                order_id = %order_id,
            ))
            .await;
        let finished = match reserved {
            Ok(reservation) => self.settle(&order, reservation, deadline).await?,
            Err(status) if status.code() == Code::FailedPrecondition => {
                let details = status.get_error_details();
                let skus: Vec<String> = details
                    .precondition_failure()
                    .map(|p| p.violations.iter().map(|v| v.subject.clone()).collect())
                    .unwrap_or_default();
                let reason = if skus.is_empty() {
                    status.message().to_owned()
                } else {
                    format!("insufficient stock for {}", skus.join(", "))
                };
                self.orders.reject(order_id, &reason, &skus).await?
            }
            Err(status) if status.code() == Code::NotFound => {
                let skus: Vec<String> = status
                    .get_error_details()
                    .resource_info()
                    .map(|r| r.resource_name.split(", ").map(str::to_owned).collect())
                    .unwrap_or_default();
                self.orders
                    .reject(
                        order_id,
                        &format!("unknown product {}", skus.join(", ")),
                        &skus,
                    )
                    .await?
            }
            Err(status)
                if status.code() == Code::InvalidArgument
                    || status.code() == Code::AlreadyExists =>
            {
                self.orders.reject(order_id, status.message(), &[]).await?
            }
            Err(status) => {
                tracing::warn!(order_id = %order_id, code = ?status.code(), "inventory did not answer; order stays pending");
                return Ok(order);
            }
        };
        // None: another path (a retry, the recovery loop) settled it first.
        match finished {
            Some(order) => Ok(order),
            None => self.orders.require(order_id).await,
        }
    }

    /// Confirms with the reservation's prices, or rejects (and releases) when the
    /// reservation cannot back the order.
    async fn settle(
        &self,
        order: &Order,
        reservation: inv::Reservation,
        deadline: &Deadline,
    ) -> Result<Option<Order>, ApiError> {
        let order_id = order.row.order_id;
        let held = matches!(
            inv::ReservationStatus::try_from(reservation.status),
            Ok(inv::ReservationStatus::Held | inv::ReservationStatus::Committed)
        );
        if !held {
            return self
                .orders
                .reject(
                    order_id,
                    "the stock reservation expired before the order was confirmed",
                    &[],
                )
                .await;
        }
        let prices: BTreeMap<String, Price> = reservation
            .lines
            .iter()
            .filter_map(|l| {
                l.unit_price.as_ref().map(|p| {
                    (
                        l.sku.clone(),
                        Price {
                            currency_code: p.currency_code.clone(),
                            unit_price_minor: p.amount_minor,
                        },
                    )
                })
            })
            .collect();
        let currencies: std::collections::BTreeSet<&str> =
            prices.values().map(|p| p.currency_code.as_str()).collect();
        if currencies.len() > 1 {
            let rejected = self
                .orders
                .reject(
                    order_id,
                    "the products are priced in different currencies; order them separately",
                    &[],
                )
                .await?;
            if rejected.is_some() {
                // Also released by inventory on OrderRejected; this is just sooner.
                let _ = self.peers.release(&order_id.to_string(), deadline).await;
            }
            return Ok(rejected);
        }
        let confirmed = self.orders.confirm(order, &prices).await?;
        if confirmed.is_some() {
            // Turn the hold into sold stock soon rather than only when inventory reads
            // OrderConfirmed (which also commits, idempotently): a lagging consumer must
            // not let the hold lapse under a confirmed order. The client need not wait.
            let peers = self.peers.clone();
            let deadline = *deadline;
            tokio::spawn(
                async move {
                    if let Err(status) = peers.commit(&order_id.to_string(), &deadline).await {
                        tracing::warn!(order_id = %order_id, code = ?status.code(), "commit left to the OrderConfirmed event");
                    }
                }
                .in_current_span(),
            );
        }
        Ok(confirmed)
    }

    /// Resolves orders left PENDING (by a crash or an outage) until shutdown.
    pub async fn run_recovery(
        self,
        every: Duration,
        idle: Duration,
        call_budget: Duration,
        shutdown: shop_platform::Shutdown,
    ) {
        loop {
            match self.orders.claim_stuck(idle, 20).await {
                Ok(stuck) => {
                    for order in stuck {
                        self.recover(order, call_budget).await;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "looking for pending orders failed"),
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn recover(&self, order: Order, call_budget: Duration) {
        let order_id = order.row.order_id;
        let age = chrono::Utc::now() - order.row.created_at;
        let deadline = Deadline::after(call_budget);
        if age.to_std().unwrap_or_default() > self.give_up_after {
            // Compensate: reject first (only a still-PENDING order), then give back any
            // hold. Rejecting first means a concurrent retry cannot confirm an order whose
            // stock was just released; OrderRejected makes inventory release it too.
            match self
                .orders
                .reject(order_id, "the order could not be completed in time", &[])
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => return, // settled meanwhile
                Err(err) => {
                    tracing::warn!(order_id = %order_id, error = %err, "rejecting a stale order failed");
                    return;
                }
            }
            match self.peers.release(&order_id.to_string(), &deadline).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => {
                    tracing::warn!(order_id = %order_id, code = ?s.code(), "release deferred to the OrderRejected event")
                }
            }
            return;
        }
        tracing::info!(order_id = %order_id, "resuming a pending order");
        if let Err(err) = self.resume(order, &OnBehalfOf::default(), &deadline).await {
            tracing::warn!(order_id = %order_id, error = %err, "resuming a pending order failed");
        }
    }
}
