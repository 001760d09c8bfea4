//! Events: how fast the outbox relay publishes, and how long an OrderConfirmed
//! takes from the order's commit to the user service's consumer having applied it
//! (both read from the databases, where both times are recorded).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::stats::{self, Summary};

/// Commit to consumed for every OrderConfirmed the user service has applied, and
/// its two legs: commit to the relay's stamp (the broker has acknowledged the
/// event) and stamp to the consumer's inbox row.
pub struct Consumed {
    pub total: Summary,
    pub to_acknowledged: Summary,
    pub acknowledged_to_applied: Summary,
}

/// Only events committed between `from` and `to`: a steady rate below the
/// saturation point, not the closed-loop ladder that drives the mesh past it.
pub async fn commit_to_consumed(
    server_url: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Consumed> {
    let orders = PgPool::connect(&shop_testkit::with_database(server_url, "shop_order"))
        .await
        .context("shop_order")?;
    let users = PgPool::connect(&shop_testkit::with_database(server_url, "shop_user"))
        .await
        .context("shop_user")?;
    let committed: Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT event_id::text, created_at, published_at FROM outbox_events
         WHERE event_type = 'shop.order.v1.OrderConfirmed' AND created_at BETWEEN $1 AND $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&orders)
    .await?;
    // Wait for the consumer to catch up with what was committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let consumed = loop {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT event_id, processed_at FROM inbox_events
             WHERE consumer = 'user-service' AND event_type = 'shop.order.v1.OrderConfirmed'",
        )
        .fetch_all(&users)
        .await?;
        if rows.len() >= committed.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let consumed: HashMap<String, DateTime<Utc>> = consumed.into_iter().collect();
    let between = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).to_std().ok();
    let (mut total, mut first, mut second) = (Vec::new(), Vec::new(), Vec::new());
    for (id, created, published) in &committed {
        let Some(applied) = consumed.get(id) else {
            continue;
        };
        total.extend(between(*created, *applied));
        if let Some(published) = published {
            first.extend(between(*created, *published));
            second.extend(between(*published, *applied));
        }
    }
    let missing = committed.len() - total.len();
    let one_second = Duration::from_secs(1);
    Ok(Consumed {
        total: stats::summarize(total, one_second, missing),
        to_acknowledged: stats::summarize(first, one_second, 0),
        acknowledged_to_applied: stats::summarize(second, one_second, 0),
    })
}

/// Writes `count` events into `pool`'s outbox at once and times its relay
/// publishing them all (it is woken by the commit's NOTIFY, as after any commit).
async fn time_relay(pool: &PgPool, topic: &str, count: i64) -> anyhow::Result<f64> {
    sqlx::query(
        "INSERT INTO outbox_events (event_id, topic, event_key, event_type, payload)
         SELECT gen_random_uuid(), $1, 'k' || g, 'shop.bench.v1.Noise', '\\x0a03616263'::bytea
         FROM generate_series(1, $2) g",
    )
    .bind(topic)
    .bind(count)
    .execute(pool)
    .await?;
    let started = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND topic = $1",
        )
        .bind(topic)
        .fetch_one(pool)
        .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(180),
            "{left} events still unpublished after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

const NOISE_TOPIC: &str = "shop.bench.v1.noise";

/// `rounds` bursts of `count` events through `pool`'s relay, each one's rate.
async fn bursts(pool: &PgPool, count: i64, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let mut rates = Vec::new();
    for _ in 0..rounds {
        rates.push(time_relay(pool, NOISE_TOPIC, count).await?);
    }
    Ok(rates)
}

/// The order service's own relay, as `make dev` runs it (with the test broker's
/// one record per produce request): events/s of each of `rounds` bursts.
pub async fn relay_throughput(
    server_url: &str,
    brokers: &str,
    count: i64,
    rounds: usize,
) -> anyhow::Result<Vec<f64>> {
    crate::transport::create_topic(brokers, NOISE_TOPIC).await?;
    let orders = PgPool::connect(&shop_testkit::with_database(server_url, "shop_order")).await?;
    bursts(&orders, count, rounds).await
}

/// The platform's relay as Kafka users run it, with librdkafka's batching (the
/// default, `KAFKA_ONE_RECORD_PER_BATCH` off): the same `OutboxRelay` on an
/// outbox of its own (a database this run creates and drops), publishing to the same
/// broker. Nothing consumes the topic, so the test broker's quirk with
/// consumers that resume inside a batch cannot matter here.
pub async fn batched_relay_throughput(
    brokers: &str,
    count: i64,
    rounds: usize,
) -> anyhow::Result<Vec<f64>> {
    use shop_platform::event_signature::EventSigner;
    use shop_platform::kafka::{KafkaConnection, producer};
    use shop_platform::outbox::{OutboxRelay, OutboxSignal, wake_on_commits};

    crate::transport::create_topic(brokers, NOISE_TOPIC).await?;
    // A database of its own on the DATABASE_URL server, dropped when this returns.
    let database = shop_testkit::TestDatabase::create().await;
    let pool = PgPool::connect(&database.url).await?;
    shop_platform::db::PLATFORM_MIGRATIONS.run(&pool).await?;
    let key = shop_testkit::keypair();
    let signer = EventSigner::from_pem(&key.private_pem, "EVENT_SIGNING_KEY")?;
    let producer = producer(&KafkaConnection::plaintext(brokers), false)?;
    let signal = OutboxSignal::default();
    let shutdown = shop_platform::Shutdown::new();
    let relay = OutboxRelay::new(pool.clone(), producer, signal.clone(), "bench", signer);
    let relaying = tokio::spawn(relay.run(shutdown.clone()));
    let waking = tokio::spawn(wake_on_commits(pool.clone(), signal, shutdown.clone()));
    let rates = bursts(&pool, count, rounds).await?;
    shutdown.trigger();
    let _ = tokio::join!(relaying, waking);
    pool.close().await;
    Ok(rates)
}
