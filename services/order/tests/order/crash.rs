//! SIGKILL the order service at random points under a stream of orders, restart
//! it, and check the invariants of docs/design.md once everything has caught up.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shop_proto::order as pb;
use shop_testkit::{Broker, Identity, TestDatabase};
use tonic::Code;

use crate::mesh::{Mesh, order_settings, sku, start_inventory, start_user};

const BIN: &str = env!("CARGO_BIN_EXE_order-service");
const STOCK: i64 = 60;

pub fn spawn_order_service(settings: &shop_order::Settings, port: u16, admin_port: u16) -> Child {
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
        .env(
            "KAFKA_ONE_RECORD_PER_BATCH",
            s.kafka_one_record_per_batch.to_string(),
        )
        .env("AUTH_PUBLIC_KEY", s.auth_public_key.expose())
        .env("SERVICE_PUBLIC_KEY", s.service_public_key.expose())
        .env("SERVICE_PRIVATE_KEY", s.service_private_key.expose())
        .env("EVENT_SIGNING_KEY", s.event_signing_key.expose())
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

fn running(service: Option<&crate::mesh::Running>) -> &crate::mesh::Running {
    service.expect("running")
}

/// The service's database, for the invariant checker.
async fn db_pool(service: Option<&crate::mesh::Running>) -> sqlx::PgPool {
    sqlx::PgPool::connect(&running(service).db.url)
        .await
        .expect("pool")
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
    let settings = order_settings(&identity, &broker.brokers, &order_db, inventory_port);
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

    assert!(!seen_confirmed.is_empty(), "some orders were confirmed");
    let pool = sqlx::PgPool::connect(&order_db.url).await.expect("pool");
    let recovered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE recovery_attempts > 0")
            .fetch_one(&pool)
            .await
            .expect("recovered");

    // Every invariant of docs/design.md §5 (tests/chaos), once the mesh has caught
    // up: polled until they hold, failed with the last violations after a minute.
    let databases = [
        ("order", pool),
        ("user", db_pool(mesh.user.as_ref()).await),
        ("inventory", db_pool(mesh.inventory.as_ref()).await),
    ];
    let parts: Vec<&str> = shop_chaos::queries().iter().map(|q| q.part).collect();
    let consumer_groups = [
        (
            running(mesh.inventory.as_ref()).group.clone(),
            "inventory-service",
        ),
        (running(mesh.user.as_ref()).group.clone(), "user-service"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let report = loop {
        let mut rows = shop_chaos::Rows::new();
        for (service, pool) in &databases {
            shop_chaos::gather::read_database(&mut rows, service, pool, &parts)
                .await
                .expect("database parts");
        }
        let brokers = mesh.broker.brokers.clone();
        let groups = consumer_groups.clone();
        let mut topics = tokio::task::spawn_blocking(move || {
            let groups: Vec<&str> = groups.iter().map(|(group, _)| group.as_str()).collect();
            shop_chaos::gather::read_topics(&brokers, &groups)
        })
        .await
        .expect("join")
        .expect("topics");
        // The checker knows each group by its consumer's name.
        for (group, consumer) in &consumer_groups {
            if let Some(committed) = topics.groups.remove(group) {
                topics.groups.insert((*consumer).to_owned(), committed);
            }
        }
        let mut snapshot = shop_chaos::Snapshot {
            client_confirmed: Some(seen_confirmed.iter().cloned().collect()),
            topics: Some(topics),
            tracked_skus: skus.to_vec(),
            ..shop_chaos::Snapshot::default()
        };
        snapshot.add_rows(&rows).expect("snapshot");
        let report = shop_chaos::check(&snapshot);
        if report.violations.is_empty() || std::time::Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "crash test: {:?}, {} seen confirmed by clients, {recovered} settled by recovery, {failed_calls} failed calls",
        report.facts,
        seen_confirmed.len()
    );
    assert_eq!(report.checked.len(), 8, "{:?}", report.checked);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let mut child = child.lock().expect("child");
    child.kill().ok();
    child.wait().ok();
}
