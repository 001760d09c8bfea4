use std::time::{Duration, Instant};

use shop_proto::order as pb;
use shop_testkit::bearer;
use tonic::{Code, Request};

use crate::mesh::{Mesh, sku, start_inventory};

async fn count(mesh: &Mesh, token: &str, status: pb::OrderStatus) -> usize {
    let mut request = Request::new(pb::ListOrdersRequest {
        status: status as i32,
        ..Default::default()
    });
    bearer(&mut request, "authorization", token);
    mesh.orders()
        .await
        .list_orders(request)
        .await
        .expect("list")
        .into_inner()
        .orders
        .len()
}

#[tokio::test]
async fn with_inventory_down_create_fails_fast_and_the_recovery_loop_settles_the_order() {
    let mut mesh = Mesh::start().await;
    let s = sku("OUT");
    mesh.product(&s, 5, 100).await;
    let (_, token) = mesh.customer().await;

    let db = mesh.inventory.take().expect("inventory").stop().await;
    let started = Instant::now();
    let err = mesh
        .create_order(&token, "out-1", &[(&s, 2)])
        .await
        .expect_err("inventory is down");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("pending"), "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        started.elapsed()
    );
    assert_eq!(count(&mesh, &token, pb::OrderStatus::Pending).await, 1);

    // Inventory comes back on the same address and database; nobody retries, yet the
    // recovery loop resumes the saga.
    mesh.inventory = Some(
        start_inventory(
            &mesh.identity,
            &mesh.broker.brokers,
            mesh.inventory_port,
            Some(db),
        )
        .await,
    );
    mesh.until("recovery confirmed the pending order", || async {
        count(&mesh, &token, pb::OrderStatus::Confirmed).await == 1
    })
    .await;
    let order = mesh
        .create_order(&token, "out-1", &[(&s, 2)])
        .await
        .expect("the retry sees the outcome");
    assert_eq!(order.status, pb::OrderStatus::Confirmed as i32);
    mesh.until("stock committed once", || async {
        mesh.stock(&s).await == (3, 0, 2)
    })
    .await;
}

#[tokio::test]
async fn with_the_user_service_down_orders_are_still_taken_on_the_token_alone() {
    let mut mesh = Mesh::start().await;
    let s = sku("USR");
    mesh.product(&s, 5, 100).await;
    let (_, token) = mesh.customer().await;
    mesh.user.take().expect("user").stop().await;
    // The token proves who orders (the saga reads nothing of the user's), and
    // the order service already holds the keys that verify it.
    let order = mesh
        .create_order(&token, "", &[(&s, 1)])
        .await
        .expect("ordered with the user service down");
    assert_eq!(order.status, pb::OrderStatus::Confirmed as i32);
    assert_eq!(mesh.stock(&s).await.0, 4, "the stock is held for it");
}
