//! Orders as the service sees them: checked request input, states, the records
//! the store returns, and their wire forms.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::pagination::timestamp;
use shop_proto::common::Money;
use shop_proto::order as pb;
use uuid::Uuid;

/// The contract's bound on `request_id`, applied to the `Idempotency-Key` header too.
const MAX_REQUEST_ID_CHARS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
}

impl Status {
    pub fn from_db(s: &str) -> Self {
        match s {
            "confirmed" => Self::Confirmed,
            "rejected" => Self::Rejected,
            "cancelled" => Self::Cancelled,
            _ => Self::Pending,
        }
    }

    pub fn as_db(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn to_proto(self) -> pb::OrderStatus {
        match self {
            Self::Pending => pb::OrderStatus::Pending,
            Self::Confirmed => pb::OrderStatus::Confirmed,
            Self::Rejected => pb::OrderStatus::Rejected,
            Self::Cancelled => pb::OrderStatus::Cancelled,
        }
    }

    pub fn from_proto(status: i32) -> Result<Option<Self>, ApiError> {
        match pb::OrderStatus::try_from(status) {
            Ok(pb::OrderStatus::Unspecified) => Ok(None),
            Ok(pb::OrderStatus::Pending) => Ok(Some(Self::Pending)),
            Ok(pb::OrderStatus::Confirmed) => Ok(Some(Self::Confirmed)),
            Ok(pb::OrderStatus::Rejected) => Ok(Some(Self::Rejected)),
            Ok(pb::OrderStatus::Cancelled) => Ok(Some(Self::Cancelled)),
            Err(_) => Err(ApiError::invalid("status", "is not an OrderStatus")),
        }
    }

    /// No change follows a final state.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Rejected | Self::Cancelled)
    }
}

/// A checked CreateOrder request: SKU → quantity, each SKU once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub request_id: Option<String>,
    pub lines: BTreeMap<String, i64>,
}

impl NewOrder {
    /// `req` has passed `contract::check` (lines, SKUs, quantities and
    /// `request_id` are bounded in order_service.proto). `idempotency_key` is the
    /// REST `Idempotency-Key` header (forwarded as gRPC metadata), which no rule
    /// covers, so it is bounded here; the `request_id` field wins when both are set.
    pub fn parse(
        req: pb::CreateOrderRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Self, ApiError> {
        let from_field = Some(req.request_id.trim().to_owned()).filter(|r| !r.is_empty());
        let request_id = match from_field {
            Some(id) => Some(id),
            None => idempotency_key
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(checked_idempotency_key)
                .transpose()?,
        };
        // Lines of one SKU add up, as in a cart: the order holds each SKU once
        // (at most 100 × 1000, within what a reservation line takes).
        let mut lines = BTreeMap::new();
        for line in req.lines {
            *lines.entry(line.sku).or_insert(0) += line.quantity;
        }
        Ok(Self { request_id, lines })
    }
}

fn checked_idempotency_key(key: &str) -> Result<String, ApiError> {
    if key.chars().count() > MAX_REQUEST_ID_CHARS {
        return Err(ApiError::invalid(
            "idempotency-key",
            "must be at most 128 characters",
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "idempotency-key",
            "must not contain control characters",
        ));
    }
    Ok(key.to_owned())
}

/// An order id from a request field.
pub fn parse_order_id(raw: &str) -> Result<Uuid, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid("order_id", "is required"));
    }
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid("order_id", "must be a UUID"))
}

/// A reservation line's price, from inventory.
#[derive(Debug, Clone)]
pub struct Price {
    pub currency_code: String,
    pub unit_price_minor: i64,
}

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub request_id: Option<String>,
    pub status: String,
    pub currency_code: Option<String>,
    pub total_minor: Option<i64>,
    pub rejection_reason: String,
    pub unavailable_skus: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct LineRow {
    pub order_id: Uuid,
    pub sku: String,
    pub quantity: i64,
    pub currency_code: Option<String>,
    pub unit_price_minor: Option<i64>,
}

/// An order with its lines, as stored.
#[derive(Debug, Clone)]
pub struct Order {
    pub row: OrderRow,
    pub lines: Vec<LineRow>,
}

impl Order {
    pub fn status(&self) -> Status {
        Status::from_db(&self.row.status)
    }

    pub fn quantities(&self) -> BTreeMap<String, i64> {
        self.lines
            .iter()
            .map(|l| (l.sku.clone(), l.quantity))
            .collect()
    }

    pub fn total(&self) -> Option<Money> {
        match (&self.row.currency_code, self.row.total_minor) {
            (Some(code), Some(amount)) => Some(Money {
                currency_code: code.clone(),
                amount_minor: amount,
            }),
            _ => None,
        }
    }

    pub fn proto_lines(&self) -> Vec<pb::OrderLine> {
        self.lines
            .iter()
            .map(|l| {
                let unit_price = match (&l.currency_code, l.unit_price_minor) {
                    (Some(code), Some(price)) => Some(Money {
                        currency_code: code.clone(),
                        amount_minor: price,
                    }),
                    _ => None,
                };
                let line_total = unit_price.as_ref().map(|p| Money {
                    currency_code: p.currency_code.clone(),
                    amount_minor: p.amount_minor.saturating_mul(l.quantity),
                });
                pb::OrderLine {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                    unit_price,
                    line_total,
                }
            })
            .collect()
    }

    pub fn to_proto(&self) -> pb::Order {
        pb::Order {
            order_id: self.row.order_id.to_string(),
            user_id: self.row.user_id.to_string(),
            status: self.status().to_proto() as i32,
            lines: self.proto_lines(),
            total: self.total(),
            rejection_reason: self.row.rejection_reason.clone(),
            unavailable_skus: self.row.unavailable_skus.clone(),
            create_time: Some(timestamp(self.row.created_at)),
            update_time: Some(timestamp(self.row.updated_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, i64)]) -> pb::CreateOrderRequest {
        pb::CreateOrderRequest {
            request_id: String::new(),
            lines: lines
                .iter()
                .map(|(s, q)| pb::CreateOrderLine {
                    sku: (*s).into(),
                    quantity: *q,
                })
                .collect(),
        }
    }

    /// The contract refuses bad lines; lines of one SKU add up.
    #[test]
    fn lines_are_checked_and_named() {
        let checked = |r: pb::CreateOrderRequest| {
            shop_platform::contract::check(&r).and_then(|()| NewOrder::parse(r, None))
        };
        assert!(checked(req(&[("MUG-001", 2)])).is_ok());
        let cases = [
            (req(&[]), "invalid lines: is required"),
            (req(&[("MUG-001", 0)]), "invalid lines[0].quantity"),
            (req(&[("MUG-001", 1001)]), "invalid lines[0].quantity"),
            (req(&[("MUG-001", 1), ("mug", 1)]), "invalid lines[1].sku"),
        ];
        for (r, expected) in cases {
            let err = checked(r).expect_err(expected);
            assert!(err.to_string().starts_with(expected), "{err}");
        }
        let merged = checked(req(&[("MUG-001", 1), ("LAMP-001", 1), ("MUG-001", 1000)]))
            .expect("one SKU on two lines");
        assert_eq!(
            merged.lines,
            BTreeMap::from([("LAMP-001".to_owned(), 1), ("MUG-001".to_owned(), 1001)])
        );
    }

    #[test]
    fn the_request_id_field_wins_over_the_header() {
        let mut r = req(&[("MUG-001", 1)]);
        assert_eq!(
            NewOrder::parse(r.clone(), Some("hdr"))
                .expect("ok")
                .request_id
                .as_deref(),
            Some("hdr")
        );
        r.request_id = "field".into();
        assert_eq!(
            NewOrder::parse(r.clone(), Some("hdr"))
                .expect("ok")
                .request_id
                .as_deref(),
            Some("field")
        );
        r.request_id = String::new();
        let err = NewOrder::parse(r, Some(&"x".repeat(129))).expect_err("too long");
        assert_eq!(
            err.to_string(),
            "invalid idempotency-key: must be at most 128 characters"
        );
    }
}
