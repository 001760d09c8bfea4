use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shop_proto::inventory as pb;
use shop_testkit::bearer;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::helpers::{order_id, sku, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_race_for_the_last_units_never_oversells() {
    let app = spawn_app().await;
    let s = sku("LAST");
    app.create_product(&s, 5, 100).await;
    let attempts: Vec<_> = (0..40)
        .map(|_| {
            let s = s.clone();
            let client = app.client.clone();
            let request = app.as_order_service(pb::ReserveStockRequest {
                order_id: order_id(),
                lines: vec![pb::ReservationLine {
                    sku: s,
                    quantity: 1,
                    unit_price: None,
                }],
            });
            tokio::spawn(async move { client.clone().reserve_stock(request).await })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.expect("join") {
            Ok(_) => won += 1,
            // A starved test process can leave a bounded transaction idle past its
            // limit (platform::db::begin_bounded): ended, nothing reserved, retry.
            Err(status) if status.code() == Code::Unavailable => {}
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                let details = status.get_error_details();
                let violation = &details
                    .precondition_failure()
                    .expect("precondition detail")
                    .violations[0];
                assert_eq!(violation.subject, s);
            }
        }
    }
    assert_eq!(won, 5, "exactly the 5 units were reserved");
    let product = app.product(&s).await;
    assert_eq!((product.available, product.reserved), (0, 5));
    app.assert_stock_invariants().await;
}

#[tokio::test]
async fn reservations_are_idempotent_per_order_and_all_or_nothing() {
    let app = spawn_app().await;
    let (a, b) = (sku("A"), sku("B"));
    app.create_product(&a, 10, 250).await;
    app.create_product(&b, 1, 1000).await;
    let order = order_id();
    let first = app
        .reserve(&order, &[(&a, 2), (&b, 1)])
        .await
        .expect("reserve");
    assert_eq!(first.status, pb::ReservationStatus::Held as i32);
    let prices: Vec<i64> = first
        .lines
        .iter()
        .map(|l| l.unit_price.as_ref().expect("price").amount_minor)
        .collect();
    assert_eq!(prices, [250, 1000], "priced by inventory, in SKU order");
    let again = app
        .reserve(&order, &[(&b, 1), (&a, 2)])
        .await
        .expect("retry");
    assert_eq!(again.lines, first.lines, "the same reservation");
    assert_eq!(app.product(&a).await.reserved, 2, "held once");

    let err = app
        .reserve(&order, &[(&a, 3)])
        .await
        .expect_err("different lines");
    assert_eq!(err.code(), Code::AlreadyExists);

    // All or nothing: B is gone, so A is not held either.
    let other = order_id();
    let err = app
        .reserve(&other, &[(&a, 1), (&b, 1)])
        .await
        .expect_err("short");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&b) && !err.message().contains(&a),
        "{}",
        err.message()
    );
    assert_eq!(app.product(&a).await.available, 8);

    let err = app
        .reserve(&other, &[("NOPE-1", 1)])
        .await
        .expect_err("unknown sku");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("NOPE-1"));
    app.assert_stock_invariants().await;
}

#[tokio::test]
async fn reservation_input_is_validated() {
    let app = spawn_app().await;
    let s = sku("V");
    app.create_product(&s, 10, 1).await;
    let too_many: Vec<(String, i64)> = (0..101).map(|i| (format!("SKU-{i:03}"), 1)).collect();
    let too_many: Vec<(&str, i64)> = too_many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    type Case<'a> = (String, Vec<(&'a str, i64)>, &'static str);
    let cases: Vec<Case<'_>> = vec![
        (order_id(), vec![(&s, 0)], "invalid lines[0].quantity"),
        (
            order_id(),
            vec![(&s, 1), (&s, -2)],
            "invalid lines[1].quantity",
        ),
        (
            order_id(),
            vec![(&s, 1), (&s, 2)],
            "invalid lines[1].sku: appears twice",
        ),
        (order_id(), vec![], "invalid lines: is required"),
        (
            order_id(),
            too_many,
            "invalid lines: must have at most 100 items",
        ),
        ("not-a-uuid".into(), vec![(&s, 1)], "invalid order_id"),
        (order_id(), vec![("lower", 1)], "invalid lines[0].sku"),
    ];
    for (order, lines, expected) in cases {
        let err = app.reserve(&order, &lines).await.expect_err(expected);
        assert_eq!(err.code(), Code::InvalidArgument, "{expected}");
        assert!(
            err.message().starts_with(expected),
            "{expected}: {}",
            err.message()
        );
    }
    assert_eq!(app.product(&s).await.available, 10);
}

#[tokio::test]
async fn internal_rpcs_accept_only_the_order_service() {
    let app = spawn_app().await;
    let s = sku("INT");
    app.create_product(&s, 10, 1).await;
    let request = || pb::ReserveStockRequest {
        order_id: order_id(),
        lines: vec![pb::ReservationLine {
            sku: s.clone(),
            quantity: 1,
            unit_price: None,
        }],
    };
    let mut client = app.client.clone();

    let err = client
        .reserve_stock(request())
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut as_admin = Request::new(request());
    bearer(&mut as_admin, "authorization", &app.identity.admin_token());
    let err = client
        .reserve_stock(as_admin)
        .await
        .expect_err("even an admin user");
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut as_user_service = Request::new(request());
    bearer(
        &mut as_user_service,
        "x-service-authorization",
        &app.identity.service_token("user-service"),
    );
    let err = client
        .reserve_stock(as_user_service)
        .await
        .expect_err("another service");
    assert_eq!(err.code(), Code::PermissionDenied);

    // A service token signed with a key only users' tokens use is not accepted.
    let forger = shop_testkit::Identity::new();
    let mut forged = Request::new(request());
    bearer(
        &mut forged,
        "x-service-authorization",
        &forger.service_token("order-service"),
    );
    let err = client
        .reserve_stock(forged)
        .await
        .expect_err("forged service token");
    assert_eq!(err.code(), Code::Unauthenticated);

    assert_eq!(app.product(&s).await.available, 10, "nothing was reserved");
    client
        .reserve_stock(app.as_order_service(request()))
        .await
        .expect("the order service may");
}

#[tokio::test]
async fn release_and_commit_are_idempotent_and_exclusive() {
    let app = spawn_app().await;
    let s = sku("RC");
    app.create_product(&s, 10, 1).await;
    let (kept, dropped) = (order_id(), order_id());
    app.reserve(&kept, &[(&s, 3)]).await.expect("reserve");
    app.reserve(&dropped, &[(&s, 2)]).await.expect("reserve");

    for _ in 0..2 {
        let r = app.commit(&kept).await.expect("commit");
        assert_eq!(r.status, pb::ReservationStatus::Committed as i32);
        let r = app.release(&dropped).await.expect("release");
        assert_eq!(r.status, pb::ReservationStatus::Released as i32);
    }
    let p = app.product(&s).await;
    assert_eq!((p.available, p.reserved, p.sold), (7, 0, 3));
    assert_eq!(
        app.release(&kept).await.expect_err("committed").code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        app.commit(&dropped).await.expect_err("released").code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        app.commit(&order_id()).await.expect_err("unknown").code(),
        Code::NotFound
    );
    app.assert_stock_invariants().await;
}

#[tokio::test]
async fn reservations_nothing_commits_expire_and_return_their_stock() {
    let app = spawn_app_with(&shop_testkit::kafka_brokers(), |s| {
        s.stock.reservation_ttl_secs = 1;
        s.stock.expiry_sweep_ms = 100;
    })
    .await;
    let s = sku("EXP");
    app.create_product(&s, 4, 1).await;
    let order = order_id();
    app.reserve(&order, &[(&s, 4)]).await.expect("reserve");
    assert_eq!(app.product(&s).await.available, 0);
    let back = shop_testkit::eventually(Duration::from_secs(10), || async {
        (app.product(&s).await.available == 4).then_some(())
    })
    .await;
    assert!(back.is_some(), "stock came back after expiry");
    let err = app.commit(&order).await.expect_err("expired");
    assert!(err.message().contains("expired"), "{}", err.message());
    app.assert_stock_invariants().await;
}

/// Property-style: a seeded random mix of reserve, release, commit, adjust and
/// expiry from several concurrent clients keeps every SKU's books balanced.
#[tokio::test]
async fn a_random_mix_of_operations_keeps_stock_conserved() {
    let app = spawn_app_with(&shop_testkit::kafka_brokers(), |s| {
        s.stock.reservation_ttl_secs = 1;
        s.stock.expiry_sweep_ms = 50;
    })
    .await;
    let skus: Vec<String> = (0..3).map(|_| sku("MIX")).collect();
    for s in &skus {
        app.create_product(s, 20, 1).await;
    }
    let app = std::sync::Arc::new(app);
    let seed: u64 = std::env::var("MIX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_127);
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let app = app.clone();
            let skus = skus.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed + w);
                let mut orders: Vec<String> = Vec::new();
                for step in 0..60 {
                    match rng.gen_range(0..10) {
                        0..=4 => {
                            let order = order_id();
                            let n = rng.gen_range(1..=2);
                            let lines: Vec<(&str, i64)> = skus
                                .iter()
                                .take(n)
                                .map(|s| (s.as_str(), rng.gen_range(1..=4)))
                                .collect();
                            if app.reserve(&order, &lines).await.is_ok() {
                                orders.push(order);
                            }
                        }
                        5 | 6 if !orders.is_empty() => {
                            let order = orders.swap_remove(rng.gen_range(0..orders.len()));
                            let _ = app.commit(&order).await;
                        }
                        7 if !orders.is_empty() => {
                            let order = orders.swap_remove(rng.gen_range(0..orders.len()));
                            let _ = app.release(&order).await;
                        }
                        8 => {
                            let s = &skus[rng.gen_range(0..skus.len())];
                            let _ = app
                                .adjust(
                                    s,
                                    rng.gen_range(-5..=5_i64).max(1)
                                        * if rng.gen_bool(0.5) { 1 } else { -1 },
                                    &format!("mix-{w}-{step}"),
                                )
                                .await;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await,
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
        app.assert_stock_invariants().await;
    }
    // Every remaining hold expires; then the books must still balance with nothing reserved.
    let drained = shop_testkit::eventually(Duration::from_secs(10), || async {
        let reserved: i64 = sqlx::query_scalar("SELECT sum(reserved)::bigint FROM products")
            .fetch_one(&app.pool().await)
            .await
            .ok()?;
        (reserved == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "every hold expired");
    app.assert_stock_invariants().await;
}
