//! The OpenAPI document the gateway serves passes a standard validator,
//! schemathesis, driving the running gateway from that document, finds no 5xx and
//! no response that contradicts it, and a client generated from it
//! (openapi-python-client) runs the README's REST flow.

mod dev;

use dev::{DevMesh, curl};
use tokio::process::Command;

#[tokio::test]
async fn the_openapi_document_is_valid_and_the_gateway_honours_it() {
    let _serial = dev::serial().await;
    let dev = DevMesh::start(&[
        ("RATE_LIMIT_PER_SEC", "100000"),
        ("RATE_LIMIT_BURST", "100000"),
        ("REGISTRATIONS_PER_ADDRESS_PER_MIN", "100000"),
        ("REGISTRATIONS_BURST_PER_ADDRESS", "100000"),
    ])
    .await;

    let doc = curl("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(doc.status, 200);
    let path = std::env::temp_dir().join(format!("shopmesh-openapi-{}.json", std::process::id()));
    std::fs::write(&path, &doc.body).expect("write document");
    let out = Command::new("openapi-spec-validator")
        .arg(&path)
        .output()
        .await
        .expect("openapi-spec-validator must be installed (make test installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("OK"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client generated from the document runs the README's flow.
    let generated = std::env::temp_dir().join(format!("shopmesh-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&generated);
    std::fs::create_dir_all(&generated).expect("client dir");
    let out = Command::new("openapi-python-client")
        .arg("generate")
        .arg("--path")
        .arg(&path)
        .args(["--meta", "none", "--output-path"])
        .arg(generated.join("shopmesh_client"))
        .output()
        .await
        .expect("openapi-python-client must be installed (make test installs it)");
    assert!(
        out.status.success(),
        "generating the client failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let flow = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/generated_client/readme_flow.py"
    );
    let out = Command::new("python3")
        .arg(flow)
        .arg(dev::gateway())
        .arg(&generated)
        .output()
        .await
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("README flow passed"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&generated);
    let _ = std::fs::remove_file(&path);

    // The protos' google.api.field_behavior, as a generated client reads it.
    let schemas = &doc.json()["components"]["schemas"];
    for (message, required) in [
        (
            "shop.user.v1.RegisterRequest",
            serde_json::json!(["email", "password"]),
        ),
        (
            "shop.user.v1.LoginRequest",
            serde_json::json!(["email", "password"]),
        ),
        (
            "shop.inventory.v1.CreateProductRequest",
            serde_json::json!(["sku", "name", "unitPrice"]),
        ),
        // The SKU comes from the path, so the body need not carry it.
        (
            "shop.inventory.v1.AdjustStockRequest",
            serde_json::json!(["delta", "reason", "requestId"]),
        ),
        (
            "shop.order.v1.CreateOrderRequest",
            serde_json::json!(["lines"]),
        ),
        (
            "shop.order.v1.CreateOrderLine",
            serde_json::json!(["sku", "quantity"]),
        ),
    ] {
        assert_eq!(schemas[message]["required"], required, "{message}");
    }
    assert_eq!(
        schemas["shop.order.v1.Order"]["properties"]["orderId"]["readOnly"],
        true
    );
    // A message no request carries is described as it is printed: every field
    // without presence always there (schemathesis checks each answer against it).
    let order_required = schemas["shop.order.v1.Order"]["required"]
        .as_array()
        .expect("an Order's required fields");
    for field in ["orderId", "userId", "status", "lines", "unavailableSkus"] {
        assert!(
            order_required.contains(&serde_json::json!(field)),
            "{field}: {order_required:?}"
        );
    }
    assert!(!order_required.contains(&serde_json::json!("createTime")));
    // A missing body reads as `{}`: required only where `{}` would be refused.
    let paths = &doc.json()["paths"];
    assert_eq!(paths["/v1/orders"]["post"]["requestBody"]["required"], true);
    assert_eq!(
        paths["/v1/orders/{order_id}:cancel"]["post"]["requestBody"]["required"],
        false
    );

    let admin = dev::admin_token().await;
    // Every check schemathesis has (a request the document calls valid must
    // be accepted, one it calls invalid refused, every response as
    // documented), 100 examples an operation, under two seeds.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml");
    for seed in ["20261127", "20261203"] {
        let out = Command::new("schemathesis")
            .args(["--config-file", config, "run"])
            .arg(format!("{}/openapi.json", dev::gateway()))
            .args(["--no-color", "--checks", "all"])
            .args(["--max-examples", "100", "--seed", seed])
            .args(["--header", &format!("Authorization: Bearer {admin}")])
            // Logging out, or revoking the admin's own tokens, would revoke the one
            // token every other call is made with (both are tested in
            // services/user/tests/user/revocation.rs and tests/e2e/tests/replicas.rs).
            // An import's NDJSON body is a media type schemathesis cannot write
            // (tests/e2e/tests/http_mapping.rs sends it).
            .args([
                "--exclude-path-regex",
                "^/v1/(auth:logout|users/[^/]+:revokeTokens|products:import)$",
            ])
            .output()
            .await
            .expect("schemathesis must be installed (make test installs it)");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis (seed {seed}) found problems:\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every selected operation was driven, and nothing failed.
        let figure = |label: &str| {
            report
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| n.trim().parse::<u32>().ok())
        };
        let selected = figure("Selected:").expect("a Selected line");
        assert!(selected >= 10, "seed {seed}: {report}");
        assert_eq!(figure("Tested:"), Some(selected), "seed {seed}: {report}");
        assert!(!report.contains("failure"), "seed {seed}: {report}");
    }

    assert!(dev.stop().await.success());
}
