//! Section 6: a thousand WatchOrder streams held open through the gateway (gRPC
//! over h2c, as a browser's or a service's client would), what they cost the
//! order service's database while nothing changes (watchers never poll: the
//! `order_changed` notification wakes them) and in memory, and how long one change
//! takes to reach all of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use shop_proto::order::order_service_client::OrderServiceClient;
use shop_proto::order::{WatchOrderRequest, WatchOrderResponse};
use sqlx::PgPool;
use tokio::sync::Barrier;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::http::Connection;
use crate::orders::{self, GATEWAY, Shop};

pub const WATCHERS: usize = 1000;
/// Client connections the watches are spread over: 100 streams each, under the
/// gateway's 128 per HTTP/2 connection.
const CONNECTIONS: usize = 10;
/// How long the database's activity is counted, before and while watching.
const WINDOW: Duration = Duration::from_secs(10);
/// Longer than PostgreSQL takes to publish an idle session's counts.
const FLUSHED: Duration = Duration::from_secs(11);

pub struct Watching {
    pub opened: usize,
    /// Transactions per second on the order database, with no watch and with all.
    pub idle_per_second: f64,
    pub watched_per_second: f64,
    /// Resident MiB of the order service and the gateway, before and with all open.
    pub before: Vec<(String, f64)>,
    pub during: Vec<(String, f64)>,
    /// From the cancel's answer to the last watcher holding the CANCELLED state.
    pub fan_out: Duration,
    pub saw_change: usize,
}

/// Transactions committed or rolled back on `shop_order`, all sessions together
/// (PostgreSQL flushes each session's counts about once a second).
async fn transactions(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = 'shop_order'",
    )
    .fetch_one(pool)
    .await?)
}

/// A watch of `order_id` that has delivered its first state, or None.
async fn first_state(
    channel: Channel,
    token: &str,
    order_id: String,
) -> Option<Streaming<WatchOrderResponse>> {
    let mut request = tonic::Request::new(WatchOrderRequest { order_id });
    let bearer = format!("Bearer {token}").parse().ok()?;
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = OrderServiceClient::new(channel)
        .watch_order(request)
        .await
        .ok()?
        .into_inner();
    stream.message().await.ok()??;
    Some(stream)
}

async fn rate_over_window(pool: &PgPool) -> anyhow::Result<f64> {
    let start = transactions(pool).await?;
    tokio::time::sleep(WINDOW).await;
    let end = transactions(pool).await?;
    Ok((end - start) as f64 / WINDOW.as_secs_f64())
}

fn of_interest(all: Vec<(String, f64)>) -> Vec<(String, f64)> {
    all.into_iter()
        .filter(|(name, _)| name == "order-service" || name == "gateway")
        .collect()
}

pub async fn measure(server_url: &str, shop: &Shop) -> anyhow::Result<Watching> {
    let token = shop.tokens[0].clone();
    let mut conn = Connection::open(GATEWAY).await?;
    let body = format!(r#"{{"lines":[{{"sku":"{}","quantity":1}}]}}"#, shop.sku);
    let order = orders::json(&mut conn, "POST", "/v1/orders", Some(&token), &body).await?;
    let order_id = order["order"]["orderId"]
        .as_str()
        .context("order id")?
        .to_owned();
    let pool = PgPool::connect(server_url).await?;

    tokio::time::sleep(FLUSHED).await;
    let idle_per_second = rate_over_window(&pool).await?;
    let before = of_interest(crate::footprint::resident().await);

    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            Endpoint::from_shared(format!("http://{GATEWAY}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    // Every watcher has its first state; then each waits for the change.
    let opened = Arc::new(Barrier::new(WATCHERS + 1));
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|i| {
            let channel: Channel = channels[i % CONNECTIONS].clone();
            let (token, order_id, opened) = (token.clone(), order_id.clone(), opened.clone());
            tokio::spawn(async move {
                let mut stream = first_state(channel, &token, order_id).await;
                let held = stream.is_some();
                opened.wait().await;
                let changed = match stream.as_mut() {
                    Some(stream) => matches!(
                        tokio::time::timeout(Duration::from_secs(30), stream.message()).await,
                        Ok(Ok(Some(_)))
                    ),
                    None => false,
                };
                (held, changed.then(Instant::now))
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), opened.wait())
        .await
        .context("1000 watches did not open within 60 s")?;
    let during = of_interest(crate::footprint::resident().await);
    // The opening reads are counted once their sessions flush (an idle session
    // after 10 s): let them land before the window opens.
    tokio::time::sleep(FLUSHED).await;
    let watched_per_second = rate_over_window(&pool).await?;

    let path = format!("/v1/orders/{order_id}:cancel");
    orders::json(
        &mut conn,
        "POST",
        &path,
        Some(&token),
        r#"{"reason":"bench"}"#,
    )
    .await?;
    let cancelled = Instant::now();
    let (mut opened_count, mut saw_change, mut last) = (0, 0, cancelled);
    for watcher in watchers {
        let (held, changed) = watcher.await?;
        opened_count += usize::from(held);
        if let Some(at) = changed {
            saw_change += 1;
            last = last.max(at);
        }
    }
    Ok(Watching {
        opened: opened_count,
        idle_per_second,
        watched_per_second,
        before,
        during,
        fan_out: last.saturating_duration_since(cancelled),
        saw_change,
    })
}

pub fn render(w: &Watching) -> String {
    let mut out = String::from("## 6. A thousand watchers\n\n");
    out.push_str(&format!(
        "{WATCHERS} WatchOrder streams on one order, opened through the gateway over gRPC (h2c, {CONNECTIONS} client connections) by its owner (the bench mesh lets one user hold them all: `MAX_WATCHES_PER_USER` and `MAX_INFLIGHT_REQUESTS_PER_CLIENT` raised for this run); {} held their first state.\n\n",
        w.opened
    ));
    out.push_str(
        "| process | resident before (MiB) | with the watches open (MiB) |\n|---|---:|---:|\n",
    );
    for ((name, before), (_, during)) in w.before.iter().zip(&w.during) {
        out.push_str(&format!("| {name} | {before:.1} | {during:.1} |\n"));
    }
    out.push_str(&format!(
        "\nTransactions on the order database (`pg_stat_database`, every session, over {} s): **{:.1}/s** with no watch, **{:.1}/s** with all {WATCHERS} open and nothing changing (each window opened 11 s after the last change, once every session has published its counts; the difference is what holding the watches costs). One cancel then reached {} of them, the last {} ms after the cancel was answered.\n",
        WINDOW.as_secs(),
        w.idle_per_second,
        w.watched_per_second,
        w.saw_change,
        crate::stats::ms(w.fan_out),
    ));
    out
}
