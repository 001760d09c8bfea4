//! The gRPC port with mutual TLS (platform::tls): only clients with a certificate
//! from the mesh's CA get an answer, and the certificate's identity decides who
//! may call the reservation RPCs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shop_inventory::{Application, Settings};
use shop_platform::Shutdown;
use shop_platform::dev_pki::{DevCa, Issued, valid_for};
use shop_proto::inventory as pb;
use shop_proto::inventory::inventory_service_client::InventoryServiceClient;
use shop_testkit::{Identity, TestDatabase, bearer};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

struct Pki {
    ca: DevCa,
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("shop-mtls-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = DevCa::new("shopmesh test CA").expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("ca");
        Self { ca, dir }
    }

    fn workload(&self, name: &str) -> Issued {
        self.ca
            .workload(name, &["localhost", "127.0.0.1"], valid_for(YEAR))
            .expect("certificate")
    }

    /// Writes `issued` as `<file>.crt` / `<file>.key` and returns their paths.
    fn write(&self, file: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem).expect("cert");
        std::fs::write(&key, &issued.key_pem).expect("key");
        (cert, key)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8").to_owned()
}

async fn start(pki: &Pki, server: &Issued) -> anyhow::Result<(u16, Shutdown, Identity)> {
    start_with_health(pki, server, 0).await
}

async fn start_with_health(
    pki: &Pki,
    server: &Issued,
    health_port: u16,
) -> anyhow::Result<(u16, Shutdown, Identity)> {
    shop_testkit::telemetry();
    let db = TestDatabase::create().await;
    let identity = Identity::new();
    let mut settings = Settings::default();
    settings.service = identity.settings(settings.service, &db, &shop_testkit::kafka_brokers());
    let (cert, key) = pki.write("inventory-service", server);
    settings.service.tls_cert_file = path(&cert);
    settings.service.tls_key_file = path(&key);
    settings.service.tls_ca_file = path(&pki.ca_file());
    settings.service.health_port = health_port;
    let app = Application::build(settings).await?;
    let port = app.grpc_port();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    // The database stays ours until the test ends.
    std::mem::forget(db);
    Ok((port, shutdown, identity))
}

async fn client(
    pki: &Pki,
    port: u16,
    as_: Option<&Issued>,
) -> Result<InventoryServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca.cert_pem()))
        .domain_name("localhost");
    if let Some(issued) = as_ {
        tls = tls.identity(TlsIdentity::from_pem(&issued.cert_pem, &issued.key_pem));
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(InventoryServiceClient::new(channel))
}

fn reserve(identity: &Identity) -> tonic::Request<pb::ReserveStockRequest> {
    let mut request = tonic::Request::new(pb::ReserveStockRequest {
        order_id: uuid::Uuid::now_v7().to_string(),
        lines: vec![pb::ReservationLine {
            sku: "NO-SUCH-SKU".into(),
            quantity: 1,
            unit_price: None,
        }],
    });
    bearer(
        &mut request,
        "x-service-authorization",
        &identity.service_token("order-service"),
    );
    request
}

/// A failed connection or a transport error (TLS 1.3 refuses a client's
/// certificate after the client's side of the handshake is done), never the
/// service's own answer.
fn assert_no_answer(result: Result<(), tonic::Status>) {
    let status = result.expect_err("no answer");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{status:?}"
    );
}

#[tokio::test]
async fn only_the_mesh_ca_gets_in_and_the_certificate_decides_who_reserves() {
    let pki = Pki::new();
    let health_port = shop_testkit::free_port();
    let (port, shutdown, identity) =
        start_with_health(&pki, &pki.workload("inventory-service"), health_port)
            .await
            .expect("starts with TLS");

    // The order service's certificate and token: the call reaches the handler.
    let order = pki.workload("order-service");
    let mut as_order = shop_testkit::eventually(Duration::from_secs(15), || async {
        client(&pki, port, Some(&order)).await.ok()
    })
    .await
    .expect("a TLS client with the order service's certificate connects");
    let status = as_order
        .reserve_stock(reserve(&identity))
        .await
        .expect_err("no such product");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // The user service's certificate with the order service's token: refused by
    // the certificate's identity.
    let user = pki.workload("user-service");
    let mut as_user = client(&pki, port, Some(&user)).await.expect("connects");
    let status = as_user
        .reserve_stock(reserve(&identity))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("spiffe://shopmesh/user-service"),
        "{status:?}"
    );

    // No client certificate, another CA, or plaintext: no gRPC answer at all.
    let anonymous = match client(&pki, port, None).await {
        Ok(mut c) => c.reserve_stock(reserve(&identity)).await.map(|_| ()),
        Err(err) => Err(tonic::Status::unavailable(err.to_string())),
    };
    assert_no_answer(anonymous);
    let stranger = DevCa::new("another CA").expect("CA");
    let forged = stranger
        .workload("order-service", &["localhost"], valid_for(YEAR))
        .expect("cert");
    let foreign = match client(&pki, port, Some(&forged)).await {
        Ok(mut c) => c.reserve_stock(reserve(&identity)).await.map(|_| ()),
        Err(err) => Err(tonic::Status::unavailable(err.to_string())),
    };
    assert_no_answer(foreign);
    let plaintext = match InventoryServiceClient::connect(format!("http://127.0.0.1:{port}")).await
    {
        Ok(mut c) => c.reserve_stock(reserve(&identity)).await.map(|_| ()),
        Err(err) => Err(tonic::Status::unavailable(err.to_string())),
    };
    assert_no_answer(plaintext);

    // Probes that cannot present a certificate ask the plaintext health-only port,
    // which serves grpc.health.v1 and nothing else.
    shop_testkit::wait_serving(health_port).await;
    let on_health_port =
        match InventoryServiceClient::connect(format!("http://127.0.0.1:{health_port}")).await {
            Ok(mut c) => c.reserve_stock(reserve(&identity)).await.map(|_| ()),
            Err(err) => Err(tonic::Status::unavailable(err.to_string())),
        };
    assert_eq!(
        on_health_port.expect_err("health only").code(),
        Code::Unimplemented
    );
    shutdown.trigger();
}

/// The server's certificate as a new handshake sees it.
async fn served_certificate(pki: &Pki, port: u16, as_: &Issued) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes()).expect("ca"))
        .expect("root");
    let chain = vec![CertificateDer::from_pem_slice(as_.cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(as_.key_pem.as_bytes()).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart_and_an_expired_one_is_refused() {
    let pki = Pki::new();
    let first = pki.workload("inventory-service");
    let (port, shutdown, _) = start(&pki, &first).await.expect("starts");
    let order = pki.workload("order-service");
    let der = |issued: &Issued| {
        use rustls_pki_types::pem::PemObject as _;
        rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .expect("pem")
            .to_vec()
    };
    let served = shop_testkit::eventually(Duration::from_secs(15), || async {
        Some(served_certificate(&pki, port, &order).await)
    })
    .await;
    assert_eq!(served, Some(der(&first)));

    // Rotation: new files, the next handshake gets the new certificate.
    let second = pki.workload("inventory-service");
    pki.write("inventory-service", &second);
    let rotated = shop_testkit::eventually(Duration::from_secs(10), || async {
        (served_certificate(&pki, port, &order).await == der(&second)).then_some(())
    })
    .await;
    assert!(rotated.is_some(), "the rotated certificate is served");

    // An expired pair on disk is not served: the last good one stays.
    let now = time::OffsetDateTime::now_utc();
    let expired = pki
        .ca
        .workload(
            "inventory-service",
            &["localhost", "127.0.0.1"],
            now - time::Duration::days(30)..now - time::Duration::days(1),
        )
        .expect("expired cert");
    pki.write("inventory-service", &expired);
    assert_eq!(served_certificate(&pki, port, &order).await, der(&second));
    shutdown.trigger();

    // And a service given an expired certificate does not start, naming it.
    let pki = Pki::new();
    let stale = pki
        .ca
        .workload(
            "inventory-service",
            &["localhost"],
            now - time::Duration::days(30)..now - time::Duration::days(1),
        )
        .expect("expired cert");
    let err = start(&pki, &stale).await.expect_err("expired refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("TLS_CERT_FILE") && text.contains("expired"),
        "{text}"
    );
}
