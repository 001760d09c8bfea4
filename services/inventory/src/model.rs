//! Products and reservations as the service sees them: checked request input,
//! the records the store returns, and their wire forms.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::pagination::timestamp;
use shop_proto::common::Money;
use shop_proto::inventory as pb;

const MAX_STOCK: i64 = 1_000_000_000;
const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
pub const MAX_LINES: usize = 100;
const MAX_QUANTITY: i64 = 1_000_000;

/// Upper-case letters, digits and dashes, 3 to 32 characters, starting with a letter or digit.
pub fn parse_sku(field: &str, raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    let ok = (3..=32).contains(&raw.len())
        && raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && raw
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(
            field,
            "must be 3 to 32 upper-case letters, digits or dashes, e.g. MUG-001",
        ))
    }
}

fn parse_price(field: &str, money: Option<Money>) -> Result<Money, ApiError> {
    let money = money.ok_or_else(|| ApiError::invalid(field, "is required"))?;
    let code = &money.currency_code;
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(ApiError::invalid(
            format!("{field}.currency_code"),
            "must be an ISO 4217 code such as EUR",
        ));
    }
    if !(0..=MAX_PRICE_MINOR).contains(&money.amount_minor) {
        return Err(ApiError::invalid(
            format!("{field}.amount_minor"),
            "must be between 0 and 10^12 minor units",
        ));
    }
    Ok(money)
}

fn bounded_text(field: &str, raw: &str, min: usize, max: usize) -> Result<String, ApiError> {
    let text = raw.trim();
    let chars = text.chars().count();
    if chars < min {
        return Err(ApiError::invalid(field, "is required"));
    }
    if chars > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

/// A checked CreateProduct request.
#[derive(Debug)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub unit_price: Money,
    pub initial_stock: i64,
}

impl TryFrom<pb::CreateProductRequest> for NewProduct {
    type Error = ApiError;

    fn try_from(req: pb::CreateProductRequest) -> Result<Self, ApiError> {
        let sku = parse_sku("sku", &req.sku)?;
        let name = bounded_text("name", &req.name, 1, 200)?;
        let description = bounded_text("description", &req.description, 0, 2000)?;
        let unit_price = parse_price("unit_price", req.unit_price)?;
        if !(0..=MAX_STOCK).contains(&req.initial_stock) {
            return Err(ApiError::invalid(
                "initial_stock",
                "must be between 0 and 10^9",
            ));
        }
        Ok(Self {
            sku,
            name,
            description,
            unit_price,
            initial_stock: req.initial_stock,
        })
    }
}

/// A checked AdjustStock request.
#[derive(Debug)]
pub struct Adjustment {
    pub sku: String,
    pub delta: i64,
    pub reason: String,
    pub request_id: String,
}

impl TryFrom<pb::AdjustStockRequest> for Adjustment {
    type Error = ApiError;

    fn try_from(req: pb::AdjustStockRequest) -> Result<Self, ApiError> {
        let sku = parse_sku("sku", &req.sku)?;
        if req.delta == 0 || req.delta.unsigned_abs() > MAX_STOCK as u64 {
            return Err(ApiError::invalid(
                "delta",
                "must be non-zero and at most 10^9 either way",
            ));
        }
        let reason = bounded_text("reason", &req.reason, 1, 500)?;
        let request_id = bounded_text("request_id", &req.request_id, 1, 128)?;
        Ok(Self {
            sku,
            delta: req.delta,
            reason,
            request_id,
        })
    }
}

/// A checked ReserveStock request: SKU → quantity, each SKU once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRequest {
    pub order_id: String,
    pub lines: BTreeMap<String, i64>,
}

/// An order id from a request field (UUID text).
pub fn parse_order_id(raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid("order_id", "is required"));
    }
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::invalid("order_id", "must be a UUID"))
}

impl TryFrom<pb::ReserveStockRequest> for ReservationRequest {
    type Error = ApiError;

    fn try_from(req: pb::ReserveStockRequest) -> Result<Self, ApiError> {
        let order_id = parse_order_id(&req.order_id)?;
        if req.lines.is_empty() {
            return Err(ApiError::invalid("lines", "must have at least one line"));
        }
        if req.lines.len() > MAX_LINES {
            return Err(ApiError::invalid("lines", "must have at most 100 lines"));
        }
        let mut lines = BTreeMap::new();
        for (i, line) in req.lines.iter().enumerate() {
            let sku = parse_sku(&format!("lines[{i}].sku"), &line.sku)?;
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                return Err(ApiError::invalid(
                    format!("lines[{i}].quantity"),
                    "must be between 1 and 1000000",
                ));
            }
            if lines.insert(sku, line.quantity).is_some() {
                return Err(ApiError::invalid(
                    format!("lines[{i}].sku"),
                    "appears twice",
                ));
            }
        }
        Ok(Self { order_id, lines })
    }
}

/// A product and its stock, as stored. `available + reserved + sold` only
/// changes through creation and adjustments.
#[derive(sqlx::FromRow, Debug, Clone)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub currency_code: String,
    pub unit_price_minor: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Product {
    pub fn unit_price(&self) -> Money {
        Money {
            currency_code: self.currency_code.clone(),
            amount_minor: self.unit_price_minor,
        }
    }
}

impl From<Product> for pb::Product {
    fn from(product: Product) -> Self {
        pb::Product {
            unit_price: Some(product.unit_price()),
            sku: product.sku,
            name: product.name,
            description: product.description,
            available: product.available,
            reserved: product.reserved,
            sold: product.sold,
            create_time: Some(timestamp(product.created_at)),
            update_time: Some(timestamp(product.updated_at)),
        }
    }
}

/// One page of products by SKU; the token is empty on the last page.
#[derive(Debug)]
pub struct ProductPage {
    pub products: Vec<Product>,
    pub next_page_token: String,
}

impl From<ProductPage> for pb::ListProductsResponse {
    fn from(page: ProductPage) -> Self {
        pb::ListProductsResponse {
            products: page.products.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }
    }
}

/// Where a reservation is in its life. Held is the only state stock leaves
/// from; Returned is committed stock that a cancellation gave back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationStatus {
    Held,
    Committed,
    Released,
    Expired,
    Returned,
}

impl ReservationStatus {
    pub fn from_db(s: &str) -> Self {
        match s {
            "committed" => Self::Committed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            "returned" => Self::Returned,
            _ => Self::Held,
        }
    }

    pub fn as_db(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Returned => "returned",
        }
    }

    fn to_proto(self) -> pb::ReservationStatus {
        match self {
            Self::Held => pb::ReservationStatus::Held,
            Self::Committed => pb::ReservationStatus::Committed,
            // Returned stock was released after the commit; to the order service it is released.
            Self::Released | Self::Returned => pb::ReservationStatus::Released,
            Self::Expired => pb::ReservationStatus::Expired,
        }
    }
}

/// One reserved line, priced when the stock was held.
#[derive(sqlx::FromRow, Debug, Clone)]
pub struct ReservationLine {
    pub sku: String,
    pub quantity: i64,
    pub currency_code: String,
    pub unit_price_minor: i64,
}

/// Stock held for one order, lines in SKU order.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub order_id: String,
    pub status: ReservationStatus,
    pub expires_at: DateTime<Utc>,
    pub lines: Vec<ReservationLine>,
}

impl Reservation {
    /// SKU → quantity, to compare a retried request with what is held.
    pub fn quantities(&self) -> BTreeMap<String, i64> {
        self.lines
            .iter()
            .map(|l| (l.sku.clone(), l.quantity))
            .collect()
    }
}

/// The wire form of reservation lines (also what the events carry).
pub fn proto_lines(lines: &[ReservationLine]) -> Vec<pb::ReservationLine> {
    lines
        .iter()
        .map(|l| pb::ReservationLine {
            sku: l.sku.clone(),
            quantity: l.quantity,
            unit_price: Some(Money {
                currency_code: l.currency_code.clone(),
                amount_minor: l.unit_price_minor,
            }),
        })
        .collect()
}

impl From<Reservation> for pb::Reservation {
    fn from(reservation: Reservation) -> Self {
        pb::Reservation {
            lines: proto_lines(&reservation.lines),
            status: reservation.status.to_proto() as i32,
            expire_time: Some(timestamp(reservation.expires_at)),
            order_id: reservation.order_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus() {
        assert_eq!(parse_sku("sku", "MUG-001").expect("valid"), "MUG-001");
        for bad in [
            "",
            "mu",
            "mug-001",
            "-MUG",
            "MUG 1",
            "M".repeat(33).as_str(),
            "MUG';--",
        ] {
            let err = parse_sku("sku", bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid sku"), "{bad}: {err}");
        }
    }

    #[test]
    fn prices_are_checked() {
        let price = |code: &str, amount| {
            Some(Money {
                currency_code: code.into(),
                amount_minor: amount,
            })
        };
        assert!(parse_price("unit_price", price("EUR", 1299)).is_ok());
        let err = parse_price("unit_price", price("eur", 1)).expect_err("lower-case");
        assert!(err.to_string().contains("unit_price.currency_code"));
        let err = parse_price("unit_price", price("EUR", -1)).expect_err("negative");
        assert!(err.to_string().contains("unit_price.amount_minor"));
        assert!(parse_price("unit_price", None).is_err());
    }
}
