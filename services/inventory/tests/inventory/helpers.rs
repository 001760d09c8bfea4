use shop_inventory::{Application, Settings};
use shop_platform::Shutdown;
use shop_proto::common::Money;
use shop_proto::inventory as pb;
use shop_proto::inventory::inventory_service_client::InventoryServiceClient;
use shop_testkit::{Identity, TestDatabase, bearer};
use tonic::transport::Channel;
use tonic::{Request, Status};

pub struct TestApp {
    pub grpc_port: u16,
    pub client: InventoryServiceClient<Channel>,
    pub identity: Identity,
    pub db: TestDatabase,
    /// What it was built with, for another copy of it.
    settings: Settings,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A second copy of a TestApp's service: the same database, keys and group.
pub struct Replica {
    pub client: InventoryServiceClient<Channel>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("join").expect("clean stop");
    }
}

/// Builds and starts `settings`' service; returns its port, a client and its stop.
async fn start(
    settings: Settings,
) -> (
    u16,
    InventoryServiceClient<Channel>,
    Shutdown,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let app = Application::build(settings)
        .await
        .expect("application builds");
    let grpc_port = app.grpc_port();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    shop_testkit::wait_serving(grpc_port).await;
    let client = InventoryServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .expect("connect");
    (grpc_port, client, shutdown, task)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&shop_testkit::kafka_brokers(), |_| {}).await
}

/// Starts the service's own Application code on free ports with a database of its own.
pub async fn spawn_app_with(brokers: &str, tune: impl FnOnce(&mut Settings)) -> TestApp {
    shop_testkit::telemetry();
    let db = TestDatabase::create().await;
    let identity = Identity::new();
    let mut settings = Settings::default();
    settings.service = identity.settings(settings.service, &db, brokers);
    tune(&mut settings);
    let (grpc_port, client, shutdown, task) = start(settings.clone()).await;
    TestApp {
        grpc_port,
        client,
        identity,
        db,
        settings,
        shutdown,
        task,
    }
}

/// GetProduct on `client` (any copy's), which must find `sku`.
pub async fn product_from(client: &InventoryServiceClient<Channel>, sku: &str) -> pb::Product {
    client
        .clone()
        .get_product(pb::GetProductRequest { sku: sku.into() })
        .await
        .expect("get product")
        .into_inner()
        .product
        .expect("product")
}

pub fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "EUR".into(),
        amount_minor,
    })
}

pub fn sku(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase()
    )
}

pub fn order_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl TestApp {
    /// Another copy of this service, as a second replica would run.
    pub async fn replica(&self) -> Replica {
        let (_, client, shutdown, task) = start(self.settings.clone()).await;
        Replica {
            client,
            shutdown,
            task,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    pub fn as_admin<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        bearer(&mut request, "authorization", &self.identity.admin_token());
        request
    }

    /// A request from the order service, acting for a customer.
    pub fn as_order_service<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        bearer(
            &mut request,
            "x-service-authorization",
            &self.identity.service_token("order-service"),
        );
        bearer(
            &mut request,
            "authorization",
            &self.identity.customer_token(),
        );
        request
    }

    pub async fn create_product(&self, sku: &str, stock: i64, price: i64) -> pb::Product {
        self.client
            .clone()
            .create_product(self.as_admin(pb::CreateProductRequest {
                sku: sku.into(),
                name: format!("Product {sku}"),
                description: "test product".into(),
                unit_price: eur(price),
                initial_stock: stock,
            }))
            .await
            .expect("create product")
            .into_inner()
            .product
            .expect("product")
    }

    pub async fn product(&self, sku: &str) -> pb::Product {
        product_from(&self.client, sku).await
    }

    pub async fn reserve(
        &self,
        order_id: &str,
        lines: &[(&str, i64)],
    ) -> Result<pb::Reservation, Status> {
        let lines = lines
            .iter()
            .map(|(sku, quantity)| pb::ReservationLine {
                sku: (*sku).into(),
                quantity: *quantity,
                unit_price: None,
            })
            .collect();
        self.client
            .clone()
            .reserve_stock(self.as_order_service(pb::ReserveStockRequest {
                order_id: order_id.into(),
                lines,
            }))
            .await
            .map(|r| r.into_inner().reservation.expect("reservation"))
    }

    pub async fn release(&self, order_id: &str) -> Result<pb::Reservation, Status> {
        self.client
            .clone()
            .release_reservation(self.as_order_service(pb::ReleaseReservationRequest {
                order_id: order_id.into(),
            }))
            .await
            .map(|r| r.into_inner().reservation.expect("reservation"))
    }

    pub async fn commit(&self, order_id: &str) -> Result<pb::Reservation, Status> {
        self.client
            .clone()
            .commit_reservation(self.as_order_service(pb::CommitReservationRequest {
                order_id: order_id.into(),
            }))
            .await
            .map(|r| r.into_inner().reservation.expect("reservation"))
    }

    pub async fn adjust(
        &self,
        sku: &str,
        delta: i64,
        request_id: &str,
    ) -> Result<pb::Product, Status> {
        self.client
            .clone()
            .adjust_stock(self.as_admin(pb::AdjustStockRequest {
                sku: sku.into(),
                delta,
                reason: "test".into(),
                request_id: request_id.into(),
            }))
            .await
            .map(|r| r.into_inner().product.expect("product"))
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.db.url).await.expect("pool")
    }

    /// Checks the stock invariants (tests/chaos: conservation, nothing negative,
    /// adjusted, reserved and sold equal what adjustments and reservations say)
    /// for every SKU, from the tables alone.
    pub async fn assert_stock_invariants(&self) {
        let pool = self.pool().await;
        let mut rows = shop_chaos::Rows::new();
        shop_chaos::gather::read_database(&mut rows, "inventory", &pool, &["products"])
            .await
            .expect("products");
        let mut snapshot = shop_chaos::Snapshot::default();
        snapshot.add_rows(&rows).expect("snapshot");
        let report = shop_chaos::check(&snapshot);
        assert_eq!(report.checked, vec!["6 stock adds up"]);
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("join").expect("clean stop");
    }
}
