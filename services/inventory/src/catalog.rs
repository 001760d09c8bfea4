//! Products and their stock: checked input, creation, reads, pages and
//! adjustments that never drive available stock below zero.

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::outbox::{self, OutboxSignal};
use shop_platform::pagination::{self, timestamp};
use shop_proto::common::Money;
use shop_proto::inventory as pb;
use sqlx::{PgConnection, PgPool};

pub use shop_proto::inventory::EVENTS_TOPIC as INVENTORY_EVENTS_TOPIC;
const MAX_STOCK: i64 = 1_000_000_000;
const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;

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

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct ProductRow {
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

const PRODUCT_COLUMNS: &str = "sku, name, description, currency_code, unit_price_minor, available, reserved, sold, created_at, updated_at";

impl From<ProductRow> for pb::Product {
    fn from(row: ProductRow) -> Self {
        pb::Product {
            sku: row.sku,
            name: row.name,
            description: row.description,
            unit_price: Some(Money {
                currency_code: row.currency_code,
                amount_minor: row.unit_price_minor,
            }),
            available: row.available,
            reserved: row.reserved,
            sold: row.sold,
            create_time: Some(timestamp(row.created_at)),
            update_time: Some(timestamp(row.updated_at)),
        }
    }
}

/// Publishes StockLow when a change took available stock from at or above the
/// threshold to below it.
pub async fn note_stock_level(
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
        outbox::enqueue(conn, INVENTORY_EVENTS_TOPIC, sku, &event).await?;
        tracing::info!(sku, available = after, threshold, "stock low");
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Catalog {
    pool: PgPool,
    outbox: OutboxSignal,
    low_threshold: i64,
}

impl Catalog {
    /// Products in `pool`; a change wakes the relay through `outbox`; available
    /// stock under `low_threshold` publishes StockLow.
    pub fn new(pool: PgPool, outbox: OutboxSignal, low_threshold: i64) -> Self {
        Self {
            pool,
            outbox,
            low_threshold,
        }
    }

    #[tracing::instrument(name = "db products.create", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "create"))]
    pub async fn create(&self, product: NewProduct) -> Result<pb::Product, ApiError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO products (sku, name, description, currency_code, unit_price_minor, initial_stock, available)
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {PRODUCT_COLUMNS}"
        )))
        .bind(&product.sku)
        .bind(&product.name)
        .bind(&product.description)
        .bind(&product.unit_price.currency_code)
        .bind(product.unit_price.amount_minor)
        .bind(product.initial_stock)
        .fetch_one(&mut *tx)
        .await;
        let row = match inserted {
            Ok(row) => row,
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(ApiError::AlreadyExists {
                    resource: "product",
                    id: product.sku,
                });
            }
            Err(err) => return Err(err.into()),
        };
        let event = pb::ProductCreated {
            sku: row.sku.clone(),
            name: row.name.clone(),
            unit_price: Some(product.unit_price),
            initial_stock: product.initial_stock,
            create_time: Some(timestamp(row.created_at)),
        };
        outbox::enqueue(&mut tx, INVENTORY_EVENTS_TOPIC, &row.sku, &event).await?;
        note_stock_level(
            &mut tx,
            &row.sku,
            i64::MAX,
            row.available,
            self.low_threshold,
        )
        .await?;
        tx.commit().await?;
        self.outbox.notify();
        tracing::info!(sku = %row.sku, "product created");
        Ok(row.into())
    }

    #[tracing::instrument(name = "db products.get", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "get"))]
    pub async fn get(&self, sku: &str) -> Result<pb::Product, ApiError> {
        sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = $1"
        )))
        .bind(sku)
        .fetch_optional(&self.pool)
        .await?
        .map(Into::into)
        .ok_or_else(|| ApiError::NotFound {
            resource: "product",
            id: sku.to_owned(),
        })
    }

    /// Products by SKU after the token's SKU: a page never shifts when products are added.
    #[tracing::instrument(name = "db products.list", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "list"))]
    pub async fn list(
        &self,
        page_size: i64,
        after: Option<String>,
    ) -> Result<pb::ListProductsResponse, ApiError> {
        let rows = sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE $1::text IS NULL OR sku > $1 ORDER BY sku LIMIT $2"
        )))
        .bind(after)
        .bind(page_size + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() as i64 > page_size;
        let rows: Vec<ProductRow> = rows.into_iter().take(page_size as usize).collect();
        let next_page_token = match (has_more, rows.last()) {
            (true, Some(last)) => pagination::encode_token(&last.sku),
            _ => String::new(),
        };
        Ok(pb::ListProductsResponse {
            products: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }

    /// Applies an adjustment once per request id.
    #[tracing::instrument(name = "db products.adjust", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "adjust"))]
    pub async fn adjust(&self, adjustment: Adjustment) -> Result<pb::Product, ApiError> {
        let mut tx = self.pool.begin().await?;
        // The product row first (as every path locks it): concurrent adjustments queue
        // here instead of deadlocking on the adjustment's foreign key.
        let before: Option<i64> =
            sqlx::query_scalar("SELECT available FROM products WHERE sku = $1 FOR UPDATE")
                .bind(&adjustment.sku)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(before) = before else {
            return Err(ApiError::NotFound {
                resource: "product",
                id: adjustment.sku,
            });
        };
        let first = sqlx::query(
            "INSERT INTO stock_adjustments (request_id, sku, delta, reason) VALUES ($1, $2, $3, $4)
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&adjustment.request_id)
        .bind(&adjustment.sku)
        .bind(adjustment.delta)
        .bind(&adjustment.reason)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !first {
            let earlier: Option<(String, i64)> =
                sqlx::query_as("SELECT sku, delta FROM stock_adjustments WHERE request_id = $1")
                    .bind(&adjustment.request_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return match earlier {
                Some((sku, delta)) if sku == adjustment.sku && delta == adjustment.delta => {
                    tx.rollback().await?;
                    self.get(&sku).await
                }
                _ => Err(ApiError::invalid(
                    "request_id",
                    "was already used for a different adjustment",
                )),
            };
        }
        if before + adjustment.delta < 0 {
            return Err(ApiError::Precondition {
                message: format!(
                    "adjustment of {} would drive available stock of {} below 0 (available {before})",
                    adjustment.delta, adjustment.sku
                ),
                violations: vec![shop_platform::error::PreconditionViolation {
                    kind: "STOCK".into(),
                    subject: adjustment.sku,
                    description: format!("available {before}"),
                }],
            });
        }
        let row = sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE products SET available = available + $2, adjusted = adjusted + $2, updated_at = now()
             WHERE sku = $1 RETURNING {PRODUCT_COLUMNS}"
        )))
        .bind(&adjustment.sku)
        .bind(adjustment.delta)
        .fetch_one(&mut *tx)
        .await?;
        let event = pb::StockAdjusted {
            sku: row.sku.clone(),
            delta: adjustment.delta,
            reason: adjustment.reason,
            available: row.available,
            adjust_time: Some(timestamp(row.updated_at)),
        };
        outbox::enqueue(&mut tx, INVENTORY_EVENTS_TOPIC, &row.sku, &event).await?;
        note_stock_level(&mut tx, &row.sku, before, row.available, self.low_threshold).await?;
        tx.commit().await?;
        self.outbox.notify();
        Ok(row.into())
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
