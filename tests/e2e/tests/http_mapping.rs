//! The google.api.http mapping over real HTTP, against the real gateway and the
//! real services of `make dev`: what the mapping rules say about verbs, escapes,
//! unknown query parameters and server streams, and compression, each as a
//! client sees it.

mod dev;

use std::time::{Duration, Instant};

use dev::{DevMesh, curl};
use tokio::process::Command;

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn the_mapping_rules_hold_over_real_http() {
    let _serial = dev::serial().await;
    // A unary deadline far shorter than the watch below stays open.
    let _dev = DevMesh::start(&[("REQUEST_TIMEOUT_MS", "1000")]).await;

    // Unknown query parameters (a cache-buster, a tracking tag) cost nothing.
    let reply = curl(
        "GET",
        "/v1/products/MUG-001?_=1700000000&utm_source=mail",
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["product"]["sku"], "MUG-001");
    // A GET's answer carries a weak ETag; sent back, it gets 304 and no body.
    let tag = reply.header("etag").expect("an ETag on a GET");
    assert!(tag.starts_with("W/\""), "{tag}");
    let if_none_match = format!("if-none-match: {tag}");
    let held = curl(
        "GET",
        "/v1/products/MUG-001",
        None,
        None,
        &[if_none_match.as_str()],
    )
    .await;
    assert_eq!(held.status, 304, "{}", held.headers);
    assert_eq!(held.body, "");
    assert_eq!(held.header("etag").as_deref(), Some(tag.as_str()));
    // Another resource has another tag: the same If-None-Match gets the body.
    let other = curl(
        "GET",
        "/v1/products/LAMP-001",
        None,
        None,
        &[if_none_match.as_str()],
    )
    .await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_ne!(other.header("etag").as_deref(), Some(tag.as_str()));
    // A known parameter of the wrong type is still refused, naming it.
    let reply = curl("GET", "/v1/products?pageSize=many", None, None, &[]).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("pageSize"), "{}", reply.body);

    // A `:suffix` no route registers is part of the variable: the inventory
    // service is asked for the SKU `MUG-001:gift` and refuses it by its own rule
    // (a 400 naming the field), where the gateway used to answer "no route".
    let reply = curl("GET", "/v1/products/MUG-001:gift", None, None, &[]).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("invalid sku"), "{}", reply.body);
    // A registered verb with another method is 405 naming the one it has.
    let reply = curl("GET", "/v1/orders/abc:cancel", None, None, &[]).await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(
        reply.header("allow").as_deref(),
        Some("POST"),
        "{}",
        reply.headers
    );

    // Responses are compressed as Accept-Encoding asks, and only then; an
    // answer that fits one packet (a product, 252 bytes) is sent as it is.
    let small = curl(
        "GET",
        "/v1/products/MUG-001",
        None,
        None,
        &["accept-encoding: gzip"],
    )
    .await;
    assert_eq!(small.status, 200, "{}", small.body);
    assert_eq!(small.header("content-encoding"), None, "{}", small.headers);
    let plain = curl("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(plain.header("content-encoding"), None, "{}", plain.headers);
    for encoding in ["gzip", "br", "zstd"] {
        let accept = format!("accept-encoding: {encoding}");
        let reply = curl("GET", "/openapi.json", None, None, &[accept.as_str()]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-encoding").as_deref(),
            Some(encoding),
            "{}",
            reply.headers
        );
    }
    let preferred = curl(
        "GET",
        "/openapi.json",
        None,
        None,
        &["accept-encoding: gzip;q=0.5, zstd;q=1"],
    )
    .await;
    assert_eq!(
        preferred.header("content-encoding").as_deref(),
        Some("zstd")
    );
    let out = Command::new("curl")
        .args(["-s", "--compressed", "-H", "accept-encoding: gzip"])
        .arg(format!("{}/openapi.json", dev::gateway()))
        .output()
        .await
        .expect("curl");
    let decoded: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("gzip decodes to JSON");
    assert_eq!(decoded, plain.json(), "the same answer, compressed");

    // A server stream outlives the unary deadline: a watch opened with no
    // grpc-timeout still gets the cancellation made 2 s later.
    let email = format!("mapping-{}@example.com", std::process::id());
    let creds = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
    let reply = curl("POST", "/v1/users", None, Some(&creds), &[]).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = curl("POST", "/v1/auth:login", None, Some(&creds), &[]).await;
    let token = reply.json()["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let reply = curl(
        "POST",
        "/v1/orders",
        Some(&token),
        Some(r#"{"lines":[{"sku":"MUG-001","quantity":1}]}"#),
        &["Idempotency-Key: mapping-watch-order"],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let order_id = reply.json()["order"]["orderId"]
        .as_str()
        .expect("order id")
        .to_owned();
    let watch = |extra: Option<&'static str>| {
        let (token, order_id) = (token.clone(), order_id.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut cmd = Command::new("curl");
            cmd.args([
                "-s",
                "-N",
                "--max-time",
                "6",
                "-H",
                "accept: text/event-stream",
            ])
            .args(["-H", &format!("authorization: Bearer {token}")]);
            if let Some(header) = extra {
                cmd.args(["-H", header]);
            }
            let out = cmd
                .arg(format!("{}/v1/orders/{order_id}:watch", dev::gateway()))
                .output()
                .await
                .expect("curl");
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                started.elapsed(),
            )
        })
    };
    // It asks for gzip too: events are never compressed, since a compressor
    // would hold them back.
    let open_ended = watch(Some("accept-encoding: gzip"));
    // The client's own grpc-timeout still bounds its stream.
    let bounded = watch(Some("grpc-timeout: 1S"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reply = curl(
        "POST",
        &format!("/v1/orders/{order_id}:cancel"),
        Some(&token),
        Some(r#"{"reason":"mapping test"}"#),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (events, _) = open_ended.await.expect("watch");
    assert!(
        events.contains("ORDER_STATUS_CANCELLED"),
        "the watch was still open after the 1 s unary deadline: {events}"
    );
    let (events, took) = bounded.await.expect("watch");
    assert!(
        !events.contains("ORDER_STATUS_CANCELLED") && took < Duration::from_secs(5),
        "the client's grpc-timeout ended its watch ({took:?}): {events}"
    );
    assert!(events.contains("event: error"), "{events}");

    // A client stream over REST: an NDJSON body, one CreateProductRequest per
    // line, all or none (admins only).
    let admin = dev::admin_token().await;
    let kettle = format!("KETTLE-{}", std::process::id());
    let line = |sku: &str| {
        format!(
            r#"{{"sku":"{sku}","name":"Kettle","unitPrice":{{"currencyCode":"EUR","amountMinor":"2500"}},"initialStock":"3"}}"#
        )
    };
    let ndjson = format!("{}\n{}\n", line(&kettle), line("MUG-001"));
    let reply = import(&admin, &ndjson).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["createdSkus"], serde_json::json!([kettle]));
    assert_eq!(reply.json()["existingSkus"], serde_json::json!(["MUG-001"]));
    let read = curl("GET", &format!("/v1/products/{kettle}"), None, None, &[]).await;
    assert_eq!(read.json()["product"]["available"], "3", "{}", read.body);
    // A bad second line: nothing added, and the 400 names the line's field.
    let teapot = format!("TEAPOT-{}", std::process::id());
    let ndjson = format!("{}\n{}\n", line(&teapot), line("bad sku"));
    let reply = import(&admin, &ndjson).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let field = &reply.json()["details"][1]["fieldViolations"][0]["field"];
    assert!(reply.body.contains("[1].product.sku"), "{}", reply.body);
    let read = curl("GET", &format!("/v1/products/{teapot}"), None, None, &[]).await;
    assert_eq!(read.status, 404, "all or none ({field}): {}", read.body);
    // A line that is no JSON object is the gateway's to refuse, named alike.
    let reply = import(&admin, "{}\nnot json\n").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("invalid [1].product"), "{}", reply.body);
    // Customers may not import.
    let reply = import(&token, &line("CUP-9")).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
}

/// An import of `ndjson` (one product per line) as the holder of `token`.
async fn import(token: &str, ndjson: &str) -> dev::Reply {
    curl(
        "POST",
        "/v1/products:import",
        Some(token),
        Some(ndjson),
        &[],
    )
    .await
}
