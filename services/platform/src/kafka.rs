//! Kafka clients with the settings the outbox and the consumers rely on, topic
//! creation (brokers such as tansu do not auto-create topics), and the event
//! header names (CloudEvents' Kafka binding, plus W3C trace context).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::FutureProducer;

use crate::backoff::{Backoff, MAX_BACKOFF};
use crate::config::{ConfigError, ServiceSettings};
use crate::shutdown::Shutdown;

/// Header carrying the event id (unique per event, stable across redeliveries).
pub const HEADER_EVENT_ID: &str = "ce_id";
/// Header carrying the fully qualified protobuf message name, e.g. `shop.user.v1.UserRegistered`.
pub const HEADER_EVENT_TYPE: &str = "ce_type";
pub const HEADER_SOURCE: &str = "ce_source";
pub const HEADER_SPEC_VERSION: &str = "ce_specversion";
pub const HEADER_TIME: &str = "ce_time";
pub const HEADER_CONTENT_TYPE: &str = "content-type";
pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";

/// The dead-letter topic for messages `consumer` could not process from `topic`.
pub fn dead_letter_topic(topic: &str, consumer: &str) -> String {
    format!("{topic}.{consumer}.dlq")
}

/// How a client reaches the brokers: their addresses and, where the brokers ask
/// for them, TLS (the brokers' CA, this workload's certificate) and SASL
/// credentials; every producer, consumer and admin client is made from one.
#[derive(Clone)]
pub struct KafkaConnection {
    brokers: String,
    /// librdkafka properties beyond `bootstrap.servers`.
    security: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .security
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    if *k == "sasl.password" {
                        "[redacted]"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConnection")
            .field("brokers", &self.brokers)
            .field("security", &shown)
            .finish()
    }
}

impl KafkaConnection {
    /// Plaintext to `brokers`, with no credentials.
    pub fn plaintext(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            security: Vec::new(),
        }
    }

    /// From `KAFKA_BROKERS` and the `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SSL_*` and
    /// `KAFKA_SASL_*` settings; a setting the protocol needs and lacks is named.
    pub fn from_settings(settings: &ServiceSettings) -> Result<Self, ConfigError> {
        let protocol = settings.kafka_security_protocol.trim().to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" | "" => (false, false),
            "ssl" => (true, false),
            "sasl_ssl" => (true, true),
            "sasl_plaintext" => (false, true),
            other => {
                return Err(ConfigError::missing(
                    "KAFKA_SECURITY_PROTOCOL",
                    &format!("'{other}' is none of plaintext, ssl, sasl_ssl, sasl_plaintext"),
                ));
            }
        };
        let mut security = Vec::new();
        if protocol.as_str() != "" {
            security.push(("security.protocol", protocol.clone()));
        }
        if tls {
            let or = |own: &str, workload: &str| {
                if own.is_empty() {
                    workload.to_owned()
                } else {
                    own.to_owned()
                }
            };
            let ca = or(&settings.kafka_ssl_ca_file, &settings.tls_ca_file);
            let cert = or(&settings.kafka_ssl_cert_file, &settings.tls_cert_file);
            let key = or(&settings.kafka_ssl_key_file, &settings.tls_key_file);
            for (name, path) in [
                ("KAFKA_SSL_CA_FILE", &ca),
                ("KAFKA_SSL_CERT_FILE", &cert),
                ("KAFKA_SSL_KEY_FILE", &key),
            ] {
                if !path.is_empty() && !std::path::Path::new(path).is_file() {
                    return Err(ConfigError::missing(name, &format!("no such file: {path}")));
                }
            }
            if cert.is_empty() != key.is_empty() {
                return Err(ConfigError::missing(
                    "KAFKA_SSL_CERT_FILE",
                    "a client certificate and its key go together (KAFKA_SSL_KEY_FILE)",
                ));
            }
            // The brokers' names are checked against their certificates.
            security.push(("ssl.endpoint.identification.algorithm", "https".into()));
            if !ca.is_empty() {
                security.push(("ssl.ca.location", ca));
            }
            if !cert.is_empty() {
                security.push(("ssl.certificate.location", cert));
                security.push(("ssl.key.location", key));
            }
        }
        if sasl {
            let mechanism = settings.kafka_sasl_mechanism.trim().to_ascii_uppercase();
            if !matches!(
                mechanism.as_str(),
                "SCRAM-SHA-512" | "SCRAM-SHA-256" | "PLAIN"
            ) {
                return Err(ConfigError::missing(
                    "KAFKA_SASL_MECHANISM",
                    "must be SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN with a sasl_* protocol",
                ));
            }
            if settings.kafka_sasl_username.is_empty() || settings.kafka_sasl_password.is_empty() {
                return Err(ConfigError::missing(
                    "KAFKA_SASL_USERNAME",
                    "and KAFKA_SASL_PASSWORD must be set with a sasl_* protocol",
                ));
            }
            security.push(("sasl.mechanism", mechanism));
            security.push(("sasl.username", settings.kafka_sasl_username.clone()));
            security.push((
                "sasl.password",
                settings.kafka_sasl_password.expose().to_owned(),
            ));
        }
        Ok(Self {
            brokers: settings.kafka_brokers.clone(),
            security,
        })
    }

    /// A client configuration with the brokers and the security settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.security {
            config.set(*key, value);
        }
        config
    }
}

/// An idempotent producer (acks=all) that keeps retrying while the broker is away,
/// so that an outage delays events instead of duplicating them. Records are
/// batched as librdkafka does by default, unless `one_record_per_batch`
/// (`KAFKA_ONE_RECORD_PER_BATCH`, ADR 0006): the test broker's workaround.
pub fn producer(
    connection: &KafkaConnection,
    one_record_per_batch: bool,
) -> anyhow::Result<FutureProducer> {
    let mut config = connection.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5");
    if one_record_per_batch {
        // tansu 0.6 answers a fetch from inside a batch with the next batch, so a
        // consumer that stopped mid-batch would skip the rest of it. Real Kafka does
        // not need this.
        config
            .set("batch.num.messages", "1")
            .set("compression.type", "none");
    }
    config
        .create()
        .context("KAFKA_BROKERS: cannot create a producer")
}

/// A group member whose leaving never holds up the async runtime.
///
/// Dropping an rdkafka consumer leaves the group and then polls until librdkafka
/// says it is closed, with no bound (rust-rdkafka#509): with the broker gone that
/// can spin forever on the thread that dropped it, and a task dropped at shutdown
/// would take a runtime thread with it. The close runs on a thread of its own
/// instead; one still running when the process exits ends with it, and the group
/// drops the member after its session timeout, as after a crash.
pub struct GroupConsumer(Option<StreamConsumer>);

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer").finish_non_exhaustive()
    }
}

impl std::ops::Deref for GroupConsumer {
    type Target = StreamConsumer;

    fn deref(&self) -> &StreamConsumer {
        // Only `drop` takes the consumer out.
        self.0
            .as_ref()
            .expect("a group consumer is present until dropped")
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        // Should the thread not start, the closure (and the consumer) drops here.
        let _ = std::thread::Builder::new()
            .name("kafka-consumer-close".into())
            .spawn(move || drop(consumer));
    }
}

/// A consumer in `group` that commits offsets only when told (after processing).
pub fn consumer(
    connection: &KafkaConnection,
    group: &str,
    session_timeout: Duration,
) -> anyhow::Result<GroupConsumer> {
    connection
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Outlives a broker outage of tens of seconds without a rebalance: a rejoin while
        // the broker is unresponsive can leave a phantom member leading the group on
        // tansu 0.6, which then never assigns partitions again (make chaos found it).
        // A crashed member's partitions move after this long (30 s by default).
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        // Long-polling fetches otherwise wait up to 500 ms for more data; events should
        // arrive in milliseconds (make bench, section 4).
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        .create()
        .map(|consumer| GroupConsumer(Some(consumer)))
        .context("KAFKA_BROKERS: cannot create a consumer")
}

/// Creates the topics that do not exist yet, retrying until the broker answers or
/// shutdown starts.
pub async fn ensure_topics(
    connection: &KafkaConnection,
    topics: &[String],
    partitions: i32,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = connection
        .client_config()
        .create()
        .context("KAFKA_BROKERS: cannot create an admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    loop {
        match admin.create_topics(&new_topics, &options).await {
            Ok(results) => {
                let mut failed = Vec::new();
                for result in results {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => failed.push(format!("{topic}: {code}")),
                    }
                }
                if failed.is_empty() {
                    return Ok(());
                }
                tracing::warn!(failed = ?failed, "creating topics failed; retrying");
            }
            Err(err) => tracing::warn!(error = %err, "broker not reachable yet"),
        }
        if !backoff.wait(shutdown).await {
            anyhow::bail!("shutdown before the broker became reachable");
        }
    }
}

/// Kafka headers built from string pairs.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(rdkafka::message::Header {
                key,
                value: Some(value),
            })
        })
}

/// Header values that are valid UTF-8, by name.
pub fn header_map<H: Headers>(headers: Option<&H>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if let Some(headers) = headers {
        for header in headers.iter() {
            if let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) {
                map.insert(header.key.to_owned(), value.to_owned());
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use rdkafka::Message as _;
    use rdkafka::consumer::{CommitMode, Consumer as _};
    use rdkafka::producer::FutureRecord;

    use super::*;

    /// A burst from the platform's producer, a consumer that commits part of it and
    /// stops, and the next consumer of the group: it must start at the committed
    /// offset, not after the batch that offset fell into.
    #[tokio::test]
    async fn a_consumer_resumes_at_its_committed_offset_after_a_burst() {
        let brokers = std::env::var("KAFKA_BROKERS")
            .expect("KAFKA_BROKERS must point at a Kafka-protocol broker (run `make test`)");
        let topic = format!("resume-{}", uuid::Uuid::now_v7());
        ensure_topics(
            &KafkaConnection::plaintext(&brokers),
            std::slice::from_ref(&topic),
            1,
            &Shutdown::new(),
        )
        .await
        .expect("topic");
        // Batched unless the broker needs the workaround (tansu: with-infra.sh sets it);
        // on real Kafka this test passes with batching on.
        let one_per_batch = std::env::var("KAFKA_ONE_RECORD_PER_BATCH").is_ok_and(|v| v == "true");
        let producer =
            producer(&KafkaConnection::plaintext(&brokers), one_per_batch).expect("producer");
        let sends: Vec<_> = (0..50)
            .map(|i| {
                let payload = i.to_string();
                producer
                    .send_result(FutureRecord::<(), _>::to(&topic).payload(&payload))
                    .expect("queued")
            })
            .collect();
        for delivery in futures::future::join_all(sends).await {
            delivery.expect("delivered").expect("acknowledged");
        }

        let group = format!("resume-{}", uuid::Uuid::now_v7());
        let session = Duration::from_secs(30);
        let first =
            consumer(&KafkaConnection::plaintext(&brokers), &group, session).expect("consumer");
        first.subscribe(&[&topic]).expect("subscribe");
        for expected in 0..10 {
            let message = tokio::time::timeout(Duration::from_secs(20), first.recv())
                .await
                .expect("a record")
                .expect("no error");
            assert_eq!(message.offset(), expected);
            first
                .commit_message(&message, CommitMode::Sync)
                .expect("commit");
        }
        drop(first);

        let next =
            consumer(&KafkaConnection::plaintext(&brokers), &group, session).expect("consumer");
        next.subscribe(&[&topic]).expect("subscribe");
        // Longer than the session timeout, in case the broker waits out the first member.
        let message = tokio::time::timeout(Duration::from_secs(45), next.recv())
            .await
            .expect("a record")
            .expect("no error");
        assert_eq!(
            message.offset(),
            10,
            "the next consumer starts where the first committed"
        );
    }
}
