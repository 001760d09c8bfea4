//! The repository's alert rules (deploy/prometheus/rules.yml) in a real Prometheus
//! scraping a real order-service process: an event the broker cannot take fires
//! OutboxBacklogOld, which resolves once the broker is back; a SIGKILLed copy
//! fires ServiceDown. `promtool test rules` checks every rule on made-up series;
//! this checks that the series the services really export drive them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::crash::spawn_order_service;
use crate::mesh::{Mesh, sku};

/// A Prometheus of this test's own on a free port, evaluating the repository's
/// rules every second over one scrape target.
struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let root = shop_testkit::workspace_root();
        let dir = std::env::temp_dir().join(format!("shopmesh-alerts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: shopmesh\n    static_configs:\n      - targets: ['{target}']\n",
            rules = root.join("deploy/prometheus/rules.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let port = shop_testkit::free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus must be on PATH (make test installs it)");
        Self { child, port, dir }
    }

    /// The JSON answer of an API path (the body, chunked or not, holds one object).
    async fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = shop_testkit::http_get(self.port, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let json = &body[body.find('{').expect("json")..=body.rfind('}').expect("json")];
        serde_json::from_str(json).expect("json")
    }

    /// The state (pending, firing) of every active alert named `name`.
    async fn states(&self, name: &str) -> Vec<String> {
        let alerts = self.api("/api/v1/alerts").await;
        alerts["data"]["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits until `name`'s states satisfy `done`, for at most `within`.
    async fn until(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&[String]) -> bool,
    ) {
        let started = Instant::now();
        loop {
            let states = self.states(name).await;
            if done(&states) {
                eprintln!("{name} {what} after {:?}", started.elapsed());
                return;
            }
            assert!(
                started.elapsed() < within,
                "{name} not {what} within {within:?}: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn firing(states: &[String]) -> bool {
    states.iter().any(|s| s == "firing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_outbox_and_a_killed_copy_fire_their_alerts_in_prometheus() {
    let mesh = Mesh::start().await;
    // A second order-service copy as a process of its own, on the same database:
    // the one Prometheus scrapes, and the one that is SIGKILLed.
    let settings = mesh.another_order_copy();
    let (port, admin_port) = (shop_testkit::free_port(), shop_testkit::free_port());
    let mut copy = spawn_order_service(&settings, port, admin_port);
    shop_testkit::wait_serving(port).await;
    let prometheus = Prometheus::start(&format!("127.0.0.1:{admin_port}"));
    let started = Instant::now();
    // Listening comes before ready (its storage opens in between).
    while std::net::TcpStream::connect(("127.0.0.1", prometheus.port)).is_err()
        || shop_testkit::http_get(prometheus.port, "/-/ready").await.0 != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "prometheus never ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let up = prometheus.api("/api/v1/query?query=up").await;
        if up["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "target never up: {up}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let loaded = prometheus.api("/api/v1/rules").await;
    let rules: usize = loaded["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(rules >= 20, "the repository's rules are loaded: {loaded}");
    assert!(prometheus.states("OutboxBacklogOld").await.is_empty());

    // The broker freezes; an order commits its event to the outbox, which cannot
    // be published: over 30 s for a minute, and the alert fires.
    mesh.broker.pause();
    let sku = sku("ALERT");
    mesh.product(&sku, 5, 100).await;
    let (_, token) = mesh.customer().await;
    mesh.create_order(&token, "alert-order", &[(&sku, 1)])
        .await
        .expect("the order commits while the broker is away");
    prometheus
        .until(
            "OutboxBacklogOld",
            "firing",
            Duration::from_secs(180),
            firing,
        )
        .await;

    // The broker is back, the relay publishes, and the alert resolves.
    mesh.broker.resume();
    prometheus
        .until(
            "OutboxBacklogOld",
            "resolved",
            Duration::from_secs(60),
            |s| s.is_empty(),
        )
        .await;

    // A SIGKILLed copy stops answering scrapes: down for a minute, the alert fires.
    assert!(prometheus.states("ServiceDown").await.is_empty());
    copy.kill().expect("SIGKILL");
    copy.wait().expect("reaped");
    prometheus
        .until("ServiceDown", "firing", Duration::from_secs(120), firing)
        .await;
}
