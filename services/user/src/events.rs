//! The event the service publishes (UserRegistered, written to the outbox in
//! the transaction that creates the user) and the order events it consumes to
//! keep each user's order figures current: a confirmed order counts, a
//! cancelled one stops counting.

use chrono::{DateTime, Utc};
use prost::{Message, Name};
use shop_platform::inbox::{EventHandler, HandlerError, InboundEvent};
use shop_platform::outbox;
use shop_platform::pagination::timestamp;
use shop_proto::order as pb;
use shop_proto::user as user_pb;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::model::{self, User};

pub use shop_proto::order::EVENTS_TOPIC as ORDER_EVENTS_TOPIC;
pub use shop_proto::user::EVENTS_TOPIC;

/// Keyed by user id, so one user's events stay in order.
pub async fn user_registered(conn: &mut PgConnection, user: &User) -> Result<(), sqlx::Error> {
    let event = user_pb::UserRegistered {
        user_id: user.user_id.to_string(),
        email: user.email.clone(),
        role: model::role_to_proto(user.role) as i32,
        register_time: Some(timestamp(user.created_at)),
    };
    outbox::enqueue(conn, EVENTS_TOPIC, &event.user_id, &event)
        .await
        .map(|_| ())
}

#[derive(Clone, Copy, Debug)]
pub struct OrderStatsHandler;

fn uuid(field: &str, value: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(value)
        .map_err(|_| HandlerError::Rejected(format!("{field} {value:?} is not a UUID")))
}

fn time(ts: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_else(Utc::now)
}

impl EventHandler for OrderStatsHandler {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &InboundEvent,
    ) -> Result<(), HandlerError> {
        let decode_error = |e: prost::DecodeError| {
            HandlerError::Rejected(format!("undecodable {}: {e}", event.event_type))
        };
        if event.event_type == pb::OrderConfirmed::full_name() {
            let confirmed =
                pb::OrderConfirmed::decode(event.payload.as_slice()).map_err(decode_error)?;
            let user_id = uuid("user_id", &confirmed.user_id)?;
            if confirmed.order_id.is_empty() {
                return Err(HandlerError::Rejected("order_id is empty".into()));
            }
            let total = confirmed
                .total
                .ok_or_else(|| HandlerError::Rejected("total is missing".into()))?;
            if total.currency_code.len() != 3 || total.amount_minor < 0 {
                return Err(HandlerError::Rejected(format!(
                    "total {total:?} is not a valid amount"
                )));
            }
            sqlx::query(
                "INSERT INTO user_orders (order_id, user_id, currency_code, amount_minor, confirmed_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(&confirmed.order_id)
            .bind(user_id)
            .bind(&total.currency_code)
            .bind(total.amount_minor)
            .bind(time(confirmed.confirm_time.as_ref()))
            .execute(conn)
            .await?;
        } else if event.event_type == pb::OrderCancelled::full_name() {
            let cancelled =
                pb::OrderCancelled::decode(event.payload.as_slice()).map_err(decode_error)?;
            sqlx::query("UPDATE user_orders SET cancelled_at = $2 WHERE order_id = $1 AND cancelled_at IS NULL")
                .bind(&cancelled.order_id)
                .bind(time(cancelled.cancel_time.as_ref()))
                .execute(conn)
                .await?;
        }
        // Other order events (OrderRejected, later additions) do not change the figures.
        Ok(())
    }
}
