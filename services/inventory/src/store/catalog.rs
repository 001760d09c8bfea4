//! Products and their stock: creation, reads, pages and adjustments that never
//! drive available stock below zero, each change written with its event.

use shop_platform::outbox::OutboxSignal;
use shop_platform::pagination;
use shop_platform::{ApiError, db};
use sqlx::PgPool;

use crate::events;
use crate::model::{Adjustment, NewProduct, Product, ProductPage, ProductUpdate};
use crate::store::product_cache::{Lookup, ProductCache};

const PRODUCT_COLUMNS: &str = "sku, name, description, currency_code, unit_price_minor, available, reserved, sold, created_at, updated_at";

const INSERT_PRODUCT: &str = "INSERT INTO products (sku, name, description, currency_code, unit_price_minor, initial_stock, available)
     VALUES ($1, $2, $3, $4, $5, $6, $6)";

fn bind_product<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, Product, sqlx::postgres::PgArguments>,
    product: &'q NewProduct,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Product, sqlx::postgres::PgArguments> {
    query
        .bind(&product.sku)
        .bind(&product.name)
        .bind(&product.description)
        .bind(&product.unit_price.currency_code)
        .bind(product.unit_price.amount_minor)
        .bind(product.initial_stock)
}

/// What an import did: the SKUs it added and those it found, in the order sent.
#[derive(Debug, Default)]
pub struct Imported {
    pub created: Vec<String>,
    pub existing: Vec<String>,
}

fn no_such_product(sku: &str) -> ApiError {
    ApiError::NotFound {
        resource: "product",
        id: sku.to_owned(),
    }
}

#[derive(Clone, Debug)]
pub struct Catalog {
    pool: PgPool,
    outbox: OutboxSignal,
    low_threshold: i64,
    cache: ProductCache,
}

impl Catalog {
    /// Products in `pool`; a change wakes the relay through `outbox`; available
    /// stock under `low_threshold` publishes StockLow; reads go through `cache`,
    /// and this copy's changes are forgotten there as soon as they commit.
    pub fn new(
        pool: PgPool,
        outbox: OutboxSignal,
        low_threshold: i64,
        cache: ProductCache,
    ) -> Self {
        Self {
            pool,
            outbox,
            low_threshold,
            cache,
        }
    }

    #[tracing::instrument(name = "db products.create", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "create"))]
    pub async fn create(&self, product: NewProduct) -> Result<Product, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        let inserted = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
            "{INSERT_PRODUCT} RETURNING {PRODUCT_COLUMNS}"
        )));
        let inserted = bind_product(inserted, &product).fetch_one(&mut *tx).await;
        let row = db::unless_exists(inserted, "product", || product.sku.clone())?;
        self.announce(&mut tx, &row, product.initial_stock).await?;
        tx.commit().await?;
        self.cache.forget([&row.sku]);
        self.outbox.notify();
        tracing::info!(sku = %row.sku, "product created");
        Ok(row)
    }

    /// Adds `products` in one transaction, all or none; one whose SKU the
    /// catalogue has already is left as it is and reported as existing.
    #[tracing::instrument(name = "db products.import", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "import", products = products.len()))]
    pub async fn import(&self, products: Vec<NewProduct>) -> Result<Imported, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        // Inserted in SKU order, so that two imports of the same SKUs in other
        // orders wait for each other instead of deadlocking; reported in the
        // order sent.
        let mut by_sku: Vec<usize> = (0..products.len()).collect();
        by_sku.sort_by(|&a, &b| products[a].sku.cmp(&products[b].sku));
        // Whether each product, by its place in the request, was inserted (a SKU
        // sent twice is inserted once: its second copy is reported as existing).
        let mut created = vec![false; products.len()];
        for i in by_sku {
            let product = &products[i];
            let inserted = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
                "{INSERT_PRODUCT} ON CONFLICT (sku) DO NOTHING RETURNING {PRODUCT_COLUMNS}"
            )));
            let Some(row) = bind_product(inserted, product)
                .fetch_optional(&mut *tx)
                .await?
            else {
                continue;
            };
            self.announce(&mut tx, &row, product.initial_stock).await?;
            created[i] = true;
        }
        tx.commit().await?;
        let mut imported = Imported::default();
        for (product, created) in products.into_iter().zip(created) {
            if created {
                imported.created.push(product.sku);
            } else {
                imported.existing.push(product.sku);
            }
        }
        if !imported.created.is_empty() {
            self.cache.forget(&imported.created);
            self.outbox.notify();
        }
        tracing::info!(
            created = imported.created.len(),
            existing = imported.existing.len(),
            "products imported"
        );
        Ok(imported)
    }

    /// A new product's events, in its transaction: ProductCreated and its first
    /// stock level.
    async fn announce(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        row: &Product,
        initial_stock: i64,
    ) -> Result<(), ApiError> {
        events::product_created(tx, row, initial_stock).await?;
        events::stock_level_changed(tx, &row.sku, i64::MAX, row.available, self.low_threshold)
            .await?;
        Ok(())
    }

    #[tracing::instrument(name = "db products.get", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "get"))]
    pub async fn get(&self, sku: &str) -> Result<Product, ApiError> {
        let claim = match self.cache.lookup(sku) {
            Lookup::Hit(product) => return Ok(product),
            Lookup::Miss(claim) => claim,
        };
        let product = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = $1"
        )))
        .bind(sku)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| no_such_product(sku))?;
        if let Some(claim) = claim {
            claim.fill(&product);
        }
        Ok(product)
    }

    /// Products by SKU after the token's SKU: a page never shifts when products are added.
    #[tracing::instrument(name = "db products.list", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "list"))]
    pub async fn list(
        &self,
        page_size: i64,
        after: Option<String>,
    ) -> Result<ProductPage, ApiError> {
        let rows = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE $1::text IS NULL OR sku > $1 ORDER BY sku LIMIT $2"
        )))
        .bind(after)
        .bind(page_size + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() as i64 > page_size;
        let rows: Vec<Product> = rows.into_iter().take(page_size as usize).collect();
        let next_page_token = match (has_more, rows.last()) {
            (true, Some(last)) => pagination::encode_token(&last.sku),
            _ => String::new(),
        };
        Ok(ProductPage {
            products: rows,
            next_page_token,
        })
    }

    /// Changes the fields `update` carries, with a ProductUpdated event; an
    /// update that changes nothing reads the product as it is.
    #[tracing::instrument(name = "db products.update", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "update"))]
    pub async fn update(&self, update: ProductUpdate) -> Result<Product, ApiError> {
        if update.is_empty() {
            return self.get(&update.sku).await;
        }
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        // COALESCE keeps what the update leaves out (NULL binds).
        let row = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
            "UPDATE products SET name = COALESCE($2, name), description = COALESCE($3, description),
                 currency_code = COALESCE($4, currency_code), unit_price_minor = COALESCE($5, unit_price_minor),
                 updated_at = now()
             WHERE sku = $1 RETURNING {PRODUCT_COLUMNS}"
        )))
        .bind(&update.sku)
        .bind(&update.name)
        .bind(&update.description)
        .bind(update.unit_price.as_ref().map(|p| p.currency_code.as_str()))
        .bind(update.unit_price.as_ref().map(|p| p.amount_minor))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(no_such_product(&update.sku));
        };
        events::product_updated(&mut tx, &row).await?;
        tx.commit().await?;
        self.cache.forget([&row.sku]);
        self.outbox.notify();
        tracing::info!(sku = %row.sku, "product updated");
        Ok(row)
    }

    /// Applies an adjustment once per request id.
    #[tracing::instrument(name = "db products.adjust", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "products", db.operation.name = "adjust"))]
    pub async fn adjust(&self, adjustment: Adjustment) -> Result<Product, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        // The product row first (as every path locks it): concurrent adjustments queue
        // here instead of deadlocking on the adjustment's foreign key.
        let before: Option<i64> =
            sqlx::query_scalar("SELECT available FROM products WHERE sku = $1 FOR UPDATE")
                .bind(&adjustment.sku)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(before) = before else {
            return Err(no_such_product(&adjustment.sku));
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
                _ => Err(ApiError::AlreadyExists {
                    resource: "adjustment of another SKU or delta for request_id",
                    id: adjustment.request_id.clone(),
                }),
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
        let row = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
            "UPDATE products SET available = available + $2, adjusted = adjusted + $2, updated_at = now()
             WHERE sku = $1 RETURNING {PRODUCT_COLUMNS}"
        )))
        .bind(&adjustment.sku)
        .bind(adjustment.delta)
        .fetch_one(&mut *tx)
        .await?;
        events::stock_adjusted(&mut tx, &row, adjustment.delta, adjustment.reason).await?;
        events::stock_level_changed(&mut tx, &row.sku, before, row.available, self.low_threshold)
            .await?;
        tx.commit().await?;
        self.cache.forget([&row.sku]);
        self.outbox.notify();
        Ok(row)
    }
}
