//! Reservations: stock held for an order, all lines or none, keyed by order id.
//! Products are always locked in SKU order after the reservation row, so
//! concurrent reservations never deadlock and never oversell, whatever the number
//! of replicas (the database does the locking, not the process).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::error::PreconditionViolation;
use shop_platform::outbox::{self, OutboxSignal};
use shop_platform::pagination::timestamp;
use shop_proto::common::Money;
use shop_proto::inventory as pb;
use sqlx::{PgConnection, PgPool};

use crate::catalog::{INVENTORY_EVENTS_TOPIC, note_stock_level, parse_sku};

pub const MAX_LINES: usize = 100;
const MAX_QUANTITY: i64 = 1_000_000;

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

#[derive(sqlx::FromRow)]
struct LineRow {
    sku: String,
    quantity: i64,
    currency_code: String,
    unit_price_minor: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Held,
    Committed,
    Released,
    Expired,
    Returned,
}

impl Status {
    fn from_db(s: &str) -> Self {
        match s {
            "committed" => Self::Committed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            "returned" => Self::Returned,
            _ => Self::Held,
        }
    }

    fn as_db(self) -> &'static str {
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

/// A reservation as stored, locked for the current transaction.
struct Locked {
    order_id: String,
    status: Status,
    expires_at: DateTime<Utc>,
    lines: Vec<LineRow>,
}

impl Locked {
    fn to_proto(&self) -> pb::Reservation {
        pb::Reservation {
            order_id: self.order_id.clone(),
            lines: proto_lines(&self.lines),
            status: self.status.to_proto() as i32,
            expire_time: Some(timestamp(self.expires_at)),
        }
    }
}

fn proto_lines(lines: &[LineRow]) -> Vec<pb::ReservationLine> {
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

async fn lock(conn: &mut PgConnection, order_id: &str) -> Result<Option<Locked>, sqlx::Error> {
    let Some((status, expires_at)): Option<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT status, expires_at FROM reservations WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let lines = sqlx::query_as::<_, LineRow>(
        "SELECT sku, quantity, currency_code, unit_price_minor FROM reservation_lines
         WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(Locked {
        order_id: order_id.to_owned(),
        status: Status::from_db(&status),
        expires_at,
        lines,
    }))
}

/// Moves a held reservation's stock: `available += q, reserved -= q` (back) or
/// `reserved -= q, sold += q` (commit); a committed one's `sold -= q, available += q` (return).
async fn move_stock(
    conn: &mut PgConnection,
    lines: &[LineRow],
    from: Status,
    to: Status,
    low_threshold: i64,
) -> Result<(), sqlx::Error> {
    let sql = match (from, to) {
        (Status::Held, Status::Committed) => {
            "UPDATE products SET reserved = reserved - $2, sold = sold + $2, updated_at = now()
             WHERE sku = $1 RETURNING available, available"
        }
        (Status::Held, _) => {
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
        note_stock_level(conn, &line.sku, before, after, low_threshold).await?;
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Reservations {
    pool: PgPool,
    outbox: OutboxSignal,
    ttl: Duration,
    low_threshold: i64,
}

impl Reservations {
    /// Holds in `pool` that expire after `ttl` unless committed; see `Catalog::new`
    /// for the rest.
    pub fn new(pool: PgPool, outbox: OutboxSignal, ttl: Duration, low_threshold: i64) -> Self {
        Self {
            pool,
            outbox,
            ttl,
            low_threshold,
        }
    }

    /// Holds stock for every line or none. A retry with the same lines returns the
    /// same reservation; different lines for the same order are refused.
    #[tracing::instrument(name = "db reservations.reserve", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "reservations", db.operation.name = "reserve"))]
    pub async fn reserve(&self, request: ReservationRequest) -> Result<pb::Reservation, ApiError> {
        let mut tx = self.pool.begin().await?;
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
            let same: BTreeMap<String, i64> = existing
                .lines
                .iter()
                .map(|l| (l.sku.clone(), l.quantity))
                .collect();
            if same != request.lines {
                return Err(ApiError::AlreadyExists {
                    resource: "reservation with different lines for order",
                    id: request.order_id,
                });
            }
            return Ok(existing.to_proto());
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
            note_stock_level(
                &mut tx,
                &sku,
                available,
                available - quantity,
                self.low_threshold,
            )
            .await?;
            lines.push(LineRow {
                sku,
                quantity,
                currency_code,
                unit_price_minor,
            });
        }
        let reservation = Locked {
            order_id: request.order_id.clone(),
            status: Status::Held,
            expires_at,
            lines,
        };
        let event = pb::StockReserved {
            order_id: request.order_id.clone(),
            lines: proto_lines(&reservation.lines),
            expire_time: Some(timestamp(expires_at)),
        };
        outbox::enqueue(&mut tx, INVENTORY_EVENTS_TOPIC, &request.order_id, &event).await?;
        tx.commit().await?;
        self.outbox.notify();
        Ok(reservation.to_proto())
    }

    /// Returns a held reservation's stock. Idempotent; a committed reservation is refused.
    pub async fn release(&self, order_id: &str) -> Result<pb::Reservation, ApiError> {
        self.transition(order_id, Status::Released).await
    }

    /// Turns held stock into sold stock. Idempotent; a released or expired one is refused.
    pub async fn commit(&self, order_id: &str) -> Result<pb::Reservation, ApiError> {
        self.transition(order_id, Status::Committed).await
    }

    /// Gives back what an order took: releases a held reservation, returns committed stock.
    #[tracing::instrument(name = "db reservations.give_back", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "reservations", db.operation.name = "give_back"))]
    pub async fn give_back(&self, conn: &mut PgConnection, order_id: &str) -> Result<(), ApiError> {
        let Some(r) = lock(conn, order_id).await? else {
            return Ok(());
        };
        match r.status {
            Status::Held => self.apply(conn, r, Status::Released).await.map(|_| ()),
            Status::Committed => self.apply(conn, r, Status::Returned).await.map(|_| ()),
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
            Status::Held => self.apply(conn, r, Status::Committed).await.map(|_| ()),
            Status::Committed | Status::Returned => Ok(()),
            Status::Released | Status::Expired => self.reclaim(conn, r).await,
        }
    }

    /// A confirmed order whose hold lapsed (its commit arrived after the expiry):
    /// takes the stock again if it is still there, straight into sold; otherwise
    /// refuses, so the event is dead-lettered and someone looks at it.
    async fn reclaim(&self, conn: &mut PgConnection, mut r: Locked) -> Result<(), ApiError> {
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
            note_stock_level(conn, &line.sku, before, after, self.low_threshold).await?;
        }
        sqlx::query(
            "UPDATE reservations SET status = 'committed', updated_at = now() WHERE order_id = $1",
        )
        .bind(&r.order_id)
        .execute(&mut *conn)
        .await?;
        tracing::warn!(order_id = %r.order_id, "lapsed reservation taken again for a confirmed order");
        r.status = Status::Committed;
        let e = pb::ReservationCommitted {
            order_id: r.order_id.clone(),
            lines: proto_lines(&r.lines),
        };
        outbox::enqueue(conn, INVENTORY_EVENTS_TOPIC, &r.order_id, &e).await?;
        Ok(())
    }

    #[tracing::instrument(name = "db reservations.transition", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.collection.name = "reservations", db.operation.name = "transition"))]
    async fn transition(&self, order_id: &str, to: Status) -> Result<pb::Reservation, ApiError> {
        let mut tx = self.pool.begin().await?;
        let r = lock(&mut tx, order_id)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                resource: "reservation for order",
                id: order_id.to_owned(),
            })?;
        let result = match (r.status, to) {
            (Status::Held, _) => self.apply(&mut tx, r, to).await?,
            (from, to) if from == to => return Ok(r.to_proto()),
            (Status::Expired | Status::Returned, Status::Released) => return Ok(r.to_proto()),
            (from, _) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "reservation for order {order_id} is {}",
                    from.as_db()
                )));
            }
        };
        tx.commit().await?;
        self.outbox.notify();
        Ok(result)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        mut r: Locked,
        to: Status,
    ) -> Result<pb::Reservation, ApiError> {
        move_stock(conn, &r.lines, r.status, to, self.low_threshold).await?;
        sqlx::query("UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1")
            .bind(&r.order_id)
            .bind(to.as_db())
            .execute(&mut *conn)
            .await?;
        r.status = to;
        let lines = proto_lines(&r.lines);
        let order_id = r.order_id.clone();
        match to {
            Status::Committed => {
                let e = pb::ReservationCommitted { order_id, lines };
                outbox::enqueue(conn, INVENTORY_EVENTS_TOPIC, &r.order_id, &e).await?;
            }
            Status::Expired => {
                let e = pb::ReservationExpired { order_id, lines };
                outbox::enqueue(conn, INVENTORY_EVENTS_TOPIC, &r.order_id, &e).await?;
            }
            _ => {
                let e = pb::StockReleased { order_id, lines };
                outbox::enqueue(conn, INVENTORY_EVENTS_TOPIC, &r.order_id, &e).await?;
            }
        }
        Ok(r.to_proto())
    }

    /// Expires held reservations past their time; returns how many. Rows another
    /// replica is working on are skipped.
    pub async fn expire_due(&self, limit: i64) -> Result<usize, ApiError> {
        // One reservation per transaction: its products are locked in SKU order like
        // every other path, so expiry never deadlocks with reservations or commits.
        let mut expired = 0;
        while expired < limit {
            let mut tx = self.pool.begin().await?;
            let due: Option<String> = sqlx::query_scalar(
                "SELECT order_id FROM reservations WHERE status = 'held' AND expires_at <= now()
                 ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some(order_id) = due else {
                break;
            };
            if let Some(r) = lock(&mut tx, &order_id).await? {
                tracing::warn!(order_id = %order_id, "reservation expired");
                self.apply(&mut tx, r, Status::Expired).await?;
            }
            tx.commit().await?;
            self.outbox.notify();
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
