//! SIGKILL the order service at random points under a stream of orders, restart
//! it, and check the invariants of docs/design.md once everything has caught up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prost::{Message, Name};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shop_proto::order as pb;
use shop_testkit::{Broker, Identity, TestDatabase, read_topic};
use tonic::Code;

use crate::mesh::{Mesh, order_settings, sku, start_inventory, start_user};

const BIN: &str = env!("CARGO_BIN_EXE_order-service");
const STOCK: i64 = 60;

fn spawn_order_service(settings: &shop_order::Settings, port: u16, admin_port: u16) -> Child {
    let s = &settings.service;
    let saga = &settings.saga;
    Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("BIND_HOST", "127.0.0.1")
        .env("GRPC_PORT", port.to_string())
        .env("ADMIN_PORT", admin_port.to_string())
        .env("DATABASE_URL", s.database_url.expose())
        .env("KAFKA_BROKERS", &s.kafka_brokers)
        .env("KAFKA_GROUP_ID", &s.kafka_group_id)
        .env("AUTH_PUBLIC_KEY", s.auth_public_key.expose())
        .env("SERVICE_PUBLIC_KEY", s.service_public_key.expose())
        .env("SERVICE_PRIVATE_KEY", s.service_private_key.expose())
        .env("USER_SERVICE_ADDR", &saga.user_service_addr)
        .env("INVENTORY_SERVICE_ADDR", &saga.inventory_service_addr)
        .env("RECOVERY_AFTER_MS", saga.recovery_after_ms.to_string())
        .env(
            "RECOVERY_INTERVAL_MS",
            saga.recovery_interval_ms.to_string(),
        )
        .env("RPC_TIMEOUT_MS", saga.rpc_timeout_ms.to_string())
        .env("REQUEST_DEADLINE_MS", saga.request_deadline_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start order-service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_confirmed_order_and_keeps_every_invariant() {
    shop_testkit::telemetry();
    let broker = Broker::start();
    let identity = Identity::new();
    let user = start_user(&identity, &broker.brokers).await;
    let inventory_port = shop_testkit::free_port();
    let inventory = start_inventory(&identity, &broker.brokers, inventory_port, None).await;
    let order_db = TestDatabase::create().await;
    let settings = order_settings(
        &identity,
        &broker.brokers,
        &order_db,
        user.port,
        inventory_port,
    );
    let (port, admin_port) = (shop_testkit::free_port(), shop_testkit::free_port());
    let mesh = Mesh {
        broker,
        identity,
        user_port: user.port,
        user: Some(user),
        inventory: Some(inventory),
        inventory_port,
        order: None,
        order_port: port,
    };

    let skus: Vec<String> = (0..3).map(|_| sku("CRASH")).collect();
    for s in skus.iter() {
        mesh.product(s, STOCK, 100).await;
    }
    let mut customers = Vec::new();
    for _ in 0..3 {
        customers.push(mesh.customer().await);
    }

    let child = std::sync::Arc::new(std::sync::Mutex::new(spawn_order_service(
        &settings, port, admin_port,
    )));
    shop_testkit::wait_serving(port).await;

    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let mesh = std::sync::Arc::new(mesh);
    let customers = std::sync::Arc::new(customers);
    let skus = std::sync::Arc::new(skus);

    // Two clients place orders while a third party SIGKILLs the service at random
    // moments (mid-request, mid-relay, whatever it is doing) and restarts it.
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            let (mesh, customers, skus) = (mesh.clone(), customers.clone(), skus.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed * 10 + c);
                let mut seen = HashSet::new();
                let mut failures = 0;
                for n in 0..30 {
                    let (_, token) = &customers[rng.gen_range(0..customers.len())];
                    let lines: Vec<(String, i64)> = skus
                        .iter()
                        .take(rng.gen_range(1..=skus.len()))
                        .map(|s| (s.clone(), rng.gen_range(1..=3)))
                        .collect();
                    let lines: Vec<(&str, i64)> =
                        lines.iter().map(|(s, q)| (s.as_str(), *q)).collect();
                    let request_id = format!("crash-{c}-{n}");
                    // Client 0 retries with the same request id until it gets an answer;
                    // client 1 gives up at the first failure (the recovery loop settles those).
                    let tries = if c == 0 { 60 } else { 1 };
                    for _ in 0..tries {
                        match mesh.create_order(token, &request_id, &lines).await {
                            Ok(order) => {
                                if order.status == pb::OrderStatus::Confirmed as i32 {
                                    seen.insert(order.order_id);
                                }
                                break;
                            }
                            Err(status) if status.code() == Code::FailedPrecondition => break,
                            Err(_) => {
                                failures += 1;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                }
                (seen, failures)
            })
        })
        .collect();
    let killer = {
        let child = child.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(150..900))).await;
                let mut child = child.lock().expect("child");
                child.kill().expect("sigkill");
                child.wait().expect("reap");
                *child = spawn_order_service(&settings, port, admin_port);
            }
        })
    };
    let mut seen_confirmed: HashSet<String> = HashSet::new();
    let mut failed_calls = 0;
    for client in clients {
        let (seen, failures) = client.await.expect("client");
        seen_confirmed.extend(seen);
        failed_calls += failures;
    }
    killer.await.expect("killer");
    assert!(
        failed_calls > 0,
        "the kills landed while clients were calling"
    );

    let pool = sqlx::PgPool::connect(&order_db.url).await.expect("pool");
    mesh.until("no order left pending", || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
                .fetch_one(&pool)
                .await
                .unwrap_or(-1);
        pending == 0
    })
    .await;
    let confirmed: Vec<(String, String)> = sqlx::query_as(
        "SELECT order_id::text, user_id::text FROM orders WHERE status = 'confirmed'",
    )
    .fetch_all(&pool)
    .await
    .expect("confirmed orders");
    let confirmed_ids: HashSet<String> = confirmed.iter().map(|(o, _)| o.clone()).collect();
    assert!(!seen_confirmed.is_empty(), "some orders were confirmed");
    let recovered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE recovery_attempts > 0")
            .fetch_one(&pool)
            .await
            .expect("recovered");
    eprintln!(
        "crash test: {} confirmed ({} seen by clients), {recovered} settled by recovery, {failed_calls} failed calls",
        confirmed_ids.len(),
        seen_confirmed.len()
    );
    assert!(
        seen_confirmed.is_subset(&confirmed_ids),
        "every order a client saw confirmed exists: missing {:?}",
        seen_confirmed
            .difference(&confirmed_ids)
            .collect::<Vec<_>>()
    );

    // Exactly one OrderConfirmed per confirmed order (by event id), none for others.
    let records = read_topic(
        &mesh.broker.brokers,
        shop_proto::order::EVENTS_TOPIC,
        Duration::from_secs(30),
        confirmed_ids.len(),
        |r| {
            r.headers.get("ce_type").map(String::as_str)
                == Some(pb::OrderConfirmed::full_name().as_str())
        },
    )
    .await;
    let mut event_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &records {
        let event = pb::OrderConfirmed::decode(r.payload.as_slice()).expect("decode");
        event_ids
            .entry(event.order_id)
            .or_default()
            .insert(r.headers["ce_id"].clone());
    }
    for id in &confirmed_ids {
        assert_eq!(
            event_ids.get(id).map(HashSet::len),
            Some(1),
            "order {id}: one OrderConfirmed"
        );
    }
    assert_eq!(
        event_ids.len(),
        confirmed_ids.len(),
        "no OrderConfirmed for an order that is not confirmed"
    );

    // Inventory: what confirmed orders took is sold, nothing else is held or lost.
    let lines: Vec<(String, i64)> = sqlx::query_as(
        "SELECT l.sku, sum(l.quantity)::bigint FROM order_lines l JOIN orders o USING (order_id)
         WHERE o.status = 'confirmed' GROUP BY l.sku",
    )
    .fetch_all(&pool)
    .await
    .expect("sold per sku");
    let expected: BTreeMap<String, i64> = lines.into_iter().collect();
    for s in skus.iter() {
        let sold = expected.get(s).copied().unwrap_or(0);
        mesh.until(&format!("{s}: sold {sold}, nothing reserved"), || async {
            mesh.stock(s).await == (STOCK - sold, 0, sold)
        })
        .await;
    }

    // Users: figures equal what their orders say, once the consumer caught up.
    for (user_id, token) in customers.iter() {
        let mine = confirmed.iter().filter(|(_, u)| u == user_id).count() as i64;
        mesh.until(&format!("user {user_id}: {mine} orders"), || async {
            mesh.user_stats(user_id, token).await.order_count == mine
        })
        .await;
    }
    let mut child = child.lock().expect("child");
    child.kill().ok();
    child.wait().ok();
}
