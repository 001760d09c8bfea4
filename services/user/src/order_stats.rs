//! Keeps each user's order figures current from the order service's events:
//! a confirmed order counts, a cancelled one stops counting.

use chrono::{DateTime, Utc};
use prost::{Message, Name};
use shop_platform::inbox::{EventHandler, HandlerError, InboundEvent};
use shop_proto::order as pb;
use sqlx::PgConnection;
use uuid::Uuid;

pub use shop_proto::order::EVENTS_TOPIC as ORDER_EVENTS_TOPIC;

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
