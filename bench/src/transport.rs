//! The same small message over Kafka: a produce (idempotent, acks=all) and its
//! consumption by a reader on the same machine, one at a time for latency, then
//! pipelined for throughput.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::stats::{self, Summary};

pub async fn create_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let _ = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    Ok(())
}

fn reader(brokers: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1")
        .set("fetch.min.bytes", "1")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::End)?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// (one-at-a-time round trips, pipelined messages per second)
pub async fn round_trip(brokers: &str, seconds: u64) -> anyhow::Result<(Summary, f64)> {
    let topic = format!("shop.bench.v1.roundtrip-{}", uuid::Uuid::new_v4().simple());
    create_topic(brokers, &topic).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()?;
    let consumer = reader(brokers, &topic)?;
    let payload = br#"{"sku":"MUG-001"}"#;
    // Warm up: the first message pays for metadata and connections.
    producer
        .send(
            FutureRecord::to(&topic).key("warm").payload(&payload[..]),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let blocking = move |consumer: BaseConsumer, wanted: usize| {
        tokio::task::spawn_blocking(move || {
            let mut got = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while got < wanted && Instant::now() < deadline {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
                    && m.key() != Some(b"warm")
                {
                    got += 1;
                }
            }
            (consumer, got)
        })
    };
    let (mut consumer, _) = blocking(consumer, 0).await?;

    let mut latencies = Vec::new();
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    while Instant::now() < stop {
        let t = Instant::now();
        producer
            .send(
                FutureRecord::to(&topic).key("rt").payload(&payload[..]),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        let (c, got) = blocking(consumer, 1).await?;
        consumer = c;
        anyhow::ensure!(got == 1, "a produced message never came back");
        latencies.push(t.elapsed());
    }
    let sequential = stats::summarize(latencies, started.elapsed(), 0);

    let total = 20_000;
    let receiving = blocking(consumer, total);
    let started = Instant::now();
    for _ in 0..total {
        loop {
            match producer.send_result(FutureRecord::to(&topic).key("tp").payload(&payload[..])) {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    producer.flush(Duration::from_secs(30)).context("flush")?;
    let (_, got) = receiving.await?;
    anyhow::ensure!(
        got == total,
        "only {got} of {total} pipelined messages came back"
    );
    Ok((sequential, total as f64 / started.elapsed().as_secs_f64()))
}
