//! Closes the loop from the order service's events: a confirmed order's
//! reservation is committed; a cancelled order's stock comes back.

use prost::{Message, Name};
use shop_platform::ApiError;
use shop_platform::inbox::{EventHandler, HandlerError, InboundEvent};
use shop_proto::order as pb;
use sqlx::PgConnection;

use crate::reservation::{Reservations, parse_order_id};

pub use shop_proto::order::EVENTS_TOPIC as ORDER_EVENTS_TOPIC;

#[derive(Clone, Debug)]
pub struct OrderEventsHandler {
    pub reservations: Reservations,
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
        if event.event_type == pb::OrderConfirmed::full_name() {
            let confirmed =
                pb::OrderConfirmed::decode(event.payload.as_slice()).map_err(undecodable)?;
            let order_id = parse_order_id(&confirmed.order_id).map_err(rejected_err)?;
            self.reservations
                .commit_in(conn, &order_id)
                .await
                .map_err(database)?;
        } else if event.event_type == pb::OrderCancelled::full_name() {
            let cancelled =
                pb::OrderCancelled::decode(event.payload.as_slice()).map_err(undecodable)?;
            let order_id = parse_order_id(&cancelled.order_id).map_err(rejected_err)?;
            self.reservations
                .give_back(conn, &order_id)
                .await
                .map_err(database)?;
        } else if event.event_type == pb::OrderRejected::full_name() {
            // Usually nothing was held; but a saga that gave up or refused mixed
            // currencies may have left a hold behind.
            let rejected =
                pb::OrderRejected::decode(event.payload.as_slice()).map_err(undecodable)?;
            let order_id = parse_order_id(&rejected.order_id).map_err(rejected_err)?;
            self.reservations
                .give_back(conn, &order_id)
                .await
                .map_err(database)?;
        }
        Ok(())
    }
}
