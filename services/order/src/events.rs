//! The events the service publishes, each written to the outbox inside the
//! transaction that changes the order, keyed by order id so one order's events
//! stay in order. The service consumes no events.

use chrono::Utc;
use shop_platform::outbox;
use shop_platform::pagination::timestamp;
use shop_proto::order as pb;
use sqlx::PgConnection;

use crate::model::{Order, Status};

pub use shop_proto::order::EVENTS_TOPIC;

async fn publish<M: prost::Name>(
    conn: &mut PgConnection,
    order: &Order,
    event: &M,
) -> Result<(), sqlx::Error> {
    let key = order.row.order_id.to_string();
    outbox::enqueue(conn, EVENTS_TOPIC, &key, event)
        .await
        .map(|_| ())
}

/// OrderConfirmed or OrderRejected for an order that just left PENDING; nothing
/// for any other state.
pub async fn order_settled(conn: &mut PgConnection, order: &Order) -> Result<(), sqlx::Error> {
    let row = &order.row;
    match order.status() {
        Status::Confirmed => {
            let event = pb::OrderConfirmed {
                order_id: row.order_id.to_string(),
                user_id: row.user_id.to_string(),
                lines: order.proto_lines(),
                total: order.total(),
                confirm_time: Some(timestamp(row.updated_at)),
            };
            publish(conn, order, &event).await
        }
        Status::Rejected => {
            let event = pb::OrderRejected {
                order_id: row.order_id.to_string(),
                user_id: row.user_id.to_string(),
                reason: row.rejection_reason.clone(),
                unavailable_skus: row.unavailable_skus.clone(),
                reject_time: Some(timestamp(row.updated_at)),
            };
            publish(conn, order, &event).await
        }
        Status::Pending | Status::Cancelled => Ok(()),
    }
}

/// OrderCancelled for a confirmed order just cancelled (inventory gives the
/// stock back from it).
pub async fn order_cancelled(
    conn: &mut PgConnection,
    order: &Order,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let event = pb::OrderCancelled {
        order_id: order.row.order_id.to_string(),
        user_id: order.row.user_id.to_string(),
        previous_status: pb::OrderStatus::Confirmed as i32,
        total: order.total(),
        reason: reason.into(),
        cancel_time: Some(timestamp(Utc::now())),
    };
    publish(conn, order, &event).await
}
