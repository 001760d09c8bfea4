//! Resident memory of each process, time from start to SERVING, image sizes.

use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub const PROCESSES: [(&str, u16); 4] = [
    ("user-service", 9101),
    ("inventory-service", 9102),
    ("order-service", 9103),
    ("gateway", 8080),
];

/// Resident memory (MiB) of each process, from its /metrics.
pub async fn resident() -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (name, port) in PROCESSES {
        let text = crate::orders::scrape(port).await;
        let bytes = text
            .lines()
            .find(|l| l.starts_with("process_resident_memory_bytes"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        out.push((name.to_owned(), bytes / (1024.0 * 1024.0)));
    }
    out
}

/// Starts a fresh inventory-service (its database already migrated) and times how
/// long until grpc.health.v1 says SERVING.
pub async fn time_to_serving(server_url: &str, brokers: &str) -> anyhow::Result<Duration> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let keys = std::path::Path::new(".dev/keys");
    let started = Instant::now();
    let mut child = tokio::process::Command::new("target/release/inventory-service")
        .env("APP_ENV", "development")
        .env("BIND_HOST", "127.0.0.1")
        .env("GRPC_PORT", port.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env(
            "DATABASE_URL",
            shop_testkit::with_database(server_url, "shop_inventory"),
        )
        .env("KAFKA_BROKERS", brokers)
        .env(
            "KAFKA_GROUP_ID",
            format!("bench-{}", uuid::Uuid::new_v4().simple()),
        )
        .env(
            "AUTH_PUBLIC_KEY",
            std::fs::read_to_string(keys.join("auth.pub"))?,
        )
        .env(
            "SERVICE_PUBLIC_KEY",
            std::fs::read_to_string(keys.join("service.pub"))?,
        )
        .env(
            "EVENT_SIGNING_KEY",
            std::fs::read_to_string(keys.join("events-inventory.key"))?,
        )
        .env(
            "EVENT_PUBLIC_KEYS",
            std::fs::read_to_string(keys.join("events-order.pub"))?,
        )
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()?;
    let deadline = started + Duration::from_secs(30);
    let elapsed = loop {
        anyhow::ensure!(Instant::now() < deadline, "not SERVING within 30 s");
        if let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect()
                .await
        {
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if answer.is_ok_and(|r| r.get_ref().status == 1) {
                break started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    child.kill().await.ok();
    Ok(elapsed)
}

/// `docker images` sizes of the project's images, if any were built here.
pub async fn image_sizes() -> String {
    let out = tokio::process::Command::new("docker")
        .args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.Size}}",
            "--filter",
            "reference=shopmesh/*",
        ])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => {
            let images: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|line| match line.split_once(' ') {
                    Some((image, size)) => format!("`{image}` {size}"),
                    None => line.to_owned(),
                })
                .collect();
            images.join(", ")
        }
        _ => "none built on this machine (`make compose-test` builds them)".into(),
    }
}
