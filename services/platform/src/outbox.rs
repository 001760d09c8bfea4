//! The transactional outbox: an event row is written in the same transaction as
//! the state change; the relay publishes unpublished rows in order with an
//! idempotent producer and stamps them only after the broker acknowledged them.
//! One relay publishes at a time per database (an advisory lock), so several
//! replicas keep per-key order. A commit with events wakes the relay of its own
//! process at once (`OutboxSignal`) and, through PostgreSQL's NOTIFY, the relays
//! of every other copy: the one holding the lock publishes without waiting for
//! its next poll.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use prost::Name;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::backoff::{Backoff, MAX_BACKOFF};
use crate::db;
use crate::event_signature::{EventSigner, SignedFields};
use crate::kafka::{
    self, CONTENT_TYPE_PROTOBUF, HEADER_CONTENT_TYPE, HEADER_EVENT_ID, HEADER_EVENT_TYPE,
    HEADER_SOURCE, HEADER_SPEC_VERSION, HEADER_TIME,
};
use crate::shutdown::Shutdown;
use crate::telemetry;

/// Advisory lock key held by the publishing relay ("outbox" in ASCII).
const RELAY_LOCK: i64 = 0x6f75_7462_6f78;

/// The channel a transaction that wrote events notifies on commit.
const WAKE_CHANNEL: &str = "shop_outbox";

/// Wakes the relay right after a transaction with events commits, so events do not
/// wait for the next poll.
#[derive(Clone, Debug, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

/// Writes `event` to the outbox inside the caller's transaction, with the current
/// trace context. Returns the event id.
pub async fn enqueue<M: Name>(
    conn: &mut PgConnection,
    topic: &str,
    key: &str,
    event: &M,
) -> Result<Uuid, sqlx::Error> {
    let event_id = Uuid::now_v7();
    let trace = serde_json::to_value(telemetry::current_trace_headers()).unwrap_or_default();
    // The notification goes out when (and only if) the transaction commits, and
    // PostgreSQL folds a transaction's identical notifications into one.
    sqlx::query(
        "WITH written AS (
             INSERT INTO outbox_events (event_id, topic, event_key, event_type, payload, trace_context)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING 1)
         SELECT pg_notify($7, '') FROM written",
    )
    .bind(event_id)
    .bind(topic)
    .bind(key)
    .bind(M::full_name())
    .bind(event.encode_to_vec())
    .bind(trace)
    .bind(WAKE_CHANNEL)
    .execute(conn)
    .await?;
    Ok(event_id)
}

/// Wakes `signal` whenever any copy commits events to `pool`'s outbox, until
/// shutdown. A lost connection also wakes it (notifications sent meanwhile are
/// gone, so the relay looks), and so does listening again.
pub async fn wake_on_commits(pool: PgPool, signal: OutboxSignal, shutdown: Shutdown) {
    db::follow_notifications(pool, WAKE_CHANNEL, shutdown, |_| {
        signal.notify();
        std::future::ready(())
    })
    .await;
}

#[derive(sqlx::FromRow)]
struct PendingEvent {
    id: i64,
    event_id: Uuid,
    topic: String,
    event_key: String,
    event_type: String,
    payload: Vec<u8>,
    trace_context: sqlx::types::Json<std::collections::HashMap<String, String>>,
    created_at: chrono::DateTime<Utc>,
}

/// Publishes the outbox until shutdown.
pub struct OutboxRelay {
    pool: PgPool,
    producer: FutureProducer,
    signal: OutboxSignal,
    source: String,
    signer: EventSigner,
    batch_size: i64,
    poll: Duration,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("source", &self.source)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    /// Publishes `pool`'s outbox as `source`, each event signed by `signer`.
    pub fn new(
        pool: PgPool,
        producer: FutureProducer,
        signal: OutboxSignal,
        source: &str,
        signer: EventSigner,
    ) -> Self {
        Self {
            pool,
            producer,
            signal,
            source: source.into(),
            signer,
            batch_size: 256,
            poll: Duration::from_millis(250),
        }
    }

    /// Events per batch, and how often to look when no commit has woken the relay.
    pub fn batching(mut self, batch_size: i64, poll: Duration) -> Self {
        self.batch_size = batch_size;
        self.poll = poll;
        self
    }

    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        loop {
            let outcome = tokio::select! {
                _ = shutdown.wait() => break,
                r = self.publish_batch() => r,
            };
            match outcome {
                Ok(n) if n as i64 == self.batch_size => continue,
                Ok(_) => {
                    backoff.reset();
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = self.signal.0.notified() => {}
                        _ = tokio::time::sleep(self.poll) => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.current().as_millis() as u64, "outbox relay failed");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        // Deliver what is already handed to the producer; what is not stamped is
        // published again after a restart (consumers drop the duplicate by event id).
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(error = %err, "producer flush at shutdown failed");
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publishes one batch; returns how many events were stamped.
    async fn publish_batch(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let events: Vec<PendingEvent> = sqlx::query_as(
            "SELECT id, event_id, topic, event_key, event_type, payload, trace_context, created_at
             FROM outbox_events WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if events.is_empty() {
            return Ok(0);
        }

        let deliveries = join_all(events.iter().map(|e| self.publish(e))).await;
        // Only the unbroken run of successes in id order is stamped: after a failure,
        // later events (perhaps of the same aggregate) go again, so consumers never
        // see them out of order; the repeats are dropped by their inbox.
        let mut published = Vec::new();
        for (event, result) in events.iter().zip(deliveries) {
            match result {
                Ok(()) => published.push(event.id),
                Err(error) => {
                    tracing::warn!(event_id = %event.event_id, %error, "event not published");
                    sqlx::query("UPDATE outbox_events SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
                        .bind(event.id)
                        .bind(&error)
                        .execute(&mut *tx)
                        .await?;
                    break;
                }
            }
        }
        for event in events.iter().take(published.len()) {
            let labels = crate::metrics::TopicLabels {
                topic: event.topic.clone(),
            };
            crate::metrics::metrics()
                .outbox_published
                .get_or_create(&labels)
                .inc();
        }
        // The moment of the stamp, after the broker's acknowledgement (now() would
        // be when this transaction began, before the batch was sent).
        sqlx::query("UPDATE outbox_events SET published_at = clock_timestamp(), attempts = attempts + 1 WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(published.len())
    }

    async fn publish(&self, event: &PendingEvent) -> Result<(), String> {
        let span = tracing::info_span!(
            "outbox.publish",
            otel.name = %format!("{} publish", event.topic),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = %event.topic,
            messaging.message.id = %event.event_id,
        );
        let _ = span.set_parent(telemetry::context_from_headers(&event.trace_context.0));
        async {
            let trace = telemetry::current_trace_headers();
            let event_id = event.event_id.to_string();
            let time = event.created_at.to_rfc3339();
            let signature = self.signer.sign(&SignedFields {
                topic: &event.topic,
                key: &event.event_key,
                event_id: &event_id,
                event_type: &event.event_type,
                source: &self.source,
                payload: &event.payload,
            });
            let mut pairs = vec![
                (HEADER_EVENT_ID, event_id.as_str()),
                (HEADER_EVENT_TYPE, event.event_type.as_str()),
                (HEADER_SOURCE, self.source.as_str()),
                (HEADER_SPEC_VERSION, "1.0"),
                (HEADER_TIME, time.as_str()),
                (HEADER_CONTENT_TYPE, CONTENT_TYPE_PROTOBUF),
            ];
            pairs.extend(signature.iter().map(|(k, v)| (*k, v.as_str())));
            pairs.extend(trace.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let record = FutureRecord::to(&event.topic)
                .key(&event.event_key)
                .payload(&event.payload)
                .headers(kafka::headers(pairs));
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| e.to_string())?;
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((err, _))) => Err(err.to_string()),
                Err(_) => Err("producer dropped the delivery report".into()),
            }
        }
        .instrument(span)
        .await
    }
}

/// Seconds since the oldest unpublished event was written (0 when none).
pub async fn oldest_unsent_age(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
         FROM outbox_events WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// Events written but not yet published.
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}
