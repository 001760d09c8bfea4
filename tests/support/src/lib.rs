//! Test support: throwaway databases on the PostgreSQL server that `DATABASE_URL`
//! names, a private tansu broker that a test may pause, Kafka readers, key pairs,
//! free ports and the grpcurl command. Everything here talks to real servers.

pub mod kafka_tls;
pub mod mesh_tls;
pub mod postgres_tls;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use shop_platform::auth::{Role, TokenSigner};
use shop_platform::config::{Secret, ServiceSettings};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The server-level URL the test run was given.
pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a PostgreSQL server (run the tests with `make test`)")
}

/// The broker the test run was given.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").expect(
        "KAFKA_BROKERS must point at a Kafka-protocol broker (run the tests with `make test`)",
    )
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{database}{query}")
}

/// A database of its own for one test, dropped afterwards.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin = admin_database_url();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to DATABASE_URL");
        // The name is ours (a UUID), never input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        Self {
            url: with_database(&admin, &name),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = admin_database_url();
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut conn) = PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Ed25519 key pairs as PEM: (private, public).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

pub fn keypair() -> KeyPair {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    KeyPair {
        private_pem: signing
            .to_pkcs8_pem(LineEnding::LF)
            .expect("pem")
            .to_string(),
        public_pem: signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem"),
    }
}

/// Runs grpcurl (from PATH) with `args`, without blocking the test's runtime.
pub async fn grpcurl(args: &[&str]) -> Output {
    tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl must be on PATH (make test installs it)")
}

/// grpcurl's stdout, failing the test with its stderr when it failed.
pub async fn grpcurl_ok(args: &[&str]) -> String {
    let out = grpcurl(args).await;
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tansu broker of this test's own, on a free port, with in-memory storage.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    pub brokers: String,
}

/// tansu with in-memory storage listening on `port`, telling clients to connect
/// to `advertised` (a URL such as `tcp://localhost:9093`); returns once it listens.
pub fn spawn_tansu(port: u16, advertised: &str) -> Child {
    let child = Command::new(std::env::var("TANSU").unwrap_or_else(|_| "tansu".into()))
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
        ])
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(advertised)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu must be on PATH (make test installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Broker {
    pub fn start() -> Self {
        let port = free_port();
        let child = spawn_tansu(port, &format!("tcp://127.0.0.1:{port}"));
        Self {
            child,
            brokers: format!("127.0.0.1:{port}"),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record read from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

/// Reads `topic` from the beginning (a fresh consumer group) for `window`, keeping
/// the records that `keep` accepts; returns early once `enough` of them arrived
/// and no more came for a second.
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    window: Duration,
    enough: usize,
    keep: impl Fn(&Record) -> bool,
) -> Vec<Record> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + window;
    let mut settle: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || settle.is_some_and(|s| now >= s) {
            break;
        }
        let wait = settle.unwrap_or(deadline).min(deadline) - now;
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        if let Some(v) = header.value {
                            headers.insert(
                                header.key.to_owned(),
                                String::from_utf8_lossy(v).into_owned(),
                            );
                        }
                    }
                }
                let record = Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                    partition: m.partition(),
                    offset: m.offset(),
                };
                if keep(&record) {
                    out.push(record);
                    if out.len() >= enough {
                        settle = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            Ok(Err(err)) => {
                eprintln!("kafka read error: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {}
        }
    }
    out
}

/// Sends one record and waits for the broker's acknowledgement.
pub async fn produce(
    brokers: &str,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let headers = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(*v),
        })
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .context("producing a test record")
        .expect("produce");
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workspace root (for finding scripts and binaries).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A plain HTTP/1.1 GET on loopback: (status code, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The key pairs of one test mesh: user access tokens and service identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub auth: KeyPair,
    pub service: KeyPair,
    /// Signs every service's events in a test mesh, and is the key consumers trust.
    pub events: KeyPair,
    /// With it, every service's gRPC port speaks mutual TLS (its certificate named
    /// after the service) and the helpers here dial with TLS.
    pub pki: Option<std::sync::Arc<mesh_tls::MeshPki>>,
}

impl Default for Identity {
    fn default() -> Self {
        Self::new()
    }
}

impl Identity {
    pub fn new() -> Self {
        Self {
            auth: keypair(),
            service: keypair(),
            events: keypair(),
            pki: None,
        }
    }

    /// The same keys, and mutual TLS on every gRPC port.
    pub fn with_tls() -> Self {
        Self {
            pki: Some(std::sync::Arc::new(mesh_tls::MeshPki::new())),
            ..Self::new()
        }
    }

    /// `http://127.0.0.1:port`, or the https form when the mesh speaks TLS.
    pub fn address(&self, port: u16) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// A channel to `port` as a test client (TLS as the workload `test-client`).
    pub fn channel(&self, port: u16) -> tonic::transport::Channel {
        let endpoint = tonic::transport::Channel::from_shared(self.address(port)).expect("uri");
        let endpoint = match &self.pki {
            Some(pki) => endpoint.tls_config(pki.client("test-client")).expect("tls"),
            None => endpoint,
        };
        endpoint.connect_lazy()
    }

    /// Waits until the gRPC port answers grpc.health.v1 SERVING, over TLS when
    /// the mesh speaks it.
    pub async fn wait_serving(&self, port: u16) {
        serving_on(port, || self.channel(port)).await;
    }

    /// An access token as the user service would issue it.
    pub fn user_token(&self, user_id: uuid::Uuid, role: Role) -> String {
        let defaults = ServiceSettings::with_ports("test", 0, 0);
        TokenSigner::new(
            &self.auth.private_pem,
            &defaults.auth_issuer,
            &defaults.auth_audience,
            "test",
        )
        .expect("signer")
        .sign(&user_id.to_string(), Some(role), Duration::from_secs(900))
        .expect("token")
        .0
    }

    pub fn admin_token(&self) -> String {
        self.user_token(uuid::Uuid::now_v7(), Role::Admin)
    }

    pub fn customer_token(&self) -> String {
        self.user_token(uuid::Uuid::now_v7(), Role::Customer)
    }

    /// A service identity token for `name`.
    pub fn service_token(&self, name: &str) -> String {
        TokenSigner::for_service(&self.service.private_pem)
            .expect("signer")
            .service_token(name)
            .expect("token")
    }

    /// Common settings for a service under test: loopback, free ports, its own
    /// database, the given broker, a consumer group of its own, these keys.
    pub fn settings(
        &self,
        mut base: ServiceSettings,
        db: &TestDatabase,
        brokers: &str,
    ) -> ServiceSettings {
        // The default group id is the process name: the workload's certificate name.
        let process = base.kafka_group_id.clone();
        base.bind_host = "127.0.0.1".into();
        base.grpc_port = 0;
        base.admin_port = 0;
        base.database_url = Secret::new(db.url.clone());
        base.kafka_brokers = brokers.into();
        base.kafka_group_id = format!(
            "{}-test-{}",
            base.kafka_group_id,
            uuid::Uuid::now_v7().simple()
        );
        // The broker's workaround as the infrastructure script says (tansu: on).
        base.kafka_one_record_per_batch =
            std::env::var("KAFKA_ONE_RECORD_PER_BATCH").is_ok_and(|v| v == "true");
        base.auth_public_key = Secret::new(self.auth.public_pem.clone());
        base.service_public_key = Secret::new(self.service.public_pem.clone());
        base.service_private_key = Secret::new(self.service.private_pem.clone());
        if let Some(pki) = &self.pki {
            let files = pki.workload(&process);
            (base.tls_cert_file, base.tls_key_file, base.tls_ca_file) =
                (files.cert, files.key, files.ca);
        }
        base.event_signing_key = Secret::new(self.events.private_pem.clone());
        base.event_public_keys = Secret::new(self.events.public_pem.clone());
        base
    }
}

/// Waits until the gRPC port answers grpc.health.v1 SERVING (overall), plaintext.
pub async fn wait_serving(port: u16) {
    serving_on(port, || {
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect_lazy()
    })
    .await;
}

/// Waits until a channel that `dial` makes reports SERVING (overall).
async fn serving_on(port: u16, dial: impl Fn() -> tonic::transport::Channel) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let serving = eventually(Duration::from_secs(15), || async {
        let status = HealthClient::new(dial())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        (status.into_inner().status == 1).then_some(())
    })
    .await;
    assert!(serving.is_some(), "port {port} never reported SERVING");
}

/// Adds `authorization: Bearer <token>` (or another header) to a request.
pub fn bearer<T>(request: &mut tonic::Request<T>, header: &'static str, token: &str) {
    request
        .metadata_mut()
        .insert(header, format!("Bearer {token}").parse().expect("ascii"));
}

/// Keeps one tracing/OTel setup for the whole test process.
pub fn telemetry() {
    static GUARD: std::sync::OnceLock<Option<shop_platform::telemetry::TelemetryGuard>> =
        std::sync::OnceLock::new();
    GUARD.get_or_init(|| shop_platform::telemetry::init("test").ok());
}

/// How a test event is signed: by a key (the owner's, or a forger's), or not at all.
#[derive(Clone, Copy, Debug)]
pub enum Signing<'a> {
    By(&'a KeyPair),
    Unsigned,
}

/// Produces one event with the headers the outbox relay writes (CloudEvents
/// binding, the signature included unless `signing` says not), as the order
/// service, for consumer tests.
pub async fn produce_event(
    brokers: &str,
    topic: &str,
    key: &str,
    event_id: &str,
    event_type: &str,
    payload: &[u8],
    signing: Signing<'_>,
) {
    use shop_platform::event_signature::{EventSigner, SignedFields};
    let source = "order-service";
    let signature = match signing {
        Signing::By(keys) => EventSigner::from_pem(&keys.private_pem, "test")
            .expect("event key")
            .sign(&SignedFields {
                topic,
                key,
                event_id,
                event_type,
                source,
                payload,
            })
            .to_vec(),
        Signing::Unsigned => Vec::new(),
    };
    let mut headers = vec![
        ("ce_id", event_id),
        ("ce_type", event_type),
        ("ce_source", source),
        ("content-type", "application/protobuf"),
    ];
    headers.extend(signature.iter().map(|(k, v)| (*k, v.as_str())));
    produce(brokers, topic, key, payload, &headers).await;
}

/// Whether the single number `sql` selects reaches `n` within `timeout`.
pub async fn count_reaches(
    pool: &sqlx::PgPool,
    sql: &'static str,
    n: i64,
    timeout: Duration,
) -> bool {
    eventually(timeout, || async move {
        let count: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.ok()?;
        (count == n).then_some(())
    })
    .await
    .is_some()
}

/// Whether this process's consumers have handled `n` events with `outcome`
/// (`applied`, `duplicate`, `dead_lettered`) within `timeout`: the signal that a
/// redelivered event has been seen, where a test would otherwise sleep. Services
/// under test run in the test's process, so their metrics are in its registry.
pub async fn consumer_outcomes_reach(outcome: &str, n: u64, timeout: Duration) -> bool {
    let needle = format!("outcome=\"{outcome}\"}} ");
    eventually(timeout, || {
        let text = shop_platform::metrics::render("test");
        let seen: f64 = text
            .lines()
            .filter(|l| l.starts_with("shop_consumer_events_total{"))
            .filter_map(|l| l.split_once(&needle).map(|(_, v)| v))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum();
        async move { (seen >= n as f64).then_some(()) }
    })
    .await
    .is_some()
}
