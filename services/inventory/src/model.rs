//! Products and reservations as the service sees them: checked request input,
//! the records the store returns, and their wire forms.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::pagination::timestamp;
use shop_proto::common::Money;
use shop_proto::inventory as pb;

// The requests below have passed `contract::check` (their rules are in
// inventory_service.proto): what is left here is what a rule cannot say.

/// Free text as stored: without the spaces around it.
fn trimmed(raw: &str) -> String {
    raw.trim().to_owned()
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
        let unit_price = req
            .unit_price
            .ok_or_else(|| ApiError::invalid("unit_price", "is required"))?;
        Ok(Self {
            name: trimmed(&req.name),
            description: trimmed(&req.description),
            sku: req.sku,
            unit_price,
            initial_stock: req.initial_stock,
        })
    }
}

/// A checked UpdateProduct request: the SKU and the new value of each field
/// that changes (`None`: unchanged).
#[derive(Debug)]
pub struct ProductUpdate {
    pub sku: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub unit_price: Option<Money>,
}

impl ProductUpdate {
    /// Whether anything changes: an empty update reads the product as it is.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.description.is_none() && self.unit_price.is_none()
    }
}

/// The fields UpdateProduct may change, by their proto names.
const UPDATABLE: [&str; 3] = ["name", "description", "unit_price"];

/// Fields the service sets itself: named in a mask they are ignored, as AIP-203
/// asks, so a client may send back a product it read.
const NOT_UPDATED: [&str; 6] = [
    "sku",
    "available",
    "reserved",
    "sold",
    "create_time",
    "update_time",
];

impl TryFrom<pb::UpdateProductRequest> for ProductUpdate {
    type Error = ApiError;

    fn try_from(req: pb::UpdateProductRequest) -> Result<Self, ApiError> {
        let product = req
            .product
            .ok_or_else(|| ApiError::invalid("product", "is required"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut named: Vec<&str> = Vec::new();
        for path in &paths {
            match path.as_str() {
                "*" => named.extend(UPDATABLE),
                p if UPDATABLE.contains(&p) => named.push(p),
                p if NOT_UPDATED.contains(&p) => {}
                p if p.starts_with("unit_price.") => {
                    return Err(ApiError::invalid(
                        "update_mask",
                        format!("{p}: a price changes whole; name unit_price"),
                    ));
                }
                p => {
                    return Err(ApiError::invalid(
                        "update_mask",
                        format!(
                            "{p:?} is not a field of Product that can change (name, description, unit_price)"
                        ),
                    ));
                }
            }
        }
        // No mask: every field the request sets.
        let changes = |field: &str| {
            if paths.is_empty() {
                match field {
                    "name" => !product.name.is_empty(),
                    "description" => !product.description.is_empty(),
                    _ => product.unit_price.is_some(),
                }
            } else {
                named.contains(&field)
            }
        };
        let name = match changes("name").then(|| trimmed(&product.name)) {
            Some(name) if name.is_empty() => {
                return Err(ApiError::invalid(
                    "product.name",
                    "is required: a product keeps a name",
                ));
            }
            other => other,
        };
        let description = changes("description").then(|| trimmed(&product.description));
        let unit_price = match (changes("unit_price"), product.unit_price) {
            (false, _) => None,
            (true, Some(price)) => Some(price),
            (true, None) => {
                return Err(ApiError::invalid(
                    "product.unit_price",
                    "is required: a product keeps a price",
                ));
            }
        };
        Ok(Self {
            name,
            description,
            unit_price,
            sku: product.sku,
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

impl From<pb::AdjustStockRequest> for Adjustment {
    fn from(req: pb::AdjustStockRequest) -> Self {
        Self {
            reason: trimmed(&req.reason),
            request_id: trimmed(&req.request_id),
            sku: req.sku,
            delta: req.delta,
        }
    }
}

/// A checked ReserveStock request: SKU → quantity, each SKU once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRequest {
    pub order_id: String,
    pub lines: BTreeMap<String, i64>,
}

/// An order id (UUID text, in its canonical lower-case form). Requests have
/// passed the contract's `uuid` rule; events have not, so this still checks.
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
        let mut lines = BTreeMap::new();
        for (i, line) in req.lines.into_iter().enumerate() {
            if lines.insert(line.sku, line.quantity).is_some() {
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
    use shop_platform::contract;

    #[test]
    fn skus_follow_the_contract() {
        let get = |sku: &str| pb::GetProductRequest { sku: sku.into() };
        for good in ["MUG-001", "0-A", "A".repeat(32).as_str()] {
            contract::check(&get(good)).expect(good);
        }
        for bad in [
            "",
            "mu",
            "mug-001",
            "-MUG",
            "MUG 1",
            "M".repeat(33).as_str(),
            "MUG';--",
        ] {
            let err = contract::check(&get(bad)).expect_err(bad);
            assert!(err.to_string().starts_with("invalid sku"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_sku_twice_in_a_reservation_is_refused() {
        let line = |sku: &str| pb::ReservationLine {
            sku: sku.into(),
            quantity: 1,
            unit_price: None,
        };
        let req = pb::ReserveStockRequest {
            order_id: "0190a5a4-7b1c-7d3e-8f00-2a1b3c4d5e6f".into(),
            lines: vec![line("MUG-001"), line("CUP-001"), line("MUG-001")],
        };
        contract::check(&req).expect("every line is valid on its own");
        let err = ReservationRequest::try_from(req).expect_err("MUG-001 twice");
        assert_eq!(err.to_string(), "invalid lines[2].sku: appears twice");
    }

    #[test]
    fn free_text_is_stored_trimmed() {
        let adjustment = Adjustment::from(pb::AdjustStockRequest {
            sku: "MUG-001".into(),
            delta: 3,
            reason: "  recount ".into(),
            request_id: " r-1 ".into(),
        });
        assert_eq!(
            (adjustment.reason.as_str(), adjustment.request_id.as_str()),
            ("recount", "r-1")
        );
    }
}
