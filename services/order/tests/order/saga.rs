//! Every branch of the saga's `resume` and `settle`, with the order service's own
//! code on a real PostgreSQL and its peers replaced by scripted gRPC servers on
//! free ports: the seam is the network, as in production, and each answer the
//! peers can give is played on purpose.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shop_platform::Shutdown;
use shop_platform::auth::Role;
use shop_platform::error::{ApiError, PreconditionViolation};
use shop_proto::common::Money;
use shop_proto::inventory as inv;
use shop_proto::inventory::inventory_service_server::{InventoryService, InventoryServiceServer};
use shop_proto::order as pb;
use shop_proto::order::order_service_client::OrderServiceClient;
use shop_testkit::{Identity, TestDatabase, bearer};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::mesh::order_settings;

/// What the scripted inventory answers to one ReserveStock.
#[derive(Clone, Copy, Debug)]
enum Reserve {
    /// HELD, every line priced in EUR.
    Hold,
    /// FAILED_PRECONDITION naming the first SKU short of stock.
    Short,
    /// NOT_FOUND naming the SKUs.
    UnknownSku,
    /// The reservation, but EXPIRED.
    Expired,
    /// HELD, the second line priced in another currency.
    TwoCurrencies,
    /// UNAVAILABLE, as during an outage.
    Down,
    /// No answer for longer than the order service's per-call deadline.
    Hang,
}

#[derive(Default)]
struct Inventory {
    script: Mutex<VecDeque<Reserve>>,
    reserves: AtomicUsize,
    releases: AtomicUsize,
    commits: AtomicUsize,
}

impl Inventory {
    fn next(&self) -> Reserve {
        let mut script = self.script.lock().expect("script");
        // The last step repeats once the script is played.
        if script.len() > 1 {
            script.pop_front().expect("step")
        } else {
            *script.front().unwrap_or(&Reserve::Hold)
        }
    }
}

fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "EUR".into(),
        amount_minor,
    })
}

#[tonic::async_trait]
impl InventoryService for Inventory {
    async fn reserve_stock(
        &self,
        request: Request<inv::ReserveStockRequest>,
    ) -> Result<Response<inv::ReserveStockResponse>, Status> {
        self.reserves.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let skus: Vec<String> = request.lines.iter().map(|l| l.sku.clone()).collect();
        let step = self.next();
        let status = match step {
            Reserve::Hold | Reserve::TwoCurrencies => inv::ReservationStatus::Held,
            Reserve::Expired => inv::ReservationStatus::Expired,
            Reserve::Short => {
                return Err(ApiError::Precondition {
                    message: format!("insufficient stock for {}", skus[0]),
                    violations: vec![PreconditionViolation {
                        kind: "STOCK".into(),
                        subject: skus[0].clone(),
                        description: "not enough stock".into(),
                    }],
                }
                .into());
            }
            Reserve::UnknownSku => {
                return Err(ApiError::NotFound {
                    resource: "product",
                    id: skus.join(", "),
                }
                .into());
            }
            Reserve::Down => return Err(Status::unavailable("inventory is restarting")),
            Reserve::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return Err(Status::unavailable("too late"));
            }
        };
        let lines = request
            .lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| inv::ReservationLine {
                unit_price: if i == 1 && matches!(step, Reserve::TwoCurrencies) {
                    Some(Money {
                        currency_code: "USD".into(),
                        amount_minor: 300,
                    })
                } else {
                    eur(250)
                },
                ..l
            })
            .collect();
        Ok(Response::new(inv::ReserveStockResponse {
            reservation: Some(inv::Reservation {
                order_id: request.order_id,
                lines,
                status: status as i32,
                expire_time: None,
            }),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<inv::ReleaseReservationRequest>,
    ) -> Result<Response<inv::ReleaseReservationResponse>, Status> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(inv::ReleaseReservationResponse {
            reservation: Some(inv::Reservation {
                order_id: request.into_inner().order_id,
                status: inv::ReservationStatus::Released as i32,
                ..inv::Reservation::default()
            }),
        }))
    }

    async fn commit_reservation(
        &self,
        request: Request<inv::CommitReservationRequest>,
    ) -> Result<Response<inv::CommitReservationResponse>, Status> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(inv::CommitReservationResponse {
            reservation: Some(inv::Reservation {
                order_id: request.into_inner().order_id,
                status: inv::ReservationStatus::Committed as i32,
                ..inv::Reservation::default()
            }),
        }))
    }

    async fn create_product(
        &self,
        _: Request<inv::CreateProductRequest>,
    ) -> Result<Response<inv::CreateProductResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn import_products(
        &self,
        _: Request<tonic::Streaming<inv::ImportProductsRequest>>,
    ) -> Result<Response<inv::ImportProductsResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn update_product(
        &self,
        _: Request<inv::UpdateProductRequest>,
    ) -> Result<Response<inv::UpdateProductResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn get_product(
        &self,
        _: Request<inv::GetProductRequest>,
    ) -> Result<Response<inv::GetProductResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn list_products(
        &self,
        _: Request<inv::ListProductsRequest>,
    ) -> Result<Response<inv::ListProductsResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn adjust_stock(
        &self,
        _: Request<inv::AdjustStockRequest>,
    ) -> Result<Response<inv::AdjustStockResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

/// The order service and a scripted inventory.
struct Rig {
    inventory: Arc<Inventory>,
    orders: OrderServiceClient<Channel>,
    token: String,
    _db: TestDatabase,
    _stop: Shutdown,
}

async fn serve_inventory(inventory: Arc<Inventory>, stop: Shutdown) -> u16 {
    let (listener, addr) = shop_platform::grpc::bind("127.0.0.1", 0)
        .await
        .expect("bind");
    let server = tonic::transport::Server::builder()
        .add_service(InventoryServiceServer::from_arc(inventory))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move { stop.wait().await },
        );
    tokio::spawn(server);
    addr.port()
}

impl Rig {
    async fn start(script: &[Reserve], configure: impl FnOnce(&mut shop_order::Settings)) -> Self {
        shop_testkit::telemetry();
        let inventory = Arc::new(Inventory::default());
        inventory.script.lock().expect("script").extend(script);
        let stop = Shutdown::new();
        let inventory_port = serve_inventory(inventory.clone(), stop.clone()).await;
        let identity = Identity::new();
        let db = TestDatabase::create().await;
        let mut settings = order_settings(
            &identity,
            &shop_testkit::kafka_brokers(),
            &db,
            inventory_port,
        );
        configure(&mut settings);
        let app = shop_order::Application::build(settings)
            .await
            .expect("order service");
        let port = app.grpc_port();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        shop_testkit::wait_serving(port).await;
        let orders = OrderServiceClient::new(
            Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("uri")
                .connect_lazy(),
        );
        let token = identity.user_token(uuid::Uuid::now_v7(), Role::Customer);
        Self {
            inventory,
            orders,
            token,
            _db: db,
            _stop: stop,
        }
    }

    async fn create(&self, lines: &[(&str, i64)]) -> Result<pb::Order, Status> {
        let mut request = Request::new(pb::CreateOrderRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| pb::CreateOrderLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
        });
        bearer(&mut request, "authorization", &self.token);
        self.orders
            .clone()
            .create_order(request)
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    async fn list(&self) -> Vec<pb::Order> {
        let mut request = Request::new(pb::ListOrdersRequest::default());
        bearer(&mut request, "authorization", &self.token);
        self.orders
            .clone()
            .list_orders(request)
            .await
            .expect("list")
            .into_inner()
            .orders
    }

    async fn cancel(&self, order_id: &str) -> Result<pb::Order, Status> {
        let mut request = Request::new(pb::CancelOrderRequest {
            order_id: order_id.into(),
            reason: "changed my mind".into(),
        });
        bearer(&mut request, "authorization", &self.token);
        self.orders
            .clone()
            .cancel_order(request)
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    /// The only order, once its status is `status` (the recovery loop runs every 200 ms).
    async fn settles_as(&self, status: pb::OrderStatus) -> pb::Order {
        let reached = shop_testkit::eventually(Duration::from_secs(20), || async {
            self.list()
                .await
                .into_iter()
                .next()
                .filter(|o| o.status == status as i32)
        })
        .await;
        match reached {
            Some(order) => order,
            None => panic!("never {status:?}: {:?}", self.list().await),
        }
    }
}

const LINES: [(&str, i64); 2] = [("MUG-001", 2), ("BOOK-042", 1)];

#[tokio::test]
async fn a_held_reservation_confirms_with_inventorys_prices_and_commits() {
    let rig = Rig::start(&[Reserve::Hold], |_| {}).await;
    let order = rig.create(&LINES).await.expect("confirmed");
    assert_eq!(order.status, pb::OrderStatus::Confirmed as i32);
    assert_eq!(order.total, eur(750), "2 × 2.50 + 1 × 2.50 EUR");
    let committed = shop_testkit::eventually(Duration::from_secs(10), || async {
        (rig.inventory.commits.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    assert!(
        committed.is_some(),
        "the hold is committed after confirming"
    );
}

#[tokio::test]
async fn refused_reservations_reject_the_order_naming_why() {
    for (answer, reason) in [
        // The order service sends its lines sorted by SKU.
        (Reserve::Short, "insufficient stock for BOOK-042"),
        (Reserve::UnknownSku, "unknown product BOOK-042, MUG-001"),
        (
            Reserve::Expired,
            "the stock reservation expired before the order was confirmed",
        ),
    ] {
        let rig = Rig::start(&[answer], |_| {}).await;
        let err = rig.create(&LINES).await.expect_err("rejected");
        assert_eq!(err.code(), Code::FailedPrecondition, "{answer:?}");
        let stored = rig.list().await.remove(0);
        assert_eq!(
            stored.status,
            pb::OrderStatus::Rejected as i32,
            "{answer:?}"
        );
        assert_eq!(stored.rejection_reason, reason, "{answer:?}");
        assert_eq!(
            rig.inventory.releases.load(Ordering::SeqCst),
            0,
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn two_currencies_reject_and_release_the_hold_at_once() {
    let rig = Rig::start(&[Reserve::TwoCurrencies], |_| {}).await;
    let err = rig.create(&LINES).await.expect_err("rejected");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("different currencies"),
        "{}",
        err.message()
    );
    assert_eq!(rig.inventory.releases.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reservation_that_times_out_is_resumed_and_confirmed_by_the_recovery_loop() {
    // The first call and all its hedges hang; the recovery loop's call is held.
    let rig = Rig::start(
        &[
            Reserve::Hang,
            Reserve::Hang,
            Reserve::Hang,
            Reserve::Hang,
            Reserve::Hold,
        ],
        |_| {},
    )
    .await;
    let err = rig.create(&LINES).await.expect_err("pending");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("pending"), "{}", err.message());
    let order = rig.settles_as(pb::OrderStatus::Confirmed).await;
    assert_eq!(order.total, eur(750));
    assert!(rig.inventory.reserves.load(Ordering::SeqCst) >= 5);
}

#[tokio::test]
async fn a_reservation_that_hangs_is_hedged_and_the_order_confirms_at_once() {
    // A copy of inventory that froze mid-call: the hedge, sent after 250 ms,
    // reaches a copy that answers.
    let rig = Rig::start(&[Reserve::Hang, Reserve::Hold], |_| {}).await;
    let started = std::time::Instant::now();
    let order = rig.create(&LINES).await.expect("confirmed by the hedge");
    assert_eq!(order.status(), pb::OrderStatus::Confirmed);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rig.inventory.reserves.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cancel_racing_the_confirmation_is_refused_until_the_order_is_confirmed() {
    // Down for every attempt the first call makes (it retries UNAVAILABLE), then held.
    let rig = Rig::start(
        &[
            Reserve::Down,
            Reserve::Down,
            Reserve::Down,
            Reserve::Down,
            Reserve::Hold,
        ],
        |_| {},
    )
    .await;
    let err = rig.create(&LINES).await.expect_err("pending");
    assert_eq!(err.code(), Code::Unavailable);
    let pending = rig.list().await.remove(0);
    let refused = rig.cancel(&pending.order_id).await.expect_err("pending");
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        refused.message()
    );
    let confirmed = rig.settles_as(pb::OrderStatus::Confirmed).await;
    let cancelled = rig.cancel(&confirmed.order_id).await.expect("cancel");
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    let again = rig.cancel(&confirmed.order_id).await.expect("idempotent");
    assert_eq!(again.status, pb::OrderStatus::Cancelled as i32);
}

#[tokio::test]
async fn an_order_pending_past_the_give_up_time_is_rejected_and_its_stock_released() {
    let rig = Rig::start(&[Reserve::Down], |settings| {
        settings.saga.pending_give_up_ms = 1_500;
    })
    .await;
    let err = rig.create(&LINES).await.expect_err("pending");
    assert_eq!(err.code(), Code::Unavailable);
    let order = rig.settles_as(pb::OrderStatus::Rejected).await;
    assert_eq!(
        order.rejection_reason,
        "the order could not be completed in time"
    );
    let released = shop_testkit::eventually(Duration::from_secs(10), || async {
        (rig.inventory.releases.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    assert!(released.is_some(), "the hold is given back");
}
