//! The service's database: orders and their lines. Every state change is guarded
//! by the state it leaves (`WHERE status = 'pending'`) and written with its event
//! in one transaction, so the request path and the recovery loop (on any replica)
//! never both finalize an order and no event is published for a change that
//! rolled back. Returns model types; the wire is api.rs's.

use std::collections::BTreeMap;
use std::time::Duration;

use shop_platform::ApiError;
use shop_platform::outbox::OutboxSignal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::events;
use crate::model::{LineRow, NewOrder, Order, OrderRow, Price, Status};

const ORDER_COLUMNS: &str = "order_id, user_id, request_id, status, currency_code, total_minor, \
     rejection_reason, unavailable_skus, created_at, updated_at";

#[derive(Clone, Debug)]
pub struct Orders {
    pool: PgPool,
    outbox: OutboxSignal,
}

async fn load_lines(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<LineRow>, sqlx::Error> {
    sqlx::query_as::<_, LineRow>(
        "SELECT order_id, sku, quantity, currency_code, unit_price_minor FROM order_lines
         WHERE order_id = ANY($1) ORDER BY order_id, sku",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

async fn with_lines(
    conn: &mut PgConnection,
    rows: Vec<OrderRow>,
) -> Result<Vec<Order>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.order_id).collect();
    let mut lines: BTreeMap<Uuid, Vec<LineRow>> = BTreeMap::new();
    for line in load_lines(conn, &ids).await? {
        lines.entry(line.order_id).or_default().push(line);
    }
    Ok(rows
        .into_iter()
        .map(|row| Order {
            lines: lines.remove(&row.order_id).unwrap_or_default(),
            row,
        })
        .collect())
}

impl Orders {
    /// Orders in `pool`; a committed event wakes the relay through `outbox`.
    pub fn new(pool: PgPool, outbox: OutboxSignal) -> Self {
        Self { pool, outbox }
    }

    async fn one(
        &self,
        conn: &mut PgConnection,
        sql: &str,
        id: Uuid,
    ) -> Result<Option<Order>, sqlx::Error> {
        let row = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match row {
            Some(row) => with_lines(conn, vec![row]).await?.pop(),
            None => None,
        })
    }

    #[tracing::instrument(name = "db orders.get", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "orders", db.operation.name = "get"))]
    /// The order, or NOT_FOUND naming it.
    pub async fn require(&self, order_id: Uuid) -> Result<Order, ApiError> {
        self.get(order_id).await?.ok_or_else(|| ApiError::NotFound {
            resource: "order",
            id: order_id.to_string(),
        })
    }

    pub async fn get(&self, order_id: Uuid) -> Result<Option<Order>, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1");
        Ok(self.one(&mut conn, &sql, order_id).await?)
    }

    #[tracing::instrument(name = "db orders.find_by_request", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "orders", db.operation.name = "find_by_request"))]
    pub async fn find_by_request(
        &self,
        user_id: Uuid,
        request_id: &str,
    ) -> Result<Option<Order>, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND request_id = $2"
        )))
        .bind(user_id)
        .bind(request_id)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(match row {
            Some(row) => with_lines(&mut conn, vec![row]).await?.pop(),
            None => None,
        })
    }

    /// Writes the order PENDING; when the user already has an order with this
    /// request id, returns that one instead (and false).
    #[tracing::instrument(name = "db orders.insert_pending", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "orders", db.operation.name = "insert_pending"))]
    pub async fn insert_pending(
        &self,
        user_id: Uuid,
        new: &NewOrder,
    ) -> Result<(Order, bool), ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        let order_id = Uuid::now_v7();
        let row = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO orders (order_id, user_id, request_id, status) VALUES ($1, $2, $3, 'pending')
             ON CONFLICT (user_id, request_id) DO NOTHING RETURNING {ORDER_COLUMNS}"
        )))
        .bind(order_id)
        .bind(user_id)
        .bind(&new.request_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            let request_id = new.request_id.as_deref().unwrap_or_default();
            let existing = self.find_by_request(user_id, request_id).await?;
            return existing
                .map(|o| (o, false))
                .ok_or_else(|| ApiError::Unavailable("order changed concurrently, retry".into()));
        };
        // Every line in one statement; its rows come back as stored.
        let (skus, quantities): (Vec<&str>, Vec<i64>) =
            new.lines.iter().map(|(sku, q)| (sku.as_str(), *q)).unzip();
        let mut lines = sqlx::query_as::<_, LineRow>(
            "INSERT INTO order_lines (order_id, sku, quantity)
             SELECT $1, sku, quantity FROM unnest($2::text[], $3::bigint[]) AS l (sku, quantity)
             RETURNING order_id, sku, quantity, currency_code, unit_price_minor",
        )
        .bind(order_id)
        .bind(&skus)
        .bind(&quantities)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        let order = Order { row, lines };
        Ok((order, true))
    }

    /// Finishes a guarded state change: when `row` came back (the order was still in
    /// the state the UPDATE required), writes its event and commits; None otherwise.
    /// `lines` are the order's lines when the change has just read them (else they
    /// are read here).
    async fn settle(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        row: Option<OrderRow>,
        lines: Option<Vec<LineRow>>,
    ) -> Result<Option<Order>, ApiError> {
        let Some(row) = row else {
            return Ok(None);
        };
        let order_id = row.order_id;
        let order = match lines {
            Some(lines) => Order { row, lines },
            None => with_lines(&mut tx, vec![row])
                .await?
                .pop()
                .ok_or_else(|| missing(order_id))?,
        };
        events::order_settled(&mut tx, &order).await?;
        tx.commit().await?;
        self.outbox.notify();
        Ok(Some(order))
    }

    /// PENDING → CONFIRMED with inventory's prices and the OrderConfirmed event.
    /// None when the order had left PENDING already.
    #[tracing::instrument(name = "db orders.confirm", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "orders", db.operation.name = "confirm"))]
    pub async fn confirm(
        &self,
        order: &Order,
        prices: &BTreeMap<String, Price>,
    ) -> Result<Option<Order>, ApiError> {
        let order_id = order.row.order_id;
        // An order's lines never change, so the ones it was written with say
        // which prices it needs.
        if let Some(line) = order.lines.iter().find(|l| !prices.contains_key(&l.sku)) {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "reservation lacks a price for {}",
                line.sku
            )));
        }
        let currency = prices
            .values()
            .next()
            .map(|p| p.currency_code.clone())
            .unwrap_or_default();
        let (mut skus, mut unit_prices, mut total) = (Vec::new(), Vec::new(), 0i64);
        for line in &order.lines {
            let price = prices[&line.sku].unit_price_minor;
            skus.push(line.sku.as_str());
            unit_prices.push(price);
            total = total.saturating_add(price.saturating_mul(line.quantity));
        }
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        // Every line priced in one statement, which returns the lines as stored.
        let mut lines = sqlx::query_as::<_, LineRow>(
            "UPDATE order_lines AS l SET currency_code = $2, unit_price_minor = p.unit_price_minor
             FROM unnest($3::text[], $4::bigint[]) AS p (sku, unit_price_minor)
             WHERE l.order_id = $1 AND l.sku = p.sku
             RETURNING l.order_id, l.sku, l.quantity, l.currency_code, l.unit_price_minor",
        )
        .bind(order_id)
        .bind(&currency)
        .bind(&skus)
        .bind(&unit_prices)
        .fetch_all(&mut *tx)
        .await?;
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        let row = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE orders SET status = 'confirmed', currency_code = $2, total_minor = $3, updated_at = now()
             WHERE order_id = $1 AND status = 'pending' RETURNING {ORDER_COLUMNS}"
        )))
        .bind(order_id)
        .bind(&currency)
        .bind(total)
        .fetch_optional(&mut *tx)
        .await?;
        let settled = self.settle(tx, row, Some(lines)).await?;
        if settled.is_some() {
            tracing::info!(order_id = %order_id, total, currency = %currency, "order confirmed");
        }
        Ok(settled)
    }

    /// PENDING → REJECTED with the reason and the OrderRejected event.
    #[tracing::instrument(name = "db orders.reject", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "orders", db.operation.name = "reject"))]
    pub async fn reject(
        &self,
        order_id: Uuid,
        reason: &str,
        skus: &[String],
    ) -> Result<Option<Order>, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        let row = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE orders SET status = 'rejected', rejection_reason = $2, unavailable_skus = $3, updated_at = now()
             WHERE order_id = $1 AND status = 'pending' RETURNING {ORDER_COLUMNS}"
        )))
        .bind(order_id)
        .bind(reason)
        .bind(skus)
        .fetch_optional(&mut *tx)
        .await?;
        let settled = self.settle(tx, row, None).await?;
        if settled.is_some() {
            tracing::info!(order_id = %order_id, reason, "order rejected");
        }
        Ok(settled)
    }

    /// CONFIRMED → CANCELLED with the OrderCancelled event (inventory gives the
    /// stock back from it). Cancelling a cancelled order returns it unchanged.
    #[tracing::instrument(name = "db orders.cancel", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "orders", db.operation.name = "cancel"))]
    pub async fn cancel(&self, order_id: Uuid, reason: &str) -> Result<Order, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1 FOR UPDATE");
        let order = self
            .one(&mut tx, &sql, order_id)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                resource: "order",
                id: order_id.to_string(),
            })?;
        match order.status() {
            Status::Cancelled => return Ok(order),
            Status::Pending => {
                return Err(ApiError::FailedPrecondition(format!(
                    "order {order_id} is still pending; cancel it once it is confirmed"
                )));
            }
            Status::Rejected => {
                return Err(ApiError::FailedPrecondition(format!(
                    "order {order_id} was rejected; there is nothing to cancel"
                )));
            }
            Status::Confirmed => {}
        }
        let row = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE orders SET status = 'cancelled', updated_at = now() WHERE order_id = $1 RETURNING {ORDER_COLUMNS}"
        )))
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await?;
        let cancelled = Order {
            row,
            lines: order.lines,
        };
        events::order_cancelled(&mut tx, &cancelled, reason).await?;
        tx.commit().await?;
        self.outbox.notify();
        tracing::info!(order_id = %order_id, "order cancelled");
        Ok(cancelled)
    }

    /// Newest first, optionally one user's and one status's, after the token's order id.
    #[tracing::instrument(name = "db orders.list", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "orders", db.operation.name = "list"))]
    pub async fn list(
        &self,
        user_id: Option<Uuid>,
        status: Option<Status>,
        page_size: i64,
        before: Option<Uuid>,
    ) -> Result<(Vec<Order>, bool), ApiError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM orders
             WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)
               AND ($3::uuid IS NULL OR order_id < $3)
             ORDER BY order_id DESC LIMIT $4"
        )))
        .bind(user_id)
        .bind(status.map(Status::as_db))
        .bind(before)
        .bind(page_size + 1)
        .fetch_all(&mut *conn)
        .await?;
        let more = rows.len() as i64 > page_size;
        let rows = rows.into_iter().take(page_size as usize).collect();
        Ok((with_lines(&mut conn, rows).await?, more))
    }

    /// Claims PENDING orders untouched for `idle` (bumping them so that other
    /// replicas skip them for as long).
    pub async fn claim_stuck(&self, idle: Duration, limit: i64) -> Result<Vec<Order>, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        let rows = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE orders SET updated_at = now(), recovery_attempts = recovery_attempts + 1
             WHERE order_id IN (
                 SELECT order_id FROM orders
                 WHERE status = 'pending' AND updated_at < now() - make_interval(secs => $1)
                 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING {ORDER_COLUMNS}"
        )))
        .bind(idle.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let orders = with_lines(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(orders)
    }
}

fn missing(order_id: Uuid) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(
        "order {order_id} has no row after its update"
    ))
}
