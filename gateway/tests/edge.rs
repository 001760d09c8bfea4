//! The gateway's edge under hostile clients: the very same `Application` on a
//! free port, spoken to over raw TCP from several loopback addresses (any
//! 127.0.0.0/8 address is this machine), with its backends down, since none of
//! these attacks needs one.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use shop_gateway::{Application, Settings};
use shop_platform::Shutdown;
use shop_platform::config::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

struct Gateway {
    port: u16,
    shutdown: Shutdown,
}

async fn start(configure: impl FnOnce(&mut Settings)) -> Gateway {
    let mut settings = Settings {
        bind_host: "127.0.0.1".into(),
        http_port: 0,
        auth_public_key: Secret::new(shop_testkit::keypair().public_pem),
        ..Settings::default()
    };
    let closed = format!("http://127.0.0.1:{}", shop_testkit::free_port());
    settings.user_service_addr = closed.clone();
    settings.inventory_service_addr = closed.clone();
    settings.order_service_addr = closed;
    configure(&mut settings);
    let app = Application::build(settings).await.expect("gateway builds");
    let port = app.port();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Gateway { port, shutdown }
}

/// A connection to the gateway from `source`.
async fn connect(port: u16, source: &str) -> TcpStream {
    let source: IpAddr = source.parse().expect("address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect")
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Reads what the server sends until it closes (every request here says
/// `Connection: close`).
async fn read_reply(stream: &mut TcpStream) -> Option<Reply> {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        head: head.to_lowercase(),
        body: body.to_owned(),
    })
}

async fn request(port: u16, source: &str, method: &str, path: &str, headers: &[&str]) -> Reply {
    let mut stream = connect(port, source).await;
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n");
    for header in headers {
        raw.push_str(header);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    stream.write_all(raw.as_bytes()).await.expect("send");
    read_reply(&mut stream).await.expect("a reply")
}

/// This process's resident memory (the gateway is what runs in it).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn junk(len: usize, seed: usize) -> String {
    (0..len)
        .map(|i| char::from(b'A' + ((seed * 31 + i * 7) % 26) as u8))
        .collect()
}

#[tokio::test]
async fn junk_methods_and_paths_do_not_grow_the_metrics() {
    let gw = start(|_| {}).await;
    let port = gw.port;
    let send_junk = |count: usize, offset: usize| async move {
        let mut tasks = Vec::new();
        for worker in 0..8 {
            tasks.push(tokio::spawn(async move {
                for n in (worker..count).step_by(8) {
                    let seed = offset + n;
                    let method = junk(1 + seed % 1024, seed);
                    let path = format!("/{}/{}", junk(12, seed + 1), seed);
                    request(port, "127.0.0.2", &method, &path, &[]).await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("junk sender");
        }
    };
    // Every label value junk can produce (404, and 429 past the burst) exists
    // after the first few hundred.
    send_junk(300, 0).await;
    // The scrape counts itself once it has answered.
    request(port, "127.0.0.1", "GET", "/metrics", &[]).await;
    let before = request(port, "127.0.0.1", "GET", "/metrics", &[]).await;
    assert_eq!(before.status, 200);
    send_junk(10_000, 300).await;
    let after = request(port, "127.0.0.1", "GET", "/metrics", &[]).await;
    let growth = after.body.len() as f64 / before.body.len() as f64 - 1.0;
    assert!(
        growth < 0.10,
        "/metrics grew {:.0} % ({} → {} bytes) after 10,000 junk requests:\n{}",
        growth * 100.0,
        before.body.len(),
        after.body.len(),
        after.body
    );
    assert!(
        after.body.contains(
            r#"gateway_http_requests_total{service="gateway",method="other",route="other""#
        ),
        "junk is counted under `other`"
    );
}

#[tokio::test]
async fn stalled_uploads_are_cut_off_with_408_and_memory_comes_back() {
    let gw = start(|s| s.body_read_timeout_ms = 2_000).await;
    let baseline = rss_bytes();
    let chunk = std::sync::Arc::new(vec![b'x'; 1_000_000]);
    let mut sending = Vec::new();
    for _ in 0..100 {
        let mut stream = connect(gw.port, "127.0.0.2").await;
        let chunk = chunk.clone();
        sending.push(tokio::spawn(async move {
            let head = "POST /v1/users HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n\r\n";
            stream.write_all(head.as_bytes()).await.expect("headers");
            // The server may stop reading (a refused body); the attacker does not care.
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&chunk)).await;
            stream
        }));
    }
    let mut attackers = Vec::new();
    for task in sending {
        attackers.push(task.await.expect("sender"));
    }
    let peak = rss_bytes();

    // Meanwhile another client is served as usual.
    let legit = request(gw.port, "127.0.0.1", "GET", "/openapi.json", &[]).await;
    assert_eq!(legit.status, 200, "a legitimate request during the attack");

    let started = Instant::now();
    let statuses: Vec<u16> =
        futures::future::join_all(attackers.into_iter().map(|mut stream| async move {
            read_reply(&mut stream).await.map_or(0, |r| r.status)
        }))
        .await;
    let closed_within = started.elapsed();
    assert!(
        closed_within < Duration::from_secs(10),
        "every stalled upload is closed (took {closed_within:?})"
    );
    assert!(
        statuses.contains(&408),
        "stalled bodies get 408: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [0, 408, 429, 503].contains(s)),
        "{statuses:?}"
    );
    let grew_mib = peak.saturating_sub(baseline) / (1024 * 1024);
    assert!(
        grew_mib < 32,
        "100 stalled 1 MB uploads held {grew_mib} MiB (the per-client share is 4 MiB)"
    );
}

#[tokio::test]
async fn a_client_holds_at_most_its_share_of_requests_in_flight() {
    let gw = start(|s| {
        s.max_inflight_requests_per_client = 2;
        s.body_read_timeout_ms = 30_000;
    })
    .await;
    // Two uploads that never finish their bodies hold both of this client's places
    // (on HTTP/2 they could be two streams of one connection: the count is the same).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(gw.port, "127.0.0.7").await;
        let head = "POST /v1/users HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
        stream.write_all(head.as_bytes()).await.expect("headers");
        held.push(stream);
    }
    let refused = shop_testkit::eventually(Duration::from_secs(5), || async {
        let reply = request(gw.port, "127.0.0.7", "GET", "/openapi.json", &[]).await;
        (reply.status == 429).then_some(reply)
    })
    .await
    .expect("a third request from that client is refused");
    assert!(
        refused.body.contains("2 requests in flight"),
        "{}",
        refused.body
    );
    assert!(refused.head.contains("retry-after: 1"), "{}", refused.head);
    // Another client is not held back.
    let other = request(gw.port, "127.0.0.8", "GET", "/openapi.json", &[]).await;
    assert_eq!(other.status, 200);
    // Once the two end, their places come back.
    drop(held);
    let served = shop_testkit::eventually(Duration::from_secs(5), || async {
        let reply = request(gw.port, "127.0.0.7", "GET", "/openapi.json", &[]).await;
        (reply.status == 200).then_some(())
    })
    .await;
    assert!(served.is_some(), "the places were given back");
    gw.shutdown.trigger();
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_and_slow_headers_are_cut() {
    let gw = start(|s| {
        s.header_read_timeout_ms = 1_500;
        s.max_connections_per_client = 50;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut stream = connect(gw.port, "127.0.0.3").await;
        // Headers that never end (slowloris).
        let _ = stream
            .write_all(b"GET /v1/products HTTP/1.1\r\nhost: gw\r\n")
            .await;
        held.push(stream);
    }
    let legit = request(gw.port, "127.0.0.1", "GET", "/healthz", &[]).await;
    assert_eq!(legit.status, 200, "another client still gets in");

    let started = Instant::now();
    let replies = futures::future::join_all(
        held.into_iter()
            .map(|mut stream| async move { read_reply(&mut stream).await }),
    )
    .await;
    let mut refused = 0;
    for reply in replies.into_iter().flatten() {
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            reply
                .body
                .contains("too many connections from your address")
        );
        refused += 1;
    }
    assert_eq!(
        refused, 50,
        "50 connections per client, the rest refused at once"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "headers not sent within 1.5 s close the connection (took {:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn every_path_is_rate_limited_and_forwarded_addresses_count_only_from_trusted_proxies() {
    let gw = start(|s| {
        s.rate_limit_per_sec = 1;
        s.rate_limit_burst = 5;
        s.trusted_proxies = "127.0.0.5".into();
        s.probe_networks = "127.0.0.1".into();
    })
    .await;
    let port = gw.port;

    // Probes from the probe networks (loopback by default) are never limited.
    for _ in 0..20 {
        assert_eq!(
            request(port, "127.0.0.1", "GET", "/metrics", &[])
                .await
                .status,
            200
        );
    }

    // Unknown paths and wrong methods count; a forged X-Forwarded-For changes nothing.
    let mut statuses = Vec::new();
    for n in 0..8 {
        let forged = format!("x-forwarded-for: 203.0.113.{n}");
        statuses.push(request(port, "127.0.0.4", "GET", "/nowhere", &[&forged]).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes[..5], [404; 5], "{codes:?}");
    assert!(
        codes[5..].iter().filter(|c| **c == 429).count() >= 2,
        "{codes:?}"
    );
    assert!(
        statuses[5].head.contains("retry-after: 1"),
        "{}",
        statuses[5].head
    );
    assert_eq!(
        request(port, "127.0.0.4", "GET", "/metrics", &[])
            .await
            .status,
        429
    );

    // Behind a trusted proxy each forwarded client has its own bucket.
    let behind_proxy = |method: &'static str, header: &'static str| async move {
        request(port, "127.0.0.5", method, "/healthz", &[header]).await
    };
    for _ in 0..5 {
        let reply = behind_proxy("DELETE", "x-forwarded-for: 203.0.113.10").await;
        assert_eq!(reply.status, 405);
    }
    let limited = behind_proxy("DELETE", "x-forwarded-for: 203.0.113.10").await;
    assert_eq!(limited.status, 429);
    let other = behind_proxy("GET", "x-forwarded-for: 203.0.113.11").await;
    assert_eq!(other.status, 200, "another client behind the same proxy");
}

#[tokio::test]
async fn a_backend_outage_is_reported_without_transport_details() {
    let gw = start(|s| s.request_timeout_ms = 1_000).await;
    // Ready means "this gateway can serve": a backend outage is reported, not a
    // reason for every gateway copy to leave the load balancer.
    let ready = request(gw.port, "127.0.0.1", "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let report: serde_json::Value = serde_json::from_str(&ready.body).expect("json");
    assert_eq!(report["ready"], true, "{}", ready.body);
    assert_eq!(report["shared_store"], "not configured", "{}", ready.body);
    for (backend, state) in report["backends"].as_object().expect("backends") {
        assert_eq!(state, "backend unavailable", "{backend}: {}", ready.body);
    }
    // No backend address answers: unavailable, or out of time while waiting for one.
    let products = request(gw.port, "127.0.0.1", "GET", "/v1/products", &[]).await;
    assert!([503, 504].contains(&products.status), "{}", products.body);
    for leak in ["tcp connect", "refused", "127.0.0.1", "transport"] {
        assert!(
            !ready.body.contains(leak) && !products.body.contains(leak),
            "{leak:?} in {} / {}",
            ready.body,
            products.body
        );
    }
}

#[tokio::test]
async fn on_sigterm_readiness_fails_first_while_requests_are_still_served() {
    let gw = start(|s| s.drain_delay_ms = 1_500).await;
    assert_eq!(
        request(gw.port, "127.0.0.1", "GET", "/readyz", &[])
            .await
            .status,
        200
    );
    gw.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = request(gw.port, "127.0.0.1", "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains(r#""draining":true"#), "{}", ready.body);
    let alive = request(gw.port, "127.0.0.1", "GET", "/healthz", &[]).await;
    assert_eq!(alive.status, 200, "still served while draining");
    // After the drain delay the listener closes.
    let closed = shop_testkit::eventually(Duration::from_secs(5), || async {
        TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "the listener closes after the drain delay"
    );
}

/// The Redis that scripts/with-infra.sh started for this run.
fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL: run the tests through scripts/with-infra.sh")
}

/// Statuses of `n` requests from `source`, sent to each gateway in turn.
async fn spread(ports: &[u16], source: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let port = ports[i % ports.len()];
        statuses.push(request(port, source, "GET", "/nowhere", &[]).await.status);
    }
    statuses
}

#[tokio::test]
async fn two_gateways_share_one_rate_limit_through_redis() {
    let shared = |s: &mut Settings| {
        s.rate_limit_per_sec = 1;
        s.rate_limit_burst = 6;
        s.probe_networks = "127.0.0.1".into();
        s.redis_url = Secret::new(redis_url());
    };
    let (a, b) = (start(shared).await, start(shared).await);
    // A source address no other test uses: its bucket is this test's alone.
    let statuses = spread(&[a.port, b.port], "127.0.0.61", 12).await;
    let admitted = statuses.iter().filter(|s| **s == 404).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    // The burst (6) in all, plus at most one refill during the run: not 12.
    assert!((6..=7).contains(&admitted), "{statuses:?}");
    assert_eq!(admitted + refused, 12, "{statuses:?}");
    let ready = request(a.port, "127.0.0.1", "GET", "/readyz", &[]).await;
    assert!(
        ready.body.contains(r#""shared_store":"reachable""#),
        "{}",
        ready.body
    );
}

#[tokio::test]
async fn with_redis_unreachable_each_gateway_still_limits_alone() {
    let nowhere = format!("redis://127.0.0.1:{}", shop_testkit::free_port());
    let gw = start(|s| {
        s.rate_limit_per_sec = 1;
        s.rate_limit_burst = 4;
        s.probe_networks = "127.0.0.1".into();
        s.redis_url = Secret::new(nowhere);
    })
    .await;
    let started = Instant::now();
    let statuses = spread(&[gw.port], "127.0.0.62", 8).await;
    let admitted = statuses.iter().filter(|s| **s == 404).count();
    assert!((4..=5).contains(&admitted), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [404, 429].contains(s)),
        "nothing fails for the outage: {statuses:?}"
    );
    // One failed call, then the store rests: the outage costs little.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let ready = request(gw.port, "127.0.0.1", "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains("unreachable"), "{}", ready.body);
}

/// What curl says of one GET: the HTTP version it spoke and the status.
async fn curl_version(args: &[&str], url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn http2_is_spoken_with_prior_knowledge_and_a_silent_connection_is_cut() {
    let gw = start(|s| s.header_read_timeout_ms = 500).await;
    let url = format!("http://127.0.0.1:{}/healthz", gw.port);
    assert_eq!(
        curl_version(&["--http2-prior-knowledge"], &url).await,
        "2 200"
    );
    assert_eq!(curl_version(&["--http1.1"], &url).await, "1.1 200");
    // Half of HTTP/2's preface, then nothing: closed once the header timeout is up.
    for first in [&b"PRI * HTTP/2.0\r\n"[..], b""] {
        let mut stream = connect(gw.port, "127.0.0.4").await;
        stream.write_all(first).await.expect("send");
        let started = Instant::now();
        let mut sink = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut sink)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the connection is closed, not answered: {read:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "closed after the 0.5 s header timeout, not {:?}",
            started.elapsed()
        );
    }
    // The whole preface and its SETTINGS, then no request: the server says
    // GOAWAY and closes once the connection has been idle as long.
    let mut stream = connect(gw.port, "127.0.0.4").await;
    let empty_settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    stream
        .write_all(&[&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &empty_settings].concat())
        .await
        .expect("send");
    let started = Instant::now();
    let mut frames = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut frames)).await;
    assert!(read.is_ok(), "an idle HTTP/2 connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after the 0.5 s idle limit, not {:?}",
        started.elapsed()
    );
    // A GOAWAY frame (type 7) came before the close.
    let mut at = 0;
    let mut types = Vec::new();
    while at + 9 <= frames.len() {
        let len = usize::from(frames[at]) << 16
            | usize::from(frames[at + 1]) << 8
            | usize::from(frames[at + 2]);
        types.push(frames[at + 3]);
        at += 9 + len;
    }
    assert!(types.contains(&7), "frame types sent: {types:?}");
}

#[tokio::test]
async fn with_its_own_certificate_the_port_speaks_https_and_alpn_picks_http2() {
    let pki = shop_testkit::mesh_tls::MeshPki::new();
    let edge = pki.workload("gateway-edge");
    let gw = start(|s| {
        s.edge_tls_cert_file = edge.cert.clone();
        s.edge_tls_key_file = edge.key.clone();
    })
    .await;
    let https = format!("https://127.0.0.1:{}/healthz", gw.port);
    let ca = ["--cacert", edge.ca.as_str()];
    assert_eq!(curl_version(&ca, &https).await, "2 200", "ALPN h2");
    let h1 = [ca[0], ca[1], "--http1.1"];
    assert_eq!(curl_version(&h1, &https).await, "1.1 200", "ALPN http/1.1");
    let tls12 = [ca[0], ca[1], "--tlsv1.2", "--tls-max", "1.2"];
    assert_eq!(curl_version(&tls12, &https).await, "2 200", "TLS 1.2 too");
    // Plain HTTP on a TLS port gets no answer.
    let plain = curl_version(&["--max-time", "5"], &https.replace("https", "http")).await;
    assert!(!plain.contains("200"), "{plain}");
}
