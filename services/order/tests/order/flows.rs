use std::time::Duration;

use prost::{Message, Name};
use shop_proto::common::Money;
use shop_proto::order as pb;
use shop_testkit::{bearer, read_topic};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::mesh::{Mesh, sku};

fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "EUR".into(),
        amount_minor,
    })
}

#[tokio::test]
async fn a_confirmed_order_reserves_then_commits_stock_and_updates_user_figures() {
    let mesh = Mesh::start().await;
    let (mug, lamp) = (sku("MUG"), sku("LAMP"));
    mesh.product(&mug, 10, 1299).await;
    mesh.product(&lamp, 5, 3499).await;
    let (user_id, token) = mesh.customer().await;

    let order = mesh
        .create_order(&token, "", &[(&mug, 2), (&lamp, 1)])
        .await
        .expect("create");
    assert_eq!(order.status, pb::OrderStatus::Confirmed as i32);
    assert_eq!(order.user_id, user_id);
    assert_eq!(order.total, eur(2 * 1299 + 3499), "priced by inventory");
    let mug_line = order.lines.iter().find(|l| l.sku == mug).expect("mug line");
    assert_eq!(mug_line.unit_price, eur(1299));
    assert_eq!(mug_line.line_total, eur(2598));

    // Reserved at once; sold once inventory has consumed OrderConfirmed.
    mesh.until("stock committed", || async {
        mesh.stock(&mug).await == (8, 0, 2)
    })
    .await;
    assert_eq!(mesh.stock(&lamp).await, (4, 0, 1));
    mesh.until("user figures updated", || async {
        mesh.user_stats(&user_id, &token).await.order_count == 1
    })
    .await;
    let stats = mesh.user_stats(&user_id, &token).await;
    assert_eq!(
        stats.lifetime_spend,
        vec![Money {
            currency_code: "EUR".into(),
            amount_minor: 6097
        }]
    );

    let order_id = order.order_id.clone();
    let records = read_topic(
        &mesh.broker.brokers,
        shop_proto::order::EVENTS_TOPIC,
        Duration::from_secs(15),
        1,
        move |r| r.key.as_deref() == Some(order_id.as_str()),
    )
    .await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].headers["ce_type"],
        pb::OrderConfirmed::full_name()
    );
    let event = pb::OrderConfirmed::decode(records[0].payload.as_slice()).expect("decode");
    assert_eq!(event.total, eur(6097));
    assert!(records[0].headers.contains_key("traceparent"));
}

#[tokio::test]
async fn an_order_without_enough_stock_is_rejected_naming_the_sku_and_holds_nothing() {
    let mesh = Mesh::start().await;
    let (plenty, scarce) = (sku("OK"), sku("FEW"));
    mesh.product(&plenty, 10, 100).await;
    mesh.product(&scarce, 1, 100).await;
    let (_, token) = mesh.customer().await;

    let err = mesh
        .create_order(&token, "", &[(&plenty, 1), (&scarce, 2)])
        .await
        .expect_err("rejected");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains(&format!("insufficient stock for {scarce}")),
        "{}",
        err.message()
    );
    let details = err.get_error_details();
    let violations = &details.precondition_failure().expect("details").violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].subject, scarce);

    assert_eq!(mesh.stock(&plenty).await, (10, 0, 0), "nothing held");
    assert_eq!(mesh.stock(&scarce).await, (1, 0, 0));

    let mut request = Request::new(pb::ListOrdersRequest {
        status: pb::OrderStatus::Rejected as i32,
        ..Default::default()
    });
    bearer(&mut request, "authorization", &token);
    let rejected = mesh
        .orders()
        .await
        .list_orders(request)
        .await
        .expect("list")
        .into_inner()
        .orders;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].unavailable_skus, vec![scarce.clone()]);

    let err = mesh
        .create_order(&token, "", &[("NOPE-404", 1)])
        .await
        .expect_err("unknown product");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("unknown product NOPE-404"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn cancelling_a_confirmed_order_brings_the_stock_back_and_the_figures_down() {
    let mesh = Mesh::start().await;
    let s = sku("CXL");
    mesh.product(&s, 6, 500).await;
    let (user_id, token) = mesh.customer().await;
    let order = mesh
        .create_order(&token, "", &[(&s, 4)])
        .await
        .expect("create");
    mesh.until("committed", || async { mesh.stock(&s).await == (2, 0, 4) })
        .await;
    mesh.until("counted", || async {
        mesh.user_stats(&user_id, &token).await.order_count == 1
    })
    .await;

    let (_, stranger) = mesh.customer().await;
    let err = mesh
        .cancel(&stranger, &order.order_id)
        .await
        .expect_err("not theirs");
    assert_eq!(err.code(), Code::PermissionDenied);

    let cancelled = mesh.cancel(&token, &order.order_id).await.expect("cancel");
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    let again = mesh
        .cancel(&token, &order.order_id)
        .await
        .expect("cancel is idempotent");
    assert_eq!(again.status, pb::OrderStatus::Cancelled as i32);
    mesh.until("stock back", || async { mesh.stock(&s).await == (6, 0, 0) })
        .await;
    mesh.until("figures down", || async {
        mesh.user_stats(&user_id, &token).await.order_count == 0
    })
    .await;
    assert!(
        mesh.user_stats(&user_id, &token)
            .await
            .lifetime_spend
            .is_empty()
    );
}

#[tokio::test]
async fn a_retried_create_returns_the_first_outcome() {
    let mesh = Mesh::start().await;
    let s = sku("IDEM");
    mesh.product(&s, 3, 100).await;
    let (_, token) = mesh.customer().await;
    let first = mesh
        .create_order(&token, "req-1", &[(&s, 2)])
        .await
        .expect("first");
    let second = mesh
        .create_order(&token, "req-1", &[(&s, 2)])
        .await
        .expect("retry");
    assert_eq!(first.order_id, second.order_id);
    assert_eq!(mesh.stock(&s).await.0, 1, "stock taken once");

    // The Idempotency-Key header does the same when request_id is empty.
    let with_header = |key: &str| {
        let mut request = Request::new(pb::CreateOrderRequest {
            request_id: String::new(),
            lines: vec![pb::CreateOrderLine {
                sku: s.clone(),
                quantity: 1,
            }],
        });
        bearer(&mut request, "authorization", &token);
        request
            .metadata_mut()
            .insert("idempotency-key", key.parse().expect("ascii"));
        request
    };
    let a = mesh
        .orders()
        .await
        .create_order(with_header("key-9"))
        .await
        .expect("a")
        .into_inner();
    let b = mesh
        .orders()
        .await
        .create_order(with_header("key-9"))
        .await
        .expect("b")
        .into_inner();
    assert_eq!(a.order.expect("a").order_id, b.order.expect("b").order_id);

    // A rejection is also the first outcome: the retry is rejected the same way.
    let err1 = mesh
        .create_order(&token, "req-2", &[(&s, 5)])
        .await
        .expect_err("rejected");
    let err2 = mesh
        .create_order(&token, "req-2", &[(&s, 5)])
        .await
        .expect_err("rejected again");
    assert_eq!(err1.message(), err2.message());

    let err = mesh
        .create_order(&token, "req-1", &[(&s, 1)])
        .await
        .expect_err("different lines");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("request_id req-1"),
        "{}",
        err.message()
    );

    let pool = sqlx::PgPool::connect(&mesh.order.as_ref().expect("order").db.url)
        .await
        .expect("pool");
    let confirmed_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE event_type = $1")
            .bind(pb::OrderConfirmed::full_name())
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(
        confirmed_events, 2,
        "req-1 and key-9: one OrderConfirmed each"
    );
}

#[tokio::test]
async fn orders_are_private_and_listed_newest_first_in_pages() {
    let mesh = Mesh::start().await;
    let s = sku("PRIV");
    mesh.product(&s, 100, 100).await;
    let (_, alice) = mesh.customer().await;
    let (_, bob) = mesh.customer().await;
    let mut alice_orders = Vec::new();
    for _ in 0..3 {
        alice_orders.push(
            mesh.create_order(&alice, "", &[(&s, 1)])
                .await
                .expect("order")
                .order_id,
        );
    }
    let bobs = mesh
        .create_order(&bob, "", &[(&s, 1)])
        .await
        .expect("order");

    let err = mesh
        .get_order(&alice, &bobs.order_id)
        .await
        .expect_err("bob's order");
    assert_eq!(err.code(), Code::PermissionDenied);
    let admin = mesh.identity.admin_token();
    assert_eq!(
        mesh.get_order(&admin, &bobs.order_id)
            .await
            .expect("admin")
            .order_id,
        bobs.order_id
    );
    let err = mesh
        .get_order(&alice, "not-a-uuid")
        .await
        .expect_err("bad id");
    assert_eq!(err.message(), "invalid order_id: must be a UUID");
    let err = mesh
        .get_order(&alice, &uuid::Uuid::now_v7().to_string())
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    let list = |token: String, page_token: String| {
        let mesh = &mesh;
        async move {
            let mut request = Request::new(pb::ListOrdersRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            });
            bearer(&mut request, "authorization", &token);
            mesh.orders()
                .await
                .list_orders(request)
                .await
                .expect("list")
                .into_inner()
        }
    };
    let page1 = list(alice.clone(), String::new()).await;
    let page2 = list(alice.clone(), page1.next_page_token.clone()).await;
    let seen: Vec<String> = page1
        .orders
        .iter()
        .chain(&page2.orders)
        .map(|o| o.order_id.clone())
        .collect();
    alice_orders.reverse();
    assert_eq!(seen, alice_orders, "only her own, newest first");
    assert!(page2.next_page_token.is_empty());
    let everyone = list(admin.clone(), String::new()).await;
    let everyone2 = list(admin, everyone.next_page_token).await;
    assert_eq!(
        everyone.orders.len() + everyone2.orders.len(),
        4,
        "admins see all"
    );
}

#[tokio::test]
async fn watch_streams_each_change_until_a_final_state() {
    let mesh = Mesh::start().await;
    let s = sku("WATCH");
    mesh.product(&s, 5, 100).await;
    let (_, token) = mesh.customer().await;
    let order = mesh
        .create_order(&token, "", &[(&s, 1)])
        .await
        .expect("create");
    let mut stream = mesh.watch(&token, &order.order_id).await.expect("watch");
    let first = stream
        .next()
        .await
        .expect("first")
        .expect("ok")
        .order
        .expect("order");
    assert_eq!(first.status, pb::OrderStatus::Confirmed as i32);
    mesh.cancel(&token, &order.order_id).await.expect("cancel");
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("change")
        .expect("item")
        .expect("ok");
    assert_eq!(
        next.order.expect("order").status,
        pb::OrderStatus::Cancelled as i32
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "the stream ends at a final state");

    let (_, stranger) = mesh.customer().await;
    let err = mesh
        .watch(&stranger, &order.order_id)
        .await
        .expect_err("not theirs");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn bad_order_input_is_refused_field_by_field() {
    let mesh = Mesh::start().await;
    let (_, token) = mesh.customer().await;
    let cases: [(&[(&str, i64)], &str); 3] = [
        (&[], "invalid lines: is required"),
        (&[("MUG-001", 0)], "invalid lines[0].quantity"),
        (&[("MUG-001", 1), ("bad sku", 1)], "invalid lines[1].sku"),
    ];
    for (lines, expected) in cases {
        let err = mesh
            .create_order(&token, "", lines)
            .await
            .expect_err(expected);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(expected), "{}", err.message());
    }
    let many: Vec<(String, i64)> = (0..101).map(|i| (format!("SKU-{i:03}"), 1)).collect();
    let many: Vec<(&str, i64)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    let err = mesh
        .create_order(&token, "", &many)
        .await
        .expect_err("too many lines");
    assert!(
        err.message()
            .starts_with("invalid lines: must have at most 100 items")
    );

    let mut anonymous = Request::new(pb::CreateOrderRequest::default());
    anonymous
        .metadata_mut()
        .insert("authorization", "Bearer not.a.jwt".parse().expect("ascii"));
    let err = mesh
        .orders()
        .await
        .create_order(anonymous)
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = mesh
        .orders()
        .await
        .create_order(pb::CreateOrderRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_saga_runs_over_mutual_tls() {
    // Every port speaks mutual TLS: the order service reaches the user and
    // inventory services with its own certificate, and inventory's reservation
    // RPCs accept it by that certificate's identity.
    let mesh = Mesh::start_tls().await;
    let (token, order) = mesh.confirmed_order("MTLS").await;
    assert_eq!(order.lines[0].quantity, 1);
    let stored = mesh.get_order(&token, &order.order_id).await.expect("get");
    assert_eq!(stored.status, pb::OrderStatus::Confirmed as i32);
}
