//! CreateOrder end to end through the gateway: the highest rate with no errors
//! (closed loop, rising concurrency), then a fixed rate at 70% of it (open loop:
//! latency counts from when a request was due, so queueing shows), and where the
//! time goes, from each process's RED histograms.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::http::Connection;
use crate::stats::{self, Summary};

pub const GATEWAY: &str = "127.0.0.1:8080";

pub struct Shop {
    pub sku: String,
    pub tokens: Vec<String>,
}

pub async fn json(
    conn: &mut Connection,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, body) = conn.call(method, path, &headers, body).await?;
    // 200, or 201 for what the call created.
    anyhow::ensure!(
        status == 200 || status == 201,
        "{method} {path}: {status} {body}"
    );
    Ok(serde_json::from_str(&body)?)
}

/// `setup` signed in as the demo admin that `make dev` creates
/// (`BOOTSTRAP_ADMIN_EMAIL` / `BOOTSTRAP_ADMIN_PASSWORD` when set).
pub async fn setup_as_admin() -> anyhow::Result<Shop> {
    let email =
        std::env::var("BOOTSTRAP_ADMIN_EMAIL").unwrap_or_else(|_| "admin@shopmesh.dev".into());
    let password =
        std::env::var("BOOTSTRAP_ADMIN_PASSWORD").unwrap_or_else(|_| "dev-admin-password".into());
    setup(&email, &password).await
}

/// A product with stock that will not run out and a few signed-in customers.
pub async fn setup(admin_email: &str, admin_password: &str) -> anyhow::Result<Shop> {
    let mut conn = Connection::open(GATEWAY).await?;
    let login = format!(r#"{{"email":"{admin_email}","password":"{admin_password}"}}"#);
    let admin = json(&mut conn, "POST", "/v1/auth:login", None, &login).await?["accessToken"]
        .as_str()
        .context("admin token")?
        .to_owned();
    let sku = format!(
        "BENCH-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase()
    );
    let product = format!(
        r#"{{"sku":"{sku}","name":"Benchmark item","unitPrice":{{"currencyCode":"EUR","amountMinor":"100"}},"initialStock":"1000000000"}}"#
    );
    json(&mut conn, "POST", "/v1/products", Some(&admin), &product).await?;
    let mut tokens = Vec::new();
    for _ in 0..8 {
        let creds = format!(
            r#"{{"email":"bench-{}@example.com","password":"correct horse battery"}}"#,
            uuid::Uuid::new_v4().simple()
        );
        json(&mut conn, "POST", "/v1/users", None, &creds).await?;
        tokens.push(
            json(&mut conn, "POST", "/v1/auth:login", None, &creds).await?["accessToken"]
                .as_str()
                .context("token")?
                .to_owned(),
        );
    }
    Ok(Shop { sku, tokens })
}

async fn place(conn: &mut Connection, shop: &Shop, n: usize) -> bool {
    let auth = format!("Bearer {}", shop.tokens[n % shop.tokens.len()]);
    let key = uuid::Uuid::new_v4().to_string();
    let body = format!(r#"{{"lines":[{{"sku":"{}","quantity":1}}]}}"#, shop.sku);
    matches!(
        conn.call(
            "POST",
            "/v1/orders",
            &[("Authorization", &auth), ("Idempotency-Key", &key)],
            &body
        )
        .await,
        Ok((201, _))
    )
}

/// Closed loop at `concurrency` for `seconds`.
pub async fn closed_loop(
    shop: Arc<Shop>,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<Summary> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let counter = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (shop, counter) = (shop.clone(), counter.clone());
            tokio::spawn(async move {
                let mut conn = Connection::open(GATEWAY).await?;
                let (mut lat, mut errors) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if place(&mut conn, &shop, counter.fetch_add(1, Ordering::Relaxed)).await {
                        lat.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                anyhow::Ok((lat, errors))
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await??;
        all.extend(l);
        errors += e;
    }
    Ok(stats::summarize(all, started.elapsed(), errors))
}

/// Open loop at `rate` per second for `seconds`, on up to `connections` connections.
pub async fn open_loop(
    shop: Arc<Shop>,
    rate: f64,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<Summary> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Instant>(100_000);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let counter = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (shop, rx, counter) = (shop.clone(), rx.clone(), counter.clone());
            tokio::spawn(async move {
                let mut conn = Connection::open(GATEWAY).await?;
                let (mut lat, mut errors) = (Vec::new(), 0);
                loop {
                    let due = { rx.lock().await.recv().await };
                    let Some(due) = due else { break };
                    if place(&mut conn, &shop, counter.fetch_add(1, Ordering::Relaxed)).await {
                        lat.push(due.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                anyhow::Ok((lat, errors))
            })
        })
        .collect();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds as f64) as u64;
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        if tx.send(due).await.is_err() {
            break;
        }
    }
    drop(tx);
    let (mut all, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.await??;
        all.extend(l);
        errors += e;
    }
    Ok(stats::summarize(all, started.elapsed(), errors))
}

/// Sum and count of a histogram's series whose labels contain `filter`.
pub fn histogram_totals(metrics: &str, name: &str, filter: &str) -> (f64, f64) {
    let value = |suffix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_{suffix}{{")) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (value("sum"), value("count"))
}

pub async fn scrape(port: u16) -> String {
    match Connection::open(&format!("127.0.0.1:{port}")).await {
        Ok(mut conn) => conn
            .call("GET", "/metrics", &[], "")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Mean time per call at each hop over a window: (hop, calls, mean seconds).
pub fn hops(
    before: &BTreeMap<u16, String>,
    after: &BTreeMap<u16, String>,
) -> Vec<(String, f64, f64)> {
    let spec = [
        (
            8080,
            "gateway_http_request_duration_seconds",
            r#"route="/v1/orders",status="201""#,
            "gateway: POST /v1/orders",
        ),
        (
            9103,
            "rpc_server_duration_seconds",
            r#"rpc_method="CreateOrder""#,
            "order: CreateOrder",
        ),
        (
            9101,
            "rpc_server_duration_seconds",
            r#"rpc_method="GetUser""#,
            "user: GetUser",
        ),
        (
            9102,
            "rpc_server_duration_seconds",
            r#"rpc_method="ReserveStock""#,
            "inventory: ReserveStock",
        ),
        (
            9102,
            "rpc_server_duration_seconds",
            r#"rpc_method="CommitReservation""#,
            "inventory: CommitReservation",
        ),
    ];
    spec.iter()
        .map(|(port, name, filter, label)| {
            let (s0, c0) =
                histogram_totals(before.get(port).map_or("", String::as_str), name, filter);
            let (s1, c1) =
                histogram_totals(after.get(port).map_or("", String::as_str), name, filter);
            let calls = c1 - c0;
            (
                (*label).to_owned(),
                calls,
                if calls > 0.0 { (s1 - s0) / calls } else { 0.0 },
            )
        })
        .collect()
}

/// Each service database's activity counters (`pg_stat_database`: transactions,
/// rows written, rows read), every session together.
pub async fn database_activity(server_url: &str) -> anyhow::Result<BTreeMap<String, [f64; 3]>> {
    let pool = sqlx::PgPool::connect(server_url).await?;
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT datname::text, (xact_commit + xact_rollback)::bigint,
                (tup_inserted + tup_updated + tup_deleted)::bigint, tup_returned::bigint
         FROM pg_stat_database WHERE datname IN ('shop_user', 'shop_inventory', 'shop_order')",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(rows
        .into_iter()
        .map(|(db, xacts, written, read)| (db, [xacts as f64, written as f64, read as f64]))
        .collect())
}
