//! The real binary: configuration errors, and SIGTERM (NOT_SERVING, in-flight
//! calls finish, exit 0).

use std::process::{Command, Stdio};
use std::time::Duration;

use shop_proto::user as pb;
use shop_proto::user::user_service_client::UserServiceClient;
use shop_testkit::{TestDatabase, free_port};
use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{PASSWORD, unique_email};

const BIN: &str = env!("CARGO_BIN_EXE_user-service");

fn base_command(db: &TestDatabase, grpc_port: u16) -> Command {
    let keys = shop_testkit::keypair();
    let events = shop_testkit::keypair();
    let order_events = shop_testkit::keypair();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", shop_testkit::kafka_brokers())
        .env(
            "KAFKA_GROUP_ID",
            format!("user-lifecycle-{}", uuid::Uuid::now_v7().simple()),
        )
        .env("BIND_HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc_port.to_string())
        .env("ADMIN_PORT", free_port().to_string())
        .env("AUTH_PRIVATE_KEY", keys.private_pem)
        .env("AUTH_PUBLIC_KEY", keys.public_pem)
        .env("EVENT_SIGNING_KEY", events.private_pem)
        .env("EVENT_PUBLIC_KEYS", order_events.public_pem)
        .env(
            "KAFKA_ONE_RECORD_PER_BATCH",
            std::env::var("KAFKA_ONE_RECORD_PER_BATCH").unwrap_or_default(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn bad_configuration_stops_startup_naming_the_key() {
    let db = TestDatabase::create().await;
    let out = base_command(&db, free_port())
        .env("GRPC_PORT", "not-a-port")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GRPC_PORT"), "{stderr}");

    let out = base_command(&db, free_port())
        .env_remove("AUTH_PRIVATE_KEY")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AUTH_PRIVATE_KEY"), "{stderr}");
    assert!(
        !stderr.contains("PRIVATE KEY-----"),
        "no key material in errors"
    );

    for key in ["EVENT_SIGNING_KEY", "EVENT_PUBLIC_KEYS"] {
        let out = base_command(&db, free_port())
            .env_remove(key)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(key), "{stderr}");
        assert!(
            !stderr.contains("PRIVATE KEY-----"),
            "no key material in errors"
        );
    }

    let out = base_command(&db, free_port())
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_goes_not_serving_finishes_in_flight_calls_and_exits_zero() {
    let db = TestDatabase::create().await;
    let (port, admin_port) = (free_port(), free_port());
    let mut child = base_command(&db, port)
        .env("ADMIN_PORT", admin_port.to_string())
        .env("DRAIN_DELAY_MS", "300")
        .spawn()
        .expect("start user-service");
    let url = format!("http://127.0.0.1:{port}");

    let health = shop_testkit::eventually(Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(url)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut client = HealthClient::new(channel);
            let status = client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            (status.into_inner().status == 1).then_some(client)
        }
    })
    .await;
    let mut health = health.expect("SERVING within 30 s");
    // What a container healthcheck runs: no probe tool needed in the image.
    let probe = |port: u16| {
        Command::new(BIN)
            .arg("healthcheck")
            .env("GRPC_PORT", port.to_string())
            .output()
            .expect("healthcheck")
    };
    assert!(
        probe(port).status.success(),
        "healthcheck passes while SERVING"
    );
    let down = probe(free_port());
    assert!(
        !down.status.success(),
        "healthcheck fails when nothing answers"
    );
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
    let mut watch = health
        .watch(HealthCheckRequest {
            service: shop_user::SERVICE_NAME.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        watch
            .next()
            .await
            .expect("first status")
            .expect("ok")
            .status,
        1
    );

    // The registrations are held in flight by a lock on their table, so the
    // test, not the host's speed, decides that they are still running when the
    // signal comes.
    let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock users");
    let client = UserServiceClient::connect(url).await.expect("connect");
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .register(pb::RegisterRequest {
                        email: unique_email(),
                        password: PASSWORD.into(),
                        display_name: String::new(),
                    })
                    .await
            })
        })
        .collect();
    // SIGTERM once the service is answering all four (waiting on the lock).
    let in_flight = shop_testkit::eventually(Duration::from_secs(10), || async {
        let (_, metrics) = shop_testkit::http_get(admin_port, "/metrics").await;
        metrics
            .lines()
            .any(|l| {
                l.starts_with("rpc_server_active_requests{")
                    && l.contains(r#"rpc_method="Register""#)
                    && l.ends_with(" 4")
            })
            .then_some(())
    })
    .await;
    assert!(in_flight.is_some(), "four registrations in flight");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );

    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("status change");
    assert_eq!(
        next.expect("stream item").expect("ok").status,
        2,
        "NOT_SERVING after SIGTERM"
    );
    lock.commit().await.expect("release the lock");
    for call in calls {
        call.await
            .expect("join")
            .expect("in-flight registration finished");
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");

    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(users, 4);
}

#[tokio::test]
async fn admin_port_answers_healthz_and_metrics() {
    let app = crate::helpers::spawn_app().await;
    let (status, body) = shop_testkit::http_get(app.admin_port, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "serving\n"));
    let (status, body) = shop_testkit::http_get(app.admin_port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("shop_up{service=\"user-service\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("shop_outbox_backlog_events{service=\"user-service\"}"),
        "{body}"
    );
    let (status, _) = shop_testkit::http_get(app.admin_port, "/nope").await;
    assert_eq!(status, 404);
}
