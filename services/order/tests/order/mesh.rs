use std::time::Duration;

use shop_platform::Shutdown;
use shop_platform::config::Secret;
use shop_proto::common::Money;
use shop_proto::inventory as inv;
use shop_proto::inventory::inventory_service_client::InventoryServiceClient;
use shop_proto::order as pb;
use shop_proto::order::order_service_client::OrderServiceClient;
use shop_proto::user as user_pb;
use shop_proto::user::user_service_client::UserServiceClient;
use shop_testkit::{Broker, Identity, TestDatabase, bearer};
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const PASSWORD: &str = "correct horse battery staple";

/// One running service: its port, database and stop handle.
pub struct Running {
    pub port: u16,
    pub db: TestDatabase,
    /// The consumer group its event consumer commits under.
    pub group: String,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) -> TestDatabase {
        self.shutdown.trigger();
        self.task.await.expect("join").expect("clean stop");
        self.db
    }
}

/// The three services, each with its own database, on a broker of their own.
pub struct Mesh {
    pub broker: Broker,
    pub identity: Identity,
    pub user: Option<Running>,
    pub user_port: u16,
    pub inventory: Option<Running>,
    pub inventory_port: u16,
    pub order: Option<Running>,
    pub order_port: u16,
}

pub async fn start_user(identity: &Identity, brokers: &str) -> Running {
    let db = TestDatabase::create().await;
    let mut settings = shop_user::Settings::default();
    settings.service = identity.settings(settings.service, &db, brokers);
    settings.accounts.auth_private_key = Secret::new(identity.auth.private_pem.clone());
    let group = settings.service.kafka_group_id.clone();
    let app = shop_user::Application::build(settings)
        .await
        .expect("user service");
    let port = app.grpc_port();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    identity.wait_serving(port).await;
    Running {
        port,
        db,
        group,
        shutdown,
        task,
    }
}

/// Inventory on `port` (fixed, so that a restart keeps the address the order service dials).
pub async fn start_inventory(
    identity: &Identity,
    brokers: &str,
    port: u16,
    db: Option<TestDatabase>,
) -> Running {
    let db = match db {
        Some(db) => db,
        None => TestDatabase::create().await,
    };
    let mut settings = shop_inventory::Settings::default();
    settings.service = identity.settings(settings.service, &db, brokers);
    settings.service.grpc_port = port;
    let group = settings.service.kafka_group_id.clone();
    let app = shop_inventory::Application::build(settings)
        .await
        .expect("inventory service");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    identity.wait_serving(port).await;
    Running {
        port,
        db,
        group,
        shutdown,
        task,
    }
}

/// The order service's settings for this mesh (also used to start its binary).
pub fn order_settings(
    identity: &Identity,
    brokers: &str,
    db: &TestDatabase,
    inventory_port: u16,
) -> shop_order::Settings {
    let mut settings = shop_order::Settings::default();
    settings.service = identity.settings(settings.service, db, brokers);
    settings.saga.inventory_service_addr = identity.address(inventory_port);
    settings.saga.recovery_after_ms = 1000;
    settings.saga.recovery_interval_ms = 200;
    settings.saga.rpc_timeout_ms = 1000;
    settings.saga.request_deadline_ms = 4000;
    settings
}

impl Mesh {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The mesh with mutual TLS on every gRPC port and call.
    pub async fn start_tls() -> Self {
        Self::start_identity(Identity::with_tls(), |_| {}).await
    }

    /// The mesh with the order service's settings changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut shop_order::Settings)) -> Self {
        Self::start_identity(Identity::new(), configure).await
    }

    async fn start_identity(
        identity: Identity,
        configure: impl FnOnce(&mut shop_order::Settings),
    ) -> Self {
        shop_testkit::telemetry();
        let broker = Broker::start();
        let user = start_user(&identity, &broker.brokers).await;
        let inventory_port = shop_testkit::free_port();
        let inventory = start_inventory(&identity, &broker.brokers, inventory_port, None).await;
        let db = TestDatabase::create().await;
        let user_port = user.port;
        let mut settings = order_settings(&identity, &broker.brokers, &db, inventory_port);
        configure(&mut settings);
        let group = settings.service.kafka_group_id.clone();
        let app = shop_order::Application::build(settings)
            .await
            .expect("order service");
        let order_port = app.grpc_port();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        identity.wait_serving(order_port).await;
        Self {
            broker,
            identity,
            user: Some(user),
            user_port,
            inventory: Some(inventory),
            inventory_port,
            order: Some(Running {
                port: order_port,
                db,
                group,
                shutdown,
                task,
            }),
            order_port,
        }
    }

    /// The settings of another copy of the running order service: the same
    /// database, peers and consumer group, as a replica has.
    pub fn another_order_copy(&self) -> shop_order::Settings {
        let order = self.order.as_ref().expect("order service");
        let mut settings = order_settings(
            &self.identity,
            &self.broker.brokers,
            &order.db,
            self.inventory_port,
        );
        settings.service.kafka_group_id = order.group.clone();
        settings
    }

    /// Connects on first use, so a service that is restarting answers UNAVAILABLE;
    /// over mutual TLS when the mesh speaks it.
    pub fn channel(&self, port: u16) -> Channel {
        self.identity.channel(port)
    }

    pub async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.channel(self.order_port))
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel(self.user_port))
    }

    pub async fn inventory_client(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::new(self.channel(self.inventory_port))
    }

    /// Registers a customer through the user service and signs in: (user id, token).
    pub async fn customer(&self) -> (String, String) {
        let email = format!("buyer-{}@example.com", uuid::Uuid::now_v7().simple());
        let mut users = self.users().await;
        let user = users
            .register(user_pb::RegisterRequest {
                email: email.clone(),
                password: PASSWORD.into(),
                display_name: String::new(),
            })
            .await
            .expect("register")
            .into_inner()
            .user
            .expect("user");
        let token = users
            .login(user_pb::LoginRequest {
                email,
                password: PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token;
        (user.user_id, token)
    }

    /// A new customer's token and their confirmed order of one unit of a new product.
    pub async fn confirmed_order(&self, prefix: &str) -> (String, pb::Order) {
        let s = sku(prefix);
        self.product(&s, 5, 100).await;
        let (_, token) = self.customer().await;
        let order = self
            .create_order(&token, "", &[(&s, 1)])
            .await
            .expect("create");
        assert_eq!(order.status, pb::OrderStatus::Confirmed as i32);
        (token, order)
    }

    pub async fn product(&self, sku: &str, stock: i64, price_minor: i64) {
        let mut request = Request::new(inv::CreateProductRequest {
            sku: sku.into(),
            name: format!("Product {sku}"),
            description: String::new(),
            unit_price: Some(Money {
                currency_code: "EUR".into(),
                amount_minor: price_minor,
            }),
            initial_stock: stock,
        });
        bearer(&mut request, "authorization", &self.identity.admin_token());
        self.inventory_client()
            .await
            .create_product(request)
            .await
            .expect("create product");
    }

    pub async fn stock(&self, sku: &str) -> (i64, i64, i64) {
        let p = self
            .inventory_client()
            .await
            .get_product(inv::GetProductRequest { sku: sku.into() })
            .await
            .expect("get product")
            .into_inner()
            .product
            .expect("product");
        (p.available, p.reserved, p.sold)
    }

    pub async fn user_stats(&self, user_id: &str, token: &str) -> user_pb::UserStats {
        let mut request = Request::new(user_pb::GetUserRequest {
            user_id: user_id.into(),
        });
        bearer(&mut request, "authorization", token);
        self.users()
            .await
            .get_user(request)
            .await
            .expect("get user")
            .into_inner()
            .user
            .expect("user")
            .stats
            .expect("stats")
    }

    pub async fn create_order(
        &self,
        token: &str,
        request_id: &str,
        lines: &[(&str, i64)],
    ) -> Result<pb::Order, Status> {
        let mut request = Request::new(pb::CreateOrderRequest {
            request_id: request_id.into(),
            lines: lines
                .iter()
                .map(|(s, q)| pb::CreateOrderLine {
                    sku: (*s).into(),
                    quantity: *q,
                })
                .collect(),
        });
        bearer(&mut request, "authorization", token);
        self.orders()
            .await
            .create_order(request)
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    pub async fn get_order(&self, token: &str, order_id: &str) -> Result<pb::Order, Status> {
        let mut request = Request::new(pb::GetOrderRequest {
            order_id: order_id.into(),
        });
        bearer(&mut request, "authorization", token);
        self.orders()
            .await
            .get_order(request)
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    pub async fn watch(
        &self,
        token: &str,
        order_id: &str,
    ) -> Result<tonic::Streaming<pb::WatchOrderResponse>, Status> {
        let mut request = Request::new(pb::WatchOrderRequest {
            order_id: order_id.into(),
        });
        bearer(&mut request, "authorization", token);
        self.orders()
            .await
            .watch_order(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn cancel(&self, token: &str, order_id: &str) -> Result<pb::Order, Status> {
        let mut request = Request::new(pb::CancelOrderRequest {
            order_id: order_id.into(),
            reason: "changed my mind".into(),
        });
        bearer(&mut request, "authorization", token);
        self.orders()
            .await
            .cancel_order(request)
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    /// Waits until `check` holds, failing with `what` after 30 s.
    pub async fn until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let ok = shop_testkit::eventually(Duration::from_secs(30), || {
            let fut = check();
            async move { fut.await.then_some(()) }
        })
        .await;
        assert!(ok.is_some(), "timed out waiting for: {what}");
    }
}

pub fn sku(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6].to_uppercase()
    )
}
