//! Events: how fast the outbox relay publishes, and how long an OrderConfirmed
//! takes from the order's commit to the user service's consumer having applied it
//! (both read from the databases, where both times are recorded).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::stats::{self, Summary};

/// Commit-to-consumed for every OrderConfirmed the user service has applied.
pub async fn commit_to_consumed(server_url: &str) -> anyhow::Result<Summary> {
    let orders = PgPool::connect(&shop_testkit::with_database(server_url, "shop_order"))
        .await
        .context("shop_order")?;
    let users = PgPool::connect(&shop_testkit::with_database(server_url, "shop_user"))
        .await
        .context("shop_user")?;
    let committed: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT event_id::text, created_at FROM outbox_events WHERE event_type = 'shop.order.v1.OrderConfirmed'",
    )
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
    let latencies: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, at)| (*consumed.get(id)? - *at).to_std().ok())
        .collect();
    let missing = committed.len() - latencies.len();
    Ok(stats::summarize(latencies, Duration::from_secs(1), missing))
}

/// Writes `count` events into the order service's outbox at once and times the
/// relay publishing them all.
pub async fn relay_throughput(server_url: &str, brokers: &str, count: i64) -> anyhow::Result<f64> {
    let topic = "shop.bench.v1.noise";
    crate::transport::create_topic(brokers, topic).await?;
    let orders = PgPool::connect(&shop_testkit::with_database(server_url, "shop_order")).await?;
    sqlx::query(
        "INSERT INTO outbox_events (event_id, topic, event_key, event_type, payload)
         SELECT gen_random_uuid(), $1, 'k' || g, 'shop.bench.v1.Noise', '\\x0a03616263'::bytea
         FROM generate_series(1, $2) g",
    )
    .bind(topic)
    .bind(count)
    .execute(&orders)
    .await?;
    let started = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND topic = $1",
        )
        .bind(topic)
        .fetch_one(&orders)
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
