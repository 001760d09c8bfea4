//! One CreateOrder through the gateway leaves one trace, from the HTTP request to
//! the last consumer, and log records from every process it crossed that carry
//! that trace, at an OTLP receiver of the test's own; no record holds a password or
//! a token; every process's /metrics moved for the calls made; with no collector,
//! requests still succeed.

mod dev;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dev::{DevMesh, curl};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// Spans as received, with the service.name of the process that sent them.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("spans");
        for resource_spans in request.into_inner().resource_spans {
            let service = service_name(resource_spans.resource.as_ref());
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The service.name attribute of an exported resource.
fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Log records as received: (service.name, trace id in hex, the whole record as
/// text, body and attributes included, for the search for secrets).
#[derive(Clone, Default)]
struct LogReceiver(Arc<Mutex<Vec<(String, String, String)>>>);

#[tonic::async_trait]
impl LogsService for LogReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut records = self.0.lock().expect("records");
        for resource_logs in request.into_inner().resource_logs {
            let service = service_name(resource_logs.resource.as_ref());
            for scope in resource_logs.scope_logs {
                for record in scope.log_records {
                    records.push((
                        service.clone(),
                        hex(&record.trace_id),
                        format!("{record:?}"),
                    ));
                }
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn one_request_is_one_trace_end_to_end_and_metrics_move() {
    let _serial = dev::serial().await;
    let receiver = Receiver::default();
    let logs = LogReceiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // The collector speaks TLS with a certificate from a CA of this test's own:
    // the mesh exports over https, trusting that CA (OTEL_EXPORTER_OTLP_CERTIFICATE).
    let otlp = format!("https://{}", listener.local_addr().expect("addr"));
    let ca = shop_platform::dev_pki::DevCa::new("collector test CA").expect("CA");
    let server_cert = ca.server(&["127.0.0.1"]).expect("cert");
    let ca_file = std::env::temp_dir().join(format!("otlp-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&server_cert.cert_pem, &server_cert.key_pem),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("collector TLS")
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(LogsServiceServer::new(logs.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    let dev = DevMesh::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ca_file.to_str().expect("utf-8"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "200"),
        // Info and above, and the access log: a record per request and call.
        ("OTEL_LOGS_FILTER", "info,access=debug"),
        // This test's client continues its own trace; anyone else starts a new one.
        ("TRUSTED_TRACE_SOURCES", "127.0.0.1"),
    ])
    .await;

    let run = std::process::id();
    let email = format!("traced-{run}@example.com");
    let creds = format!(r#"{{"email":"{email}","password":"correct horse battery"}}"#);
    assert_eq!(
        curl("POST", "/v1/users", None, Some(&creds), &[])
            .await
            .status,
        201
    );
    let token = curl("POST", "/v1/auth:login", None, Some(&creds), &[])
        .await
        .json()["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();

    // The client starts the trace; everything after it must join it.
    let trace_id = format!("{:032x}", u128::from(run) << 64 | 0x5eed);
    let root_span = "00f067aa0ba902b7";
    let traceparent = format!("traceparent: 00-{trace_id}-{root_span}-01");
    let reply = curl(
        "POST",
        "/v1/orders",
        Some(&token),
        Some(r#"{"lines":[{"sku":"BOOK-042","quantity":1}]}"#),
        &[&traceparent],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);

    let wanted = |spans: &[(String, Span)]| {
        let in_trace: Vec<&(String, Span)> = spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace_id)
            .collect();
        let has = |service: &str, name: &str| {
            in_trace
                .iter()
                .any(|(svc, s)| svc == service && s.name.contains(name))
        };
        let producer = in_trace
            .iter()
            .find(|(svc, s)| svc == "order-service" && s.name.contains("publish"));
        let linked = |service: &str| {
            producer.is_some_and(|(_, p)| {
                spans.iter().any(|(svc, s)| {
                    svc == service
                        && s.links
                            .iter()
                            .any(|l| hex(&l.trace_id) == trace_id && l.span_id == p.span_id)
                })
            })
        };
        has("gateway", "POST /v1/orders")
            && has("order-service", "shop.order.v1.OrderService/CreateOrder")
            && has(
                "inventory-service",
                "shop.inventory.v1.InventoryService/ReserveStock",
            )
            && has("order-service", "db orders.confirm")
            && has("inventory-service", "db reservations.reserve")
            && linked("inventory-service")
            && linked("user-service")
    };
    let arrived = shop_testkit::eventually(Duration::from_secs(30), || {
        let spans = receiver.0.lock().expect("spans").clone();
        async move { wanted(&spans).then_some(()) }
    })
    .await;
    let spans = receiver.0.lock().expect("spans").clone();
    let names: Vec<String> = spans
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == trace_id)
        .map(|(svc, s)| format!("{svc}: {}", s.name))
        .collect();
    let services: HashSet<&str> = spans.iter().map(|(svc, _)| svc.as_str()).collect();
    assert!(
        arrived.is_some(),
        "incomplete trace {trace_id}; {} spans received in all, from {services:?}; in the trace:\n{}",
        spans.len(),
        names.join("\n")
    );

    // Log records from every process the request crossed carry its trace id, and
    // none, in the trace or not, holds the password or the token.
    // (The user service takes no part in the request: it applies the order's
    // event in a trace of its own, linked to the producer's span, checked above.)
    let services = ["gateway", "order-service", "inventory-service"];
    let logged = shop_testkit::eventually(Duration::from_secs(30), || {
        let records = logs.0.lock().expect("records").clone();
        let trace_id = trace_id.clone();
        async move {
            services
                .iter()
                .all(|service| {
                    records
                        .iter()
                        .any(|(svc, trace, _)| svc == service && *trace == trace_id)
                })
                .then_some(())
        }
    })
    .await;
    let records = logs.0.lock().expect("records").clone();
    let in_trace: Vec<String> = records
        .iter()
        .filter(|(_, trace, _)| *trace == trace_id)
        .map(|(svc, _, record)| format!("{svc}: {}", &record[..record.len().min(300)]))
        .collect();
    assert!(
        logged.is_some(),
        "log records of trace {trace_id} from each of {services:?} ({} records in all); in the trace:\n{}",
        records.len(),
        in_trace.join("\n")
    );
    for (service, _, record) in &records {
        assert!(
            !record.contains("correct horse battery") && !record.contains(&token),
            "{service} exported a secret in a log record: {record}"
        );
    }

    // No orphans: every span of the trace hangs off the client's span or another exported span.
    let ids: HashSet<String> = spans
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == trace_id)
        .map(|(_, s)| hex(&s.span_id))
        .collect();
    for (service, span) in spans.iter().filter(|(_, s)| hex(&s.trace_id) == trace_id) {
        let parent = hex(&span.parent_span_id);
        assert!(
            parent == root_span || ids.contains(&parent),
            "{service}: {} has a parent ({parent}) nobody exported",
            span.name
        );
    }

    // A client outside TRUSTED_TRACE_SOURCES cannot choose the trace (nor force
    // sampling): the gateway starts its own and links the client's.
    let foreign = format!("{:032x}", u128::from(run) << 64 | 0xf0e1);
    let mut stream = {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind 127.0.0.2");
        socket
            .connect(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                dev.ports.gateway,
            )))
            .await
            .expect("connect")
    };
    let request = format!(
        "GET /v1/products/BOOK-042 HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntraceparent: 00-{foreign}-{root_span}-01\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("send");
    let mut reply = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut reply)
        .await
        .expect("reply");
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let linked = shop_testkit::eventually(Duration::from_secs(15), || {
        let spans = receiver.0.lock().expect("spans").clone();
        let foreign = foreign.clone();
        async move {
            spans
                .iter()
                .find(|(svc, s)| {
                    svc == "gateway" && s.links.iter().any(|l| hex(&l.trace_id) == foreign)
                })
                .map(|(_, s)| hex(&s.trace_id))
        }
    })
    .await;
    let gateway_trace = linked.expect("the gateway's span links the client's trace");
    assert_ne!(gateway_trace, foreign, "a new trace, not the client's");
    let spans = receiver.0.lock().expect("spans").clone();
    assert!(
        spans.iter().all(|(_, s)| hex(&s.trace_id) != foreign),
        "no span joins the untrusted client's trace"
    );

    // Metrics moved, with the right labels, in every process.
    let scrape = |port: u16| async move {
        let out = tokio::process::Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .await
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expectations: HashMap<u16, Vec<&str>> = HashMap::from([
        (
            dev.ports.gateway,
            vec![
                r#"gateway_http_requests_total{service="gateway",method="POST",route="/v1/orders",status="201"}"#,
                "gateway_http_request_duration_seconds_bucket{",
            ],
        ),
        (
            dev.ports.user_admin,
            vec![
                r#"shop_consumer_events_total{service="user-service",consumer="user-service",topic="shop.order.v1.events",outcome="applied"}"#,
            ],
        ),
        (
            dev.ports.inventory_admin,
            vec![
                r#"rpc_server_requests_total{service="inventory-service",rpc_service="shop.inventory.v1.InventoryService",rpc_method="ReserveStock",grpc_code="Ok"}"#,
                r#"rpc_server_duration_seconds_count{service="inventory-service",rpc_service="shop.inventory.v1.InventoryService",rpc_method="ReserveStock""#,
            ],
        ),
        (
            dev.ports.order_admin,
            vec![
                r#"rpc_server_requests_total{service="order-service",rpc_service="shop.order.v1.OrderService",rpc_method="CreateOrder",grpc_code="Ok"}"#,
                r#"shop_saga_outcomes_total{service="order-service",status="confirmed"}"#,
                r#"shop_outbox_published_total{service="order-service",topic="shop.order.v1.events"}"#,
                "shop_outbox_backlog_events",
                "shop_db_pool_connections",
                "process_resident_memory_bytes",
            ],
        ),
    ]);
    for (port, lines) in &expectations {
        let ok = shop_testkit::eventually(Duration::from_secs(15), || async move {
            let text = scrape(*port).await;
            lines.iter().all(|l| text.contains(l)).then_some(())
        })
        .await;
        let text = scrape(*port).await;
        assert!(ok.is_some(), "port {port} lacks one of {lines:?}:\n{text}");
    }

    // The collector goes away: requests still succeed; spans are dropped, not queued forever.
    let _ = stop_tx.send(());
    let _ = server.await;
    for _ in 0..20 {
        assert_eq!(
            curl("GET", "/v1/products/BOOK-042", None, None, &[])
                .await
                .status,
            200
        );
    }
    let reply = curl(
        "POST",
        "/v1/orders",
        Some(&token),
        Some(r#"{"lines":[{"sku":"BOOK-042","quantity":1}]}"#),
        &[],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(
        dev.stop().await.success(),
        "clean stop with the collector gone"
    );
}
