//! Reservations: stock held for an order, all lines or none, keyed by order id.
//! Products are always locked in SKU order after the reservation row, so
//! concurrent reservations never deadlock and never oversell, whatever the number
//! of replicas (the database does the locking, not the process).

use std::time::Duration;

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::error::PreconditionViolation;
use shop_platform::outbox::OutboxSignal;
use sqlx::{PgConnection, PgPool};

use crate::events;
use crate::model::{Reservation, ReservationLine, ReservationRequest, ReservationStatus};
use crate::store::ProductCache;

async fn lock(conn: &mut PgConnection, order_id: &str) -> Result<Option<Reservation>, sqlx::Error> {
    let Some((status, expires_at)): Option<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT status, expires_at FROM reservations WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let lines = sqlx::query_as::<_, ReservationLine>(
        "SELECT sku, quantity, currency_code, unit_price_minor FROM reservation_lines
         WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(Reservation {
        order_id: order_id.to_owned(),
        status: ReservationStatus::from_db(&status),
        expires_at,
        lines,
    }))
}

/// Moves a held reservation's stock: `available += q, reserved -= q` (back) or
/// `reserved -= q, sold += q` (commit); a committed one's `sold -= q, available += q` (return).
async fn move_stock(
    conn: &mut PgConnection,
    lines: &[ReservationLine],
    from: ReservationStatus,
    to: ReservationStatus,
    low_threshold: i64,
) -> Result<(), sqlx::Error> {
    let sql = match (from, to) {
        (ReservationStatus::Held, ReservationStatus::Committed) => {
            "UPDATE products SET reserved = reserved - $2, sold = sold + $2, updated_at = now()
             WHERE sku = $1 RETURNING available, available"
        }
        (ReservationStatus::Held, _) => {
            "UPDATE products SET reserved = reserved - $2, available = available + $2, updated_at = now()
             WHERE sku = $1 RETURNING available - $2, available"
        }
        _ => {
            "UPDATE products SET sold = sold - $2, available = available + $2, updated_at = now()
             WHERE sku = $1 RETURNING available - $2, available"
        }
    };
    // Lines are in SKU order: the same lock order as ReserveStock.
    for line in lines {
        let (before, after): (i64, i64) = sqlx::query_as(sql)
            .bind(&line.sku)
            .bind(line.quantity)
            .fetch_one(&mut *conn)
            .await?;
        events::stock_level_changed(conn, &line.sku, before, after, low_threshold).await?;
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Reservations {
    pool: PgPool,
    outbox: OutboxSignal,
    ttl: Duration,
    low_threshold: i64,
    /// Where this copy forgets the products its commits changed.
    cache: ProductCache,
}

impl Reservations {
    /// Holds in `pool` that expire after `ttl` unless committed; see `Catalog::new`
    /// for the rest.
    pub fn new(
        pool: PgPool,
        outbox: OutboxSignal,
        ttl: Duration,
        low_threshold: i64,
        cache: ProductCache,
    ) -> Self {
        Self {
            pool,
            outbox,
            ttl,
            low_threshold,
            cache,
        }
    }

    /// After a commit that moved `reservation`'s stock.
    fn moved(&self, reservation: &Reservation) {
        self.cache
            .forget(reservation.lines.iter().map(|line| &line.sku));
        self.outbox.notify();
    }

    /// Holds stock for every line or none. A retry with the same lines returns the
    /// same reservation; different lines for the same order are refused.
    #[tracing::instrument(name = "db reservations.reserve", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "reservations", db.operation.name = "reserve"))]
    pub async fn reserve(&self, request: ReservationRequest) -> Result<Reservation, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        let expires_at = Utc::now() + chrono::Duration::from_std(self.ttl).unwrap_or_default();
        let claimed = sqlx::query(
            "INSERT INTO reservations (order_id, status, expires_at) VALUES ($1, 'held', $2)
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&request.order_id)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            let existing = lock(&mut tx, &request.order_id).await?.ok_or_else(|| {
                ApiError::Unavailable("reservation changed concurrently, retry".into())
            })?;
            if existing.quantities() != request.lines {
                return Err(ApiError::AlreadyExists {
                    resource: "reservation with different lines for order",
                    id: request.order_id,
                });
            }
            return Ok(existing);
        }

        let skus: Vec<String> = request.lines.keys().cloned().collect();
        let products: Vec<(String, i64, String, i64)> = sqlx::query_as(
            "SELECT sku, available, currency_code, unit_price_minor FROM products
             WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        )
        .bind(&skus)
        .fetch_all(&mut *tx)
        .await?;
        if products.len() != skus.len() {
            let missing: Vec<&str> = skus
                .iter()
                .filter(|s| !products.iter().any(|p| &p.0 == *s))
                .map(String::as_str)
                .collect();
            return Err(ApiError::NotFound {
                resource: "product",
                id: missing.join(", "),
            });
        }
        let short: Vec<PreconditionViolation> = products
            .iter()
            .filter_map(|(sku, available, _, _)| {
                let wanted = request.lines[sku];
                (*available < wanted).then(|| PreconditionViolation {
                    kind: "STOCK".into(),
                    subject: sku.clone(),
                    description: format!("requested {wanted}, available {available}"),
                })
            })
            .collect();
        if !short.is_empty() {
            let skus: Vec<&str> = short.iter().map(|v| v.subject.as_str()).collect();
            return Err(ApiError::Precondition {
                message: format!("insufficient stock for {}", skus.join(", ")),
                violations: short,
            });
        }

        let mut lines = Vec::with_capacity(products.len());
        for (sku, available, currency_code, unit_price_minor) in products {
            let quantity = request.lines[&sku];
            sqlx::query(
                "UPDATE products SET available = available - $2, reserved = reserved + $2, updated_at = now()
                 WHERE sku = $1",
            )
            .bind(&sku)
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO reservation_lines (order_id, sku, quantity, currency_code, unit_price_minor)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&request.order_id)
            .bind(&sku)
            .bind(quantity)
            .bind(&currency_code)
            .bind(unit_price_minor)
            .execute(&mut *tx)
            .await?;
            events::stock_level_changed(
                &mut tx,
                &sku,
                available,
                available - quantity,
                self.low_threshold,
            )
            .await?;
            lines.push(ReservationLine {
                sku,
                quantity,
                currency_code,
                unit_price_minor,
            });
        }
        let reservation = Reservation {
            order_id: request.order_id.clone(),
            status: ReservationStatus::Held,
            expires_at,
            lines,
        };
        events::stock_reserved(&mut tx, &reservation).await?;
        tx.commit().await?;
        self.moved(&reservation);
        Ok(reservation)
    }

    /// Returns a held reservation's stock. Idempotent; a committed reservation is refused.
    pub async fn release(&self, order_id: &str) -> Result<Reservation, ApiError> {
        self.transition(order_id, ReservationStatus::Released).await
    }

    /// Turns held stock into sold stock. Idempotent; a released or expired one is refused.
    pub async fn commit(&self, order_id: &str) -> Result<Reservation, ApiError> {
        self.transition(order_id, ReservationStatus::Committed)
            .await
    }

    /// Gives back what an order took: releases a held reservation, returns committed stock.
    #[tracing::instrument(name = "db reservations.give_back", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "reservations", db.operation.name = "give_back"))]
    pub async fn give_back(&self, conn: &mut PgConnection, order_id: &str) -> Result<(), ApiError> {
        let Some(r) = lock(conn, order_id).await? else {
            return Ok(());
        };
        match r.status {
            ReservationStatus::Held => self
                .apply(conn, r, ReservationStatus::Released)
                .await
                .map(|_| ()),
            ReservationStatus::Committed => self
                .apply(conn, r, ReservationStatus::Returned)
                .await
                .map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Commits inside the caller's transaction (the order-event consumer's).
    #[tracing::instrument(name = "db reservations.commit_in", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "reservations", db.operation.name = "commit_in"))]
    pub async fn commit_in(&self, conn: &mut PgConnection, order_id: &str) -> Result<(), ApiError> {
        let r = lock(conn, order_id)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                resource: "reservation for order",
                id: order_id.to_owned(),
            })?;
        match r.status {
            ReservationStatus::Held => self
                .apply(conn, r, ReservationStatus::Committed)
                .await
                .map(|_| ()),
            ReservationStatus::Committed | ReservationStatus::Returned => Ok(()),
            ReservationStatus::Released | ReservationStatus::Expired => self.reclaim(conn, r).await,
        }
    }

    /// A confirmed order whose hold lapsed (its commit arrived after the expiry):
    /// takes the stock again if it is still there, straight into sold; otherwise
    /// refuses, so the event is dead-lettered and someone looks at it.
    async fn reclaim(&self, conn: &mut PgConnection, mut r: Reservation) -> Result<(), ApiError> {
        let skus: Vec<String> = r.lines.iter().map(|l| l.sku.clone()).collect();
        let available: Vec<(String, i64)> = sqlx::query_as(
            "SELECT sku, available FROM products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        )
        .bind(&skus)
        .fetch_all(&mut *conn)
        .await?;
        let short: Vec<&str> = r
            .lines
            .iter()
            .filter(|l| {
                !available
                    .iter()
                    .any(|(sku, a)| *sku == l.sku && *a >= l.quantity)
            })
            .map(|l| l.sku.as_str())
            .collect();
        if !short.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "reservation for order {} was {} before the order was confirmed, and {} no longer has the stock",
                r.order_id,
                r.status.as_db(),
                short.join(", ")
            )));
        }
        for line in &r.lines {
            let (before, after): (i64, i64) = sqlx::query_as(
                "UPDATE products SET available = available - $2, sold = sold + $2, updated_at = now()
                 WHERE sku = $1 RETURNING available + $2, available",
            )
            .bind(&line.sku)
            .bind(line.quantity)
            .fetch_one(&mut *conn)
            .await?;
            events::stock_level_changed(conn, &line.sku, before, after, self.low_threshold).await?;
        }
        sqlx::query(
            "UPDATE reservations SET status = 'committed', updated_at = now() WHERE order_id = $1",
        )
        .bind(&r.order_id)
        .execute(&mut *conn)
        .await?;
        tracing::warn!(order_id = %r.order_id, "lapsed reservation taken again for a confirmed order");
        r.status = ReservationStatus::Committed;
        events::reservation_moved(conn, &r).await?;
        Ok(())
    }

    #[tracing::instrument(name = "db reservations.transition", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "reservations", db.operation.name = "transition"))]
    async fn transition(
        &self,
        order_id: &str,
        to: ReservationStatus,
    ) -> Result<Reservation, ApiError> {
        let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
        let r = lock(&mut tx, order_id)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                resource: "reservation for order",
                id: order_id.to_owned(),
            })?;
        let result = match (r.status, to) {
            (ReservationStatus::Held, _) => self.apply(&mut tx, r, to).await?,
            (from, to) if from == to => return Ok(r),
            (
                ReservationStatus::Expired | ReservationStatus::Returned,
                ReservationStatus::Released,
            ) => return Ok(r),
            (from, _) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "reservation for order {order_id} is {}",
                    from.as_db()
                )));
            }
        };
        tx.commit().await?;
        self.moved(&result);
        Ok(result)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        mut r: Reservation,
        to: ReservationStatus,
    ) -> Result<Reservation, ApiError> {
        move_stock(conn, &r.lines, r.status, to, self.low_threshold).await?;
        sqlx::query("UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1")
            .bind(&r.order_id)
            .bind(to.as_db())
            .execute(&mut *conn)
            .await?;
        r.status = to;
        events::reservation_moved(conn, &r).await?;
        Ok(r)
    }

    /// Expires held reservations past their time; returns how many. Rows another
    /// replica is working on are skipped.
    pub async fn expire_due(&self, limit: i64) -> Result<usize, ApiError> {
        // One reservation per transaction: its products are locked in SKU order like
        // every other path, so expiry never deadlocks with reservations or commits.
        let mut expired = 0;
        while expired < limit {
            let mut tx = shop_platform::db::begin_bounded(&self.pool).await?;
            let due: Option<String> = sqlx::query_scalar(
                "SELECT order_id FROM reservations WHERE status = 'held' AND expires_at <= now()
                 ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some(order_id) = due else {
                break;
            };
            // This transaction holds the row it just selected, so it is there.
            let Some(r) = lock(&mut tx, &order_id).await? else {
                break;
            };
            tracing::warn!(order_id = %order_id, "reservation expired");
            let r = self.apply(&mut tx, r, ReservationStatus::Expired).await?;
            tx.commit().await?;
            self.moved(&r);
            expired += 1;
        }
        Ok(expired as usize)
    }

    /// Runs `expire_due` every `every` until shutdown.
    pub async fn run_expiry(self, every: Duration, shutdown: shop_platform::Shutdown) {
        loop {
            match self.expire_due(100).await {
                Ok(100) => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "reservation expiry failed"),
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
