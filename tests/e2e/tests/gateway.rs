//! The gateway over real HTTP (curl) with `make dev` running: the whole REST flow,
//! the error table, limits, streaming and the generated OpenAPI document.

mod dev;

use base64::Engine as _;
use std::time::Duration;

use dev::{DevMesh, curl};
use tokio::process::Command;

const PASSWORD: &str = "correct horse battery";

async fn product_available(sku: &str) -> i64 {
    let reply = curl("GET", &format!("/v1/products/{sku}"), None, None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["product"]["available"]
        .as_str()
        .expect("int64 as string")
        .parse()
        .expect("number")
}

async fn sign_up(email: &str) -> (String, String) {
    let reply = curl(
        "POST",
        "/v1/users",
        None,
        Some(&format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#)),
        &[],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let user_id = reply.json()["user"]["userId"]
        .as_str()
        .expect("userId")
        .to_owned();
    let reply = curl(
        "POST",
        "/v1/auth:login",
        None,
        Some(&format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#)),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    (
        user_id,
        reply.json()["accessToken"]
            .as_str()
            .expect("token")
            .to_owned(),
    )
}

#[tokio::test]
async fn rest_through_the_gateway_works_as_a_client_expects() {
    let _serial = dev::serial().await;
    let dev = DevMesh::start(&[("RATE_LIMIT_PER_SEC", "5"), ("RATE_LIMIT_BURST", "60")]).await;
    let run = std::process::id();
    let email = format!("rest-{run}@example.com");
    let (_, token) = sign_up(&email).await;

    // The key that signed the token is published where JWT libraries look for it,
    // and it is what the gateway and every service verify tokens with (fetched
    // from the user service over mutual TLS).
    let jwks = curl("GET", "/.well-known/jwks.json", None, None, &[]).await;
    assert_eq!(jwks.status, 200, "{}", jwks.body);
    assert_eq!(
        jwks.header("cache-control").as_deref(),
        Some("public, max-age=60")
    );
    let header = token.split('.').next().expect("a JWT header");
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .expect("base64url"),
    )
    .expect("JSON");
    let published = jwks.json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|key| key["kid"] == header["kid"])
        .cloned()
        .unwrap_or_else(|| panic!("{} publishes {}", jwks.body, header["kid"]));
    for (field, value) in [
        ("kty", "OKP"),
        ("crv", "Ed25519"),
        ("alg", "EdDSA"),
        ("use", "sig"),
    ] {
        assert_eq!(published[field], value, "{published}");
    }

    // Register twice: 409 with the google.rpc.Status body.
    let reply = curl(
        "POST",
        "/v1/users",
        None,
        Some(&format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#)),
        &[],
    )
    .await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.json()["code"], 6);
    let reply = curl(
        "POST",
        "/v1/auth:login",
        None,
        Some(&format!(
            r#"{{"email":"{email}","password":"wrong password!"}}"#
        )),
        &[],
    )
    .await;
    assert_eq!(reply.status, 401);

    // Products are public; query parameters map onto request fields.
    let reply = curl("GET", "/v1/products?pageSize=1", None, None, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["products"].as_array().expect("products").len(),
        1
    );
    assert!(
        !reply.json()["nextPageToken"]
            .as_str()
            .expect("token")
            .is_empty()
    );
    let before = product_available("MUG-001").await;

    // Create an order with an Idempotency-Key, twice: one order.
    let key = format!("Idempotency-Key: rest-{run}");
    let body = r#"{"lines":[{"sku":"MUG-001","quantity":2}]}"#;
    let first = curl("POST", "/v1/orders", Some(&token), Some(body), &[&key]).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let second = curl("POST", "/v1/orders", Some(&token), Some(body), &[&key]).await;
    assert_eq!(
        first.json()["order"]["orderId"],
        second.json()["order"]["orderId"]
    );
    assert_eq!(first.json()["order"]["status"], "ORDER_STATUS_CONFIRMED");
    assert_eq!(first.json()["order"]["total"]["amountMinor"], "2598");
    assert_eq!(
        product_available("MUG-001").await,
        before - 2,
        "stock taken once"
    );
    let order_id = first.json()["order"]["orderId"]
        .as_str()
        .expect("id")
        .to_owned();
    // Created: the answer says where the new order lives, and so does the replay.
    for reply in [&first, &second] {
        assert!(
            reply
                .headers
                .to_ascii_lowercase()
                .contains(&format!("location: /v1/orders/{order_id}\r\n")),
            "{}",
            reply.headers
        );
    }

    let reply = curl(
        "GET",
        &format!("/v1/orders/{order_id}"),
        Some(&token),
        None,
        &["x-request-id: trace-me-123"],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("x-request-id").as_deref(),
        Some("trace-me-123"),
        "kept and echoed"
    );
    let reply = curl(
        "GET",
        &format!("/v1/orders/{order_id}"),
        Some(&token),
        None,
        &[],
    )
    .await;
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| id.len() == 36),
        "generated when absent"
    );

    // Watch over SSE (and NDJSON) while the order is cancelled.
    let watch = |accept: &'static str| {
        let (token, order_id) = (token.clone(), order_id.clone());
        tokio::spawn(async move {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-N",
                    "--max-time",
                    "4",
                    "-H",
                    accept,
                    "-H",
                    &format!("authorization: Bearer {token}"),
                ])
                .arg(format!("{}/v1/orders/{order_id}:watch", dev::gateway()))
                .output()
                .await
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let sse = watch("accept: text/event-stream");
    let ndjson = watch("accept: application/x-ndjson");
    // Both watches are open once the order service has answered both (it counts
    // a stream when it sends its headers).
    let open = shop_testkit::eventually(Duration::from_secs(10), || async {
        let (_, metrics) = shop_testkit::http_get(dev.ports.order_admin, "/metrics").await;
        metrics
            .lines()
            .find(|l| {
                l.starts_with("rpc_server_requests_total{")
                    && l.contains(r#"rpc_method="WatchOrder",grpc_code="Ok""#)
            })
            .and_then(|l| l.rsplit_once(' '))
            .filter(|(_, n)| n.parse::<f64>().is_ok_and(|n| n >= 2.0))
            .map(|_| ())
    })
    .await;
    assert!(open.is_some(), "both watches reached the order service");
    let reply = curl(
        "POST",
        &format!("/v1/orders/{order_id}:cancel"),
        Some(&token),
        Some(r#"{"reason":"changed my mind"}"#),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["order"]["status"], "ORDER_STATUS_CANCELLED");
    let sse = sse.await.expect("sse");
    let events: Vec<&str> = sse.lines().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(events.len(), 2, "{sse}");
    assert!(
        events[0].contains("ORDER_STATUS_CONFIRMED")
            && events[1].contains("ORDER_STATUS_CANCELLED"),
        "{sse}"
    );
    let ndjson = ndjson.await.expect("ndjson");
    let lines: Vec<serde_json::Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        lines.last().expect("lines")["order"]["status"],
        "ORDER_STATUS_CANCELLED",
        "{ndjson}"
    );

    // Stock comes back through OrderCancelled.
    let seen = std::sync::Mutex::new(None);
    let back = shop_testkit::eventually(Duration::from_secs(15), || async {
        let now = product_available("MUG-001").await;
        *seen.lock().expect("seen") = Some(now);
        (now == before).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "stock back after the cancel: {before} before the order, {:?} now",
        seen.lock().expect("seen")
    );

    // An admin adds a product and adjusts its stock; a customer may do neither.
    let admin = dev::admin_token().await;
    let sku = format!("REST-{run}");
    let product = format!(
        r#"{{"sku":"{sku}","name":"Teapot","unitPrice":{{"currencyCode":"EUR","amountMinor":"4200"}},"initialStock":"3"}}"#
    );
    let reply = curl("POST", "/v1/products", Some(&token), Some(&product), &[]).await;
    assert_eq!(
        reply.status, 403,
        "a customer cannot create products: {}",
        reply.body
    );
    let reply = curl("POST", "/v1/products", Some(&admin), Some(&product), &[]).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let adjust = format!(r#"{{"delta":"7","reason":"delivery","requestId":"rest-{run}"}}"#);
    let reply = curl(
        "POST",
        &format!("/v1/products/{sku}:adjustStock"),
        Some(&token),
        Some(&adjust),
        &[],
    )
    .await;
    assert_eq!(reply.status, 403);
    let reply = curl(
        "POST",
        &format!("/v1/products/{sku}:adjustStock"),
        Some(&admin),
        Some(&adjust),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["product"]["available"], "10");
    assert_eq!(product_available(&sku).await, 10);

    // PATCH with no update_mask changes what the body carries, nothing else:
    // the price stays, and the stock figure sent back with it is ignored.
    let path = format!("/v1/products/{sku}");
    let patch = r#"{"name":"Teapot, blue","available":"0"}"#;
    let reply = curl("PATCH", &path, Some(&token), Some(patch), &[]).await;
    assert_eq!(
        reply.status, 403,
        "a customer cannot rename: {}",
        reply.body
    );
    let reply = curl("PATCH", &path, Some(&admin), Some(patch), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let renamed = &reply.json()["product"];
    assert_eq!(renamed["name"], "Teapot, blue");
    assert_eq!(renamed["unitPrice"]["amountMinor"], "4200");
    assert_eq!(renamed["available"], "10");
    // The body alone says what changes: a mask in the query is overruled.
    let reply = curl(
        "PATCH",
        &format!("{path}?updateMask=name"),
        Some(&admin),
        Some(r#"{"description":"Glazed"}"#),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        (
            &reply.json()["product"]["name"],
            &reply.json()["product"]["description"]
        ),
        (
            &serde_json::json!("Teapot, blue"),
            &serde_json::json!("Glazed")
        )
    );
    let reply = curl("PATCH", &path, Some(&admin), Some(r#"{"name":""}"#), &[]).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("product.name"), "{}", reply.body);

    // The admins' export: google.api.HttpBody chunks as one text/csv download.
    let reply = curl("GET", "/v1/orders:export", Some(&token), None, &[]).await;
    assert_eq!(
        reply.status, 403,
        "a customer cannot export: {}",
        reply.body
    );
    let reply = curl("GET", "/v1/orders:export", Some(&admin), None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .headers
            .to_ascii_lowercase()
            .contains("content-type: text/csv; charset=utf-8\r\n"),
        "{}",
        reply.headers
    );
    assert!(
        reply.body.starts_with("order_id,user_id,status,"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .lines()
            .any(|row| row.starts_with(&format!("{order_id},"))),
        "the order made above is in the export"
    );

    // The error table.
    // (method, path, body, with a token, status, what the message says)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, bool, u16, &'a str);
    let cases: [Case<'_>; 8] = [
        (
            "POST",
            "/v1/orders",
            Some(r#"{"lines":[{"sku":"MUG-001","quantity":"x"}]}"#),
            true,
            400,
            "lines[0].quantity",
        ),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"lines":[{"sku":"MUG-001""#),
            true,
            400,
            "invalid",
        ),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"nope":1}"#),
            true,
            400,
            "nope",
        ),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"lines":[{"sku":"LAMP-001","quantity":999}]}"#),
            true,
            409,
            "insufficient stock for LAMP-001",
        ),
        ("GET", "/v1/nowhere", None, true, 404, "no route"),
        ("DELETE", "/v1/orders", None, true, 405, "not allowed"),
        (
            "GET",
            "/v1/orders",
            None,
            false,
            401,
            "missing bearer token",
        ),
        ("GET", "/v1/orders/not-a-uuid", None, true, 400, "order_id"),
    ];
    for (method, path, body, with_token, status, says) in cases {
        let reply = curl(
            method,
            path,
            with_token.then_some(token.as_str()),
            body,
            &[],
        )
        .await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert!(
            reply.json()["message"]
                .as_str()
                .expect("message")
                .contains(says),
            "{method} {path}: {}",
            reply.body
        );
    }
    let reply = curl("DELETE", "/v1/orders", Some(&token), None, &[]).await;
    assert!(
        reply
            .header("allow")
            .is_some_and(|a| a.contains("GET") && a.contains("POST"))
    );
    let reply = curl(
        "POST",
        "/v1/orders",
        Some(&token),
        Some(r#"{"lines":[{"sku":"LAMP-001","quantity":999}]}"#),
        &[],
    )
    .await;
    assert_eq!(
        reply.json()["details"][1]["@type"],
        "type.googleapis.com/google.rpc.PreconditionFailure",
        "{}",
        reply.body
    );

    let (_, stranger) = sign_up(&format!("stranger-{run}@example.com")).await;
    let reply = curl(
        "GET",
        &format!("/v1/orders/{order_id}"),
        Some(&stranger),
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, 403);
    let reply = curl("GET", "/v1/orders", Some("forged.token.value"), None, &[]).await;
    assert_eq!(reply.status, 401);

    let huge = format!(r#"{{"email":"{}"}}"#, "a".repeat(2 * 1024 * 1024));
    let reply = curl("POST", "/v1/users", None, Some(&huge), &[]).await;
    assert_eq!(reply.status, 413);

    // The OpenAPI document and the page that renders it, from the same descriptors.
    let doc = curl("GET", "/openapi.json", None, None, &[]).await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/orders/{order_id}:cancel"]["post"]["security"].is_array());
    assert!(
        doc["paths"]["/v1/products/{sku}"]["get"]["security"].is_null(),
        "public"
    );
    assert!(doc["components"]["schemas"]["shop.order.v1.Order"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearerAuth"].is_object());
    let docs = curl("GET", "/docs", None, None, &[]).await;
    assert!(
        docs.status == 200
            && docs.body.contains("/openapi.json")
            && !docs.body.contains("https://")
    );
    assert_eq!(
        curl("GET", "/readyz", None, None, &[]).await.json()["ready"],
        true
    );
    let metrics = curl("GET", "/metrics", None, None, &[]).await.body;
    assert!(
        metrics.contains(r#"method="POST",route="/v1/orders",status="201"} "#),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_http_request_duration_seconds_bucket"),
        "{metrics}"
    );

    // A flood above the limit: 429 with Retry-After.
    let mut limited = None;
    for _ in 0..150 {
        let reply = curl("GET", "/v1/products/MUG-001", None, None, &[]).await;
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.expect("the flood was limited");
    assert!(
        limited
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1))
    );
    assert_eq!(limited.json()["code"], 8);

    assert!(dev.stop().await.success());
}
