//! The idempotent consumer: each event's effect and its id in the inbox table are
//! written in one transaction, offsets are committed only after that, and an event
//! that cannot be processed goes to a dead-letter topic with the error instead of
//! blocking its partition. A database outage is retried, never dead-lettered.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::ServiceSettings;
use crate::event_signature::{EventVerifier, SignedFields};

use crate::backoff::{Backoff, MAX_BACKOFF};
use crate::kafka::{self, GroupConsumer, HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_SOURCE};
use crate::shutdown::Shutdown;
use crate::telemetry;

/// Every few seconds: how far each assigned partition's committed position is
/// behind its high watermark.
async fn report_lag(consumer: std::sync::Arc<GroupConsumer>, name: String, shutdown: Shutdown) {
    let mut reported = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let consumer = consumer.clone();
        let lags = tokio::task::spawn_blocking(move || {
            let Ok(positions) = consumer.position() else {
                return Vec::new();
            };
            positions
                .elements()
                .iter()
                .filter_map(|p| {
                    let (_, high) = consumer
                        .fetch_watermarks(p.topic(), p.partition(), Duration::from_secs(1))
                        .ok()?;
                    let position = p.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0);
                    Some((
                        p.topic().to_owned(),
                        p.partition(),
                        (high - position).max(0),
                    ))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let family = &crate::metrics::metrics().consumer_lag;
        let mut now_held = std::collections::HashSet::new();
        for (topic, partition, lag) in lags {
            let labels = crate::metrics::LagLabels {
                consumer: name.clone(),
                topic,
                partition,
            };
            family.get_or_create(&labels).set(lag);
            now_held.insert(labels);
        }
        // A partition that a rebalance gave to another copy is that copy's to report:
        // a value left here would stay frozen at whatever it was.
        for gone in reported.difference(&now_held) {
            family.remove(gone);
        }
        reported = now_held;
    }
}

/// One event as a handler sees it.
#[derive(Debug, Clone)]
pub struct InboundEvent {
    pub event_id: String,
    pub event_type: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub headers: HashMap<String, String>,
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event itself is bad (undecodable, violates the contract): retried a few
    /// times, then dead-lettered.
    #[error("{0}")]
    Rejected(String),
    /// The database failed: retried until it answers.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A dependency is unavailable: retried until it answers.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Applies events inside the consumer's transaction.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(
        &self,
        conn: &mut PgConnection,
        event: &InboundEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Consumes one topic with a handler until shutdown.
pub struct InboxConsumer<H> {
    name: String,
    topic: String,
    pool: PgPool,
    consumer: std::sync::Arc<GroupConsumer>,
    dead_letters: FutureProducer,
    /// The topic owner's keys: an event that does not verify is dead-lettered unapplied.
    owner: EventVerifier,
    handler: H,
    max_attempts: u32,
}

impl<H> std::fmt::Debug for InboxConsumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumer")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

use crate::metrics::ConsumerOutcome as Outcome;

impl<H: EventHandler> InboxConsumer<H> {
    /// `name` identifies the consumer in the inbox table and the dead-letter topic's
    /// name; `settings` give the brokers, the group and the session timeout; only
    /// events signed by one of `owner`'s keys reach `handler`.
    pub fn new(
        name: &str,
        topic: &str,
        pool: PgPool,
        settings: &ServiceSettings,
        owner: EventVerifier,
        handler: H,
    ) -> anyhow::Result<Self> {
        let connection = kafka::KafkaConnection::from_settings(settings)?;
        let consumer = kafka::consumer(
            &connection,
            &settings.kafka_group_id,
            Duration::from_millis(settings.kafka_session_timeout_ms),
        )?;
        consumer.subscribe(&[topic])?;
        Ok(Self {
            name: name.into(),
            topic: topic.into(),
            pool,
            consumer: std::sync::Arc::new(consumer),
            dead_letters: kafka::producer(&connection, settings.kafka_one_record_per_batch)?,
            owner,
            handler,
            max_attempts: 3,
        })
    }

    pub async fn run(self, shutdown: Shutdown) {
        tokio::spawn(report_lag(
            self.consumer.clone(),
            self.name.clone(),
            shutdown.clone(),
        ));
        loop {
            let message = tokio::select! {
                _ = shutdown.wait() => break,
                m = self.consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(err) => {
                    tracing::warn!(consumer = %self.name, error = %err, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Some(outcome) = self.process(&message, &shutdown).await else {
                break; // shutdown mid-retry: the offset stays uncommitted
            };
            if outcome == Outcome::Duplicate {
                tracing::debug!(consumer = %self.name, "duplicate event skipped");
            }
            // The subscribed topic, not the message's: labels never come from input.
            let labels = crate::metrics::ConsumerEventLabels {
                consumer: self.name.clone(),
                topic: self.topic.clone(),
                outcome,
            };
            crate::metrics::metrics()
                .consumer_events
                .get_or_create(&labels)
                .inc();
            if let Err(err) = self.consumer.commit_message(&message, CommitMode::Async) {
                tracing::warn!(consumer = %self.name, error = %err, "offset commit failed");
            }
        }
        tracing::info!(consumer = %self.name, "consumer stopped");
    }

    async fn process(&self, message: &BorrowedMessage<'_>, shutdown: &Shutdown) -> Option<Outcome> {
        let headers = kafka::header_map(message.headers());
        let event = InboundEvent {
            event_id: headers.get(HEADER_EVENT_ID).cloned().unwrap_or_default(),
            event_type: headers.get(HEADER_EVENT_TYPE).cloned().unwrap_or_default(),
            key: message
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(str::to_owned),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            headers,
        };
        let span = tracing::info_span!(
            "inbox.process",
            otel.name = %format!("{} process", event.topic),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = %event.topic,
            messaging.consumer.group.name = %self.name,
            messaging.message.id = %event.event_id,
            messaging.kafka.offset = event.offset,
        );
        // Link to the producer's span rather than parent under it, as the messaging
        // conventions advise for asynchronous hand-offs.
        let producer_cx = telemetry::context_from_headers(&event.headers);
        {
            use opentelemetry::trace::TraceContextExt;
            let sc = producer_cx.span().span_context().clone();
            if sc.is_valid() {
                span.add_link(sc);
            }
        }
        self.process_event(&event, shutdown).instrument(span).await
    }

    async fn process_event(&self, event: &InboundEvent, shutdown: &Shutdown) -> Option<Outcome> {
        if event.event_id.is_empty() {
            self.dead_letter(
                event,
                &format!("missing {HEADER_EVENT_ID} header"),
                shutdown,
            )
            .await?;
            return Some(Outcome::DeadLettered);
        }
        // Before the inbox sees it: a forged event must not even claim its id.
        let signed = SignedFields {
            topic: &event.topic,
            key: event.key.as_deref().unwrap_or_default(),
            event_id: &event.event_id,
            event_type: &event.event_type,
            source: event.headers.get(HEADER_SOURCE).map_or("", String::as_str),
            payload: &event.payload,
        };
        if let Err(unverified) = self.owner.verify(&signed, &event.headers) {
            self.dead_letter(event, &unverified.to_string(), shutdown)
                .await?;
            return Some(Outcome::DeadLettered);
        }
        let mut attempt = 0;
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        loop {
            match self.apply(event).await {
                Ok(true) => return Some(Outcome::Applied),
                Ok(false) => return Some(Outcome::Duplicate),
                Err(HandlerError::Rejected(reason)) => {
                    attempt += 1;
                    if attempt >= self.max_attempts {
                        self.dead_letter(event, &reason, shutdown).await?;
                        return Some(Outcome::DeadLettered);
                    }
                    tracing::warn!(event_id = %event.event_id, attempt, %reason, "event rejected; retrying");
                }
                Err(HandlerError::Database(err)) if !crate::db::is_transient(&err) => {
                    // The statement itself failed (a constraint, bad data): as bad as a rejection.
                    attempt += 1;
                    if attempt >= self.max_attempts {
                        self.dead_letter(
                            event,
                            &format!("database refused the event: {err}"),
                            shutdown,
                        )
                        .await?;
                        return Some(Outcome::DeadLettered);
                    }
                    tracing::warn!(event_id = %event.event_id, attempt, error = %err, "event failed; retrying");
                }
                Err(err @ (HandlerError::Database(_) | HandlerError::Unavailable(_))) => {
                    tracing::warn!(event_id = %event.event_id, error = %err, "cannot apply event yet; retrying");
                }
            }
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }

    /// Records the event id and applies the handler in one transaction; false when
    /// the event was already processed.
    async fn apply(&self, event: &InboundEvent) -> Result<bool, HandlerError> {
        // Handlers update rows requests contend for (stock, a user's figures).
        let mut tx = crate::db::begin_bounded(&self.pool).await?;
        let inserted = sqlx::query(
            "INSERT INTO inbox_events (consumer, event_id, event_type, topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&self.name)
        .bind(&event.event_id)
        .bind(&event.event_type)
        .bind(&event.topic)
        .bind(event.partition)
        .bind(event.offset)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        self.handler.handle(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Publishes to the dead-letter topic, retrying until the broker takes it; None
    /// when shutdown came first (the offset then stays uncommitted).
    async fn dead_letter(
        &self,
        event: &InboundEvent,
        error: &str,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let topic = kafka::dead_letter_topic(&self.topic, &self.name);
        tracing::error!(event_id = %event.event_id, dlq = %topic, %error, "event dead-lettered");
        let partition = event.partition.to_string();
        let offset = event.offset.to_string();
        let mut pairs: Vec<(&str, &str)> = event
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.extend([
            ("dlq_error", error),
            ("dlq_consumer", self.name.as_str()),
            ("dlq_source_topic", event.topic.as_str()),
            ("dlq_source_partition", partition.as_str()),
            ("dlq_source_offset", offset.as_str()),
        ]);
        let mut backoff = Backoff::new(Duration::from_millis(200), MAX_BACKOFF);
        loop {
            let mut record = FutureRecord::to(&topic)
                .payload(&event.payload)
                .headers(kafka::headers(pairs.clone()));
            if let Some(key) = &event.key {
                record = record.key(key);
            }
            // The offset is committed only once the dead letter is stored: nothing is dropped.
            let sent = tokio::select! {
                _ = shutdown.wait() => return None,
                r = self.dead_letters.send(record, Duration::from_secs(30)) => r,
            };
            match sent {
                Ok(_) => return Some(()),
                Err((err, _)) => {
                    tracing::error!(event_id = %event.event_id, error = %err, "dead-letter publish failed; retrying");
                }
            }
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }
}
