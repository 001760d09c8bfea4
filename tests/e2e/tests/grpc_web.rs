//! gRPC and gRPC-Web through the gateway's HTTP port, against the real mesh of
//! `make dev`: the generated tonic client over HTTP/2 without TLS (h2c), and
//! gRPC-Web as a browser library sends it (binary and base64 text, over
//! HTTP/1.1, with a CORS preflight), each reaching exactly the RPCs the REST
//! routes reach.

mod dev;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dev::{DevMesh, curl};
use prost::Message as _;
use shop_proto::shop::common::v1::Money;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_proto::shop::inventory::v1::{
    CreateProductRequest, GetProductRequest, GetProductResponse, ImportProductsRequest,
    ReserveStockRequest,
};
use shop_proto::shop::order::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::order::v1::{CreateOrderLine, CreateOrderRequest, WatchOrderRequest};
use tokio::process::Command;
use tonic::Code;

const PASSWORD: &str = "correct horse battery";

/// One gRPC-Web message frame around `message`.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// A gRPC-Web answer's messages and its trailers (the frame flagged 0x80).
fn unframe(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
        let payload = &body[5..5 + len];
        if body[0] & 0x80 == 0 {
            messages.push(payload.to_vec());
        } else {
            trailers.push_str(&String::from_utf8_lossy(payload));
        }
        body = &body[5 + len..];
    }
    (messages, trailers.to_lowercase())
}

/// A `grpc-web-text` answer: each chunk the server sent is base64 of its own,
/// padded, so the text is decoded up to each run of `=`.
fn decode_text(mut text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    while !text.is_empty() {
        let end = text.find('=').map_or(text.len(), |i| {
            i + text[i..].chars().take_while(|c| *c == '=').count()
        });
        bytes.extend(STANDARD.decode(&text[..end]).expect("base64 chunk"));
        text = &text[end..];
    }
    bytes
}

/// A gRPC-Web answer's status lines, wherever they came: in the headers of a
/// trailers-only answer, or in the trailers frame (spaces dropped).
fn status_of(head: &str, body: &[u8]) -> String {
    let (_, trailers) = unframe(body);
    format!("{head}{trailers}").replace(' ', "")
}

/// A gRPC-Web POST with curl over HTTP/1.1: the answer's head and body.
async fn grpc_web(
    path: &str,
    content_type: &str,
    body: &[u8],
    extra: &[&str],
) -> (String, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("shopmesh-grpcweb-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let (request, head, answer) = (dir.join("request"), dir.join("head"), dir.join("answer"));
    std::fs::write(&request, body).expect("request");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http1.1", "--max-time", "20", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&answer)
        .args(["-H", &format!("content-type: {content_type}")])
        .args(["-H", "x-grpc-web: 1", "--data-binary"])
        .arg(format!("@{}", request.display()));
    for h in extra {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("{}{path}", dev::gateway()))
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(&head).expect("head").to_lowercase();
    let body = std::fs::read(&answer).expect("answer");
    std::fs::remove_dir_all(&dir).ok();
    (head, body)
}

#[tokio::test]
async fn grpc_and_grpc_web_reach_the_annotated_rpcs_through_the_gateway() {
    let _serial = dev::serial().await;
    let dev_mesh = DevMesh::start(&[]).await;

    // The generated client, over HTTP/2 with prior knowledge, as to a service port.
    let channel = tonic::transport::Endpoint::from_shared(dev::gateway())
        .expect("address")
        .connect()
        .await
        .expect("gRPC connects to the gateway's HTTP port");
    let mut inventory = InventoryServiceClient::new(channel.clone());
    let product = inventory
        .get_product(GetProductRequest {
            sku: "MUG-001".into(),
        })
        .await
        .expect("GetProduct through the gateway")
        .into_inner()
        .product
        .expect("a product");
    let rest = curl("GET", "/v1/products/MUG-001", None, None, &[]).await;
    assert_eq!(rest.json()["product"]["name"], product.name.as_str());
    let unknown = inventory
        .get_product(GetProductRequest {
            sku: "NOPE-404".into(),
        })
        .await
        .expect_err("an unknown product");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    // The gateway's RED metrics count it by its gRPC outcome, not the 200 it travels in.
    let metrics = curl("GET", "/metrics", None, None, &[]).await;
    let series = |status: &str| {
        metrics.body.lines().any(|line| {
            line.starts_with("gateway_http_requests_total{")
                && line.contains(r#"route="/shop.inventory.v1.InventoryService/GetProduct""#)
                && line.contains(&format!(r#"status="{status}""#))
        })
    };
    assert!(series("404") && series("200"), "{}", metrics.body);
    // The services' internal RPCs are not reachable from outside the mesh.
    let internal = inventory
        .reserve_stock(ReserveStockRequest::default())
        .await
        .expect_err("ReserveStock is internal");
    assert_eq!(internal.code(), Code::Unimplemented, "{internal:?}");
    assert!(internal.message().contains("ReserveStock"), "{internal:?}");
    // A step's refusal arrives as a gRPC status with its words.
    let mut orders = OrderServiceClient::new(channel.clone());
    let line = CreateOrderLine {
        sku: "MUG-001".into(),
        quantity: 1,
    };
    let anonymous = orders
        .create_order(CreateOrderRequest {
            request_id: String::new(),
            lines: vec![line.clone()],
        })
        .await
        .expect_err("CreateOrder needs a token");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    assert!(
        anonymous.message().contains("bearer token"),
        "{anonymous:?}"
    );

    // Signed in (over REST), an order made over gRPC and watched as a server stream.
    let email = format!("grpc-web-{}@example.com", std::process::id());
    let creds = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
    assert_eq!(
        curl("POST", "/v1/users", None, Some(&creds), &[])
            .await
            .status,
        201
    );
    let login = curl("POST", "/v1/auth:login", None, Some(&creds), &[]).await;
    let token = login.json()["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {token}").parse().expect("header");
    let mut create = tonic::Request::new(CreateOrderRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        lines: vec![line],
    });
    create
        .metadata_mut()
        .insert("authorization", bearer.clone());
    let order = orders
        .create_order(create)
        .await
        .expect("CreateOrder over gRPC")
        .into_inner()
        .order
        .expect("an order");
    let mut watch = tonic::Request::new(WatchOrderRequest {
        order_id: order.order_id.clone(),
    });
    watch.metadata_mut().insert("authorization", bearer);
    let mut updates = orders
        .watch_order(watch)
        .await
        .expect("WatchOrder over gRPC")
        .into_inner();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), updates.message())
        .await
        .expect("the watch answers")
        .expect("no error")
        .expect("a first update");
    assert_eq!(first.order.expect("order").order_id, order.order_id);

    // A client stream through the gateway (an admin's import).
    let admin = dev::admin_token().await;
    let sku = format!("GRPC-IMPORT-{}", std::process::id());
    let products = vec![
        ImportProductsRequest {
            product: Some(CreateProductRequest {
                sku: sku.clone(),
                name: "Imported over gRPC".into(),
                description: String::new(),
                unit_price: Some(Money {
                    currency_code: "EUR".into(),
                    amount_minor: 990,
                }),
                initial_stock: 2,
            }),
        },
        ImportProductsRequest {
            product: Some(CreateProductRequest {
                sku: "MUG-001".into(),
                name: "Mug".into(),
                description: String::new(),
                unit_price: Some(Money {
                    currency_code: "EUR".into(),
                    amount_minor: 100,
                }),
                initial_stock: 0,
            }),
        },
    ];
    let mut import = tonic::Request::new(tokio_stream::iter(products));
    import.metadata_mut().insert(
        "authorization",
        format!("Bearer {admin}").parse().expect("header"),
    );
    let imported = inventory
        .import_products(import)
        .await
        .expect("ImportProducts through the gateway")
        .into_inner();
    assert_eq!(imported.created_skus, [sku]);
    assert_eq!(imported.existing_skus, ["MUG-001"]);

    // gRPC-Web, binary, over HTTP/1.1.
    let get = GetProductRequest {
        sku: "MUG-001".into(),
    }
    .encode_to_vec();
    let path = "/shop.inventory.v1.InventoryService/GetProduct";
    let (head, body) = grpc_web(path, "application/grpc-web+proto", &frame(&get), &[]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/grpc-web+proto"),
        "{head}"
    );
    let (messages, trailers) = unframe(&body);
    assert!(
        status_of(&head, &body).contains("grpc-status:0"),
        "{trailers}"
    );
    let answer = GetProductResponse::decode(messages[0].as_slice()).expect("GetProductResponse");
    assert_eq!(answer.product.expect("product").name, product.name);

    // gRPC-Web text (base64), as browser libraries send by default.
    let (head, body) = grpc_web(
        path,
        "application/grpc-web-text",
        STANDARD.encode(frame(&get)).as_bytes(),
        &["accept: application/grpc-web-text"],
    )
    .await;
    assert!(
        head.contains("content-type: application/grpc-web-text"),
        "{head}"
    );
    let decoded = decode_text(String::from_utf8_lossy(&body).trim());
    let (messages, trailers) = unframe(&decoded);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    assert_eq!(messages.len(), 1);

    // Bytes that are no GetProductRequest: INVALID_ARGUMENT naming the type.
    let (head, body) = grpc_web(
        path,
        "application/grpc-web+proto",
        &frame(&[0xff, 0xff]),
        &[],
    )
    .await;
    let status = status_of(&head, &body);
    assert!(status.contains("grpc-status:3"), "{status}");
    assert!(status.contains("getproductrequest"), "{status}");
    // An internal RPC is UNIMPLEMENTED for gRPC-Web too.
    let reserve = "/shop.inventory.v1.InventoryService/ReserveStock";
    let (head, body) = grpc_web(reserve, "application/grpc-web+proto", &frame(&[]), &[]).await;
    let status = status_of(&head, &body);
    assert!(status.contains("grpc-status:12"), "{status}");

    // The README's lines, as written.
    let script = dev_mesh.localize(&dev::readme_block(
        "Through the gateway's port, no\ncertificate needed:",
    ));
    let stdout = dev::run_readme_lines(&script).await;
    assert!(stdout.contains("\"sku\": \"MUG-001\""), "grpcurl: {stdout}");
    assert!(stdout.contains("grpc-status:0"), "gRPC-Web: {stdout}");

    // Plain gRPC over HTTP/1.1 cannot work (no trailers): told so.
    let (head, _) = grpc_web(path, "application/grpc", &frame(&get), &[]).await;
    assert!(head.starts_with("http/1.1 505"), "{head}");

    // A browser's preflight for gRPC-Web from another origin (make dev allows any).
    let preflight = curl(
        "OPTIONS",
        path,
        None,
        None,
        &[
            "origin: https://shop.example",
            "access-control-request-method: POST",
            "access-control-request-headers: content-type,x-grpc-web,x-user-agent",
        ],
    )
    .await;
    assert_eq!(preflight.status, 200, "{}", preflight.headers);
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_lowercase();
    assert!(allowed.contains("x-grpc-web"), "{allowed}");
    let (head, _) = grpc_web(
        path,
        "application/grpc-web+proto",
        &frame(&get),
        &["origin: https://shop.example"],
    )
    .await;
    assert!(
        head.contains("access-control-expose-headers") && head.contains("grpc-status"),
        "a browser may read the status: {head}"
    );
}
