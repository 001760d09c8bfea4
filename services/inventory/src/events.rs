//! The events the service publishes (written to the outbox inside the
//! transaction that makes the change) and the order events it consumes, which
//! close the loop: a confirmed order's reservation is committed, a cancelled or
//! rejected order's stock comes back.

use prost::{Message, Name};
use shop_platform::ApiError;
use shop_platform::inbox::{EventHandler, HandlerError, InboundEvent};
use shop_platform::outbox;
use shop_platform::pagination::timestamp;
use shop_proto::inventory as pb;
use shop_proto::order as order_pb;
use sqlx::PgConnection;

use crate::model::{Product, Reservation, ReservationStatus, parse_order_id, proto_lines};
use crate::store::Reservations;

pub use shop_proto::inventory::EVENTS_TOPIC;
pub use shop_proto::order::EVENTS_TOPIC as ORDER_EVENTS_TOPIC;

/// Keyed by SKU or order id, so one product's or one order's events stay in order.
async fn publish<M: Name>(
    conn: &mut PgConnection,
    key: &str,
    event: &M,
) -> Result<(), sqlx::Error> {
    outbox::enqueue(conn, EVENTS_TOPIC, key, event)
        .await
        .map(|_| ())
}

pub async fn product_created(
    conn: &mut PgConnection,
    product: &Product,
    initial_stock: i64,
) -> Result<(), sqlx::Error> {
    let event = pb::ProductCreated {
        sku: product.sku.clone(),
        name: product.name.clone(),
        unit_price: Some(product.unit_price()),
        initial_stock,
        create_time: Some(timestamp(product.created_at)),
    };
    publish(conn, &product.sku, &event).await
}

pub async fn product_updated(
    conn: &mut PgConnection,
    product: &Product,
) -> Result<(), sqlx::Error> {
    let event = pb::ProductUpdated {
        sku: product.sku.clone(),
        name: product.name.clone(),
        description: product.description.clone(),
        unit_price: Some(product.unit_price()),
        update_time: Some(timestamp(product.updated_at)),
    };
    publish(conn, &product.sku, &event).await
}

pub async fn stock_adjusted(
    conn: &mut PgConnection,
    product: &Product,
    delta: i64,
    reason: String,
) -> Result<(), sqlx::Error> {
    let event = pb::StockAdjusted {
        sku: product.sku.clone(),
        delta,
        reason,
        available: product.available,
        adjust_time: Some(timestamp(product.updated_at)),
    };
    publish(conn, &product.sku, &event).await
}

/// Publishes StockLow when a change took available stock from at or above the
/// threshold to below it.
pub async fn stock_level_changed(
    conn: &mut PgConnection,
    sku: &str,
    before: i64,
    after: i64,
    threshold: i64,
) -> Result<(), sqlx::Error> {
    if before >= threshold && after < threshold {
        let event = pb::StockLow {
            sku: sku.into(),
            available: after,
            threshold,
        };
        publish(conn, sku, &event).await?;
        tracing::info!(sku, available = after, threshold, "stock low");
    }
    Ok(())
}

pub async fn stock_reserved(
    conn: &mut PgConnection,
    reservation: &Reservation,
) -> Result<(), sqlx::Error> {
    let event = pb::StockReserved {
        order_id: reservation.order_id.clone(),
        lines: proto_lines(&reservation.lines),
        expire_time: Some(timestamp(reservation.expires_at)),
    };
    publish(conn, &reservation.order_id, &event).await
}

/// The event for a reservation that just left Held (or a lapsed one taken again):
/// committed, expired, or its stock given back.
pub async fn reservation_moved(
    conn: &mut PgConnection,
    reservation: &Reservation,
) -> Result<(), sqlx::Error> {
    let order_id = reservation.order_id.clone();
    let lines = proto_lines(&reservation.lines);
    let key = &reservation.order_id;
    match reservation.status {
        ReservationStatus::Committed => {
            publish(conn, key, &pb::ReservationCommitted { order_id, lines }).await
        }
        ReservationStatus::Expired => {
            publish(conn, key, &pb::ReservationExpired { order_id, lines }).await
        }
        _ => publish(conn, key, &pb::StockReleased { order_id, lines }).await,
    }
}

#[derive(Clone, Debug)]
pub struct OrderEventsHandler {
    reservations: Reservations,
}

impl OrderEventsHandler {
    pub fn new(reservations: Reservations) -> Self {
        Self { reservations }
    }
}

fn rejected_err(err: ApiError) -> HandlerError {
    HandlerError::Rejected(err.to_string())
}

impl EventHandler for OrderEventsHandler {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &InboundEvent,
    ) -> Result<(), HandlerError> {
        let undecodable = |e: prost::DecodeError| {
            HandlerError::Rejected(format!("undecodable {}: {e}", event.event_type))
        };
        let database = |e: ApiError| match e {
            ApiError::Unavailable(m) => HandlerError::Unavailable(m),
            other => rejected_err(other),
        };
        if event.event_type == order_pb::OrderConfirmed::full_name() {
            let confirmed =
                order_pb::OrderConfirmed::decode(event.payload.as_slice()).map_err(undecodable)?;
            let order_id = parse_order_id(&confirmed.order_id).map_err(rejected_err)?;
            self.reservations
                .commit_in(conn, &order_id)
                .await
                .map_err(database)?;
        } else if event.event_type == order_pb::OrderCancelled::full_name() {
            let cancelled =
                order_pb::OrderCancelled::decode(event.payload.as_slice()).map_err(undecodable)?;
            let order_id = parse_order_id(&cancelled.order_id).map_err(rejected_err)?;
            self.reservations
                .give_back(conn, &order_id)
                .await
                .map_err(database)?;
        } else if event.event_type == order_pb::OrderRejected::full_name() {
            // Usually nothing was held; but a saga that gave up or refused mixed
            // currencies may have left a hold behind.
            let rejected =
                order_pb::OrderRejected::decode(event.payload.as_slice()).map_err(undecodable)?;
            let order_id = parse_order_id(&rejected.order_id).map_err(rejected_err)?;
            self.reservations
                .give_back(conn, &order_id)
                .await
                .map_err(database)?;
        }
        Ok(())
    }
}
