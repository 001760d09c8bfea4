//! `make dev REPLICAS=2`: two copies of every process, each caller balancing over
//! both copies of its peers, and the state that must be shared (revoked tokens)
//! shared through Redis.

mod dev;

use std::time::{Duration, Instant};

use dev::{DevMesh, curl_at};

const PASSWORD: &str = "correct horse battery";

/// `rpc_server_requests` of `method` that the admin port at `port` reports.
async fn answered(port: u16, method: &str) -> u64 {
    let (status, text) = shop_testkit::http_get(port, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|line| line.starts_with("rpc_server_requests_total"))
        .filter(|line| line.contains(&format!("rpc_method=\"{method}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn two_copies_of_everything_share_the_load_and_revocations() {
    let _serial = dev::serial().await;
    // Consumer groups of its own: after two members of a group have left, tansu
    // (the test broker) keeps the next mesh's consumers waiting for that group.
    let groups = format!("-replicas-{}", uuid::Uuid::new_v4().simple());
    let dev = DevMesh::start(&[("REPLICAS", "2"), ("KAFKA_GROUP_SUFFIX", &groups)]).await;
    let gateways = [
        format!("http://127.0.0.1:{}", dev.ports.gateway),
        format!("http://127.0.0.1:{}", dev.ports.gateway + 1),
    ];
    let email = format!("replicas-{}@example.com", std::process::id());
    let credentials = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
    let reply = curl_at(
        &gateways[0],
        "POST",
        "/v1/users",
        None,
        Some(&credentials),
        &[],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let user_id = reply.json()["user"]["userId"]
        .as_str()
        .expect("id")
        .to_owned();
    let reply = curl_at(
        &gateways[1],
        "POST",
        "/v1/auth:login",
        None,
        Some(&credentials),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let token = reply.json()["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();

    // Both gateways accept the token, and reads spread over both user-service copies.
    let path = format!("/v1/users/{user_id}");
    for i in 0..20 {
        let reply = curl_at(&gateways[i % 2], "GET", &path, Some(&token), None, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let copies = [dev.ports.user_admin, dev.ports.user_admin + 10];
    for port in copies {
        assert!(
            answered(port, "GetUser").await > 0,
            "the user-service copy with admin port {port} answered no GetUser"
        );
    }

    // A logout through one gateway is refused by the other within a second.
    let reply = curl_at(
        &gateways[0],
        "POST",
        "/v1/auth:logout",
        Some(&token),
        Some("{}"),
        &[],
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let started = Instant::now();
    let refused = loop {
        let reply = curl_at(&gateways[1], "GET", &path, Some(&token), None, &[]).await;
        if reply.status == 401 || started.elapsed() > Duration::from_secs(3) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("revoked"), "{}", refused.body);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused only after {:?}",
        started.elapsed()
    );

    // Each gateway reports both copies' health as one backend, and is ready.
    for gateway in &gateways {
        let reply = curl_at(gateway, "GET", "/readyz", None, None, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            reply.body.contains(r#""shared_store":"reachable""#),
            "{}",
            reply.body
        );
    }
    assert!(dev.stop().await.success(), "make dev exits cleanly");
}
