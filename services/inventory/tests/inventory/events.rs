use std::time::Duration;

use prost::{Message, Name};
use shop_proto::inventory as inv_pb;
use shop_proto::order as pb;
use shop_testkit::{Broker, Signing, read_topic};

use crate::helpers::{order_id, sku, spawn_app_with};

async fn send(
    brokers: &str,
    signing: Signing<'_>,
    event_id: &str,
    key: &str,
    event_type: &str,
    payload: &[u8],
) {
    shop_testkit::produce_event(
        brokers,
        shop_proto::order::EVENTS_TOPIC,
        key,
        event_id,
        event_type,
        payload,
        signing,
    )
    .await;
}

#[tokio::test]
async fn order_events_commit_and_give_back_stock_and_replays_change_nothing() {
    let broker = Broker::start();
    let app = spawn_app_with(&broker.brokers, |_| {}).await;
    let s = sku("LOOP");
    app.create_product(&s, 10, 500).await;
    let (confirmed, cancelled_held, cancelled_after_confirm) = (order_id(), order_id(), order_id());
    app.reserve(&confirmed, &[(&s, 2)]).await.expect("reserve");
    app.reserve(&cancelled_held, &[(&s, 3)])
        .await
        .expect("reserve");
    app.reserve(&cancelled_after_confirm, &[(&s, 1)])
        .await
        .expect("reserve");

    let confirm = |id: &str| {
        pb::OrderConfirmed {
            order_id: id.into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let cancel = |id: &str| {
        pb::OrderCancelled {
            order_id: id.into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let events = [
        (
            "c-1",
            confirmed.clone(),
            pb::OrderConfirmed::full_name(),
            confirm(&confirmed),
        ),
        (
            "x-1",
            cancelled_held.clone(),
            pb::OrderCancelled::full_name(),
            cancel(&cancelled_held),
        ),
        (
            "c-2",
            cancelled_after_confirm.clone(),
            pb::OrderConfirmed::full_name(),
            confirm(&cancelled_after_confirm),
        ),
        (
            "x-2",
            cancelled_after_confirm.clone(),
            pb::OrderCancelled::full_name(),
            cancel(&cancelled_after_confirm),
        ),
    ];
    for round in 0..2 {
        for (id, key, event_type, payload) in &events {
            send(
                &broker.brokers,
                Signing::By(&app.identity.events),
                id,
                key,
                event_type,
                payload,
            )
            .await;
        }
        let pool = app.pool().await;
        let done = shop_testkit::count_reaches(
            &pool,
            "SELECT count(*) FROM inbox_events",
            4,
            Duration::from_secs(30),
        )
        .await;
        assert!(done, "round {round}: all four events applied");
        if round == 1 {
            let seen =
                shop_testkit::consumer_outcomes_reach("duplicate", 4, Duration::from_secs(30))
                    .await;
            assert!(seen, "the four redelivered events reach the consumer");
        }
        let p = app.product(&s).await;
        assert_eq!(
            (p.available, p.reserved, p.sold),
            (8, 0, 2),
            "round {round}"
        );
        app.assert_stock_invariants().await;
    }

    // The effects went out as inventory events.
    let wanted = confirmed.clone();
    let records = read_topic(
        &broker.brokers,
        shop_proto::inventory::EVENTS_TOPIC,
        Duration::from_secs(20),
        2,
        move |r| r.key.as_deref() == Some(wanted.as_str()),
    )
    .await;
    let types: Vec<&str> = records
        .iter()
        .map(|r| r.headers["ce_type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            inv_pb::StockReserved::full_name(),
            inv_pb::ReservationCommitted::full_name()
        ]
    );
    let committed =
        inv_pb::ReservationCommitted::decode(records[1].payload.as_slice()).expect("decode");
    assert_eq!(committed.lines[0].quantity, 2);
}

#[tokio::test]
async fn stock_low_is_published_when_available_stock_crosses_the_threshold() {
    let broker = Broker::start();
    let app = spawn_app_with(&broker.brokers, |s| s.stock.stock_low_threshold = 3).await;
    let s = sku("LOW");
    app.create_product(&s, 5, 1).await;
    app.reserve(&order_id(), &[(&s, 1)]).await.expect("4 left");
    app.reserve(&order_id(), &[(&s, 2)])
        .await
        .expect("2 left: below 3");
    app.reserve(&order_id(), &[(&s, 1)])
        .await
        .expect("1 left: still low, no new event");
    let key = s.clone();
    let lows = read_topic(
        &broker.brokers,
        shop_proto::inventory::EVENTS_TOPIC,
        Duration::from_secs(15),
        1,
        move |r| {
            r.key.as_deref() == Some(key.as_str())
                && r.headers["ce_type"] == inv_pb::StockLow::full_name()
        },
    )
    .await;
    assert_eq!(lows.len(), 1);
    let low = inv_pb::StockLow::decode(lows[0].payload.as_slice()).expect("decode");
    assert_eq!((low.available, low.threshold), (2, 3));
}

#[tokio::test]
async fn forged_order_events_are_dead_lettered_and_change_nothing() {
    // The attack from issue 16: a hand-made OrderCancelled for a confirmed order,
    // produced straight to the broker, would put the sold unit back on sale.
    let broker = Broker::start();
    let app = spawn_app_with(&broker.brokers, |_| {}).await;
    let s = sku("FORGE");
    app.create_product(&s, 40, 500).await;
    let order = order_id();
    app.reserve(&order, &[(&s, 1)]).await.expect("reserve");
    let confirm = pb::OrderConfirmed {
        order_id: order.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let owner = Signing::By(&app.identity.events);
    let confirmed = pb::OrderConfirmed::full_name();
    send(
        &broker.brokers,
        owner,
        "real-1",
        &order,
        &confirmed,
        &confirm,
    )
    .await;
    let sold = shop_testkit::eventually(Duration::from_secs(30), || async {
        let p = app.product(&s).await;
        (p.available, p.reserved, p.sold)
            .eq(&(39, 0, 1))
            .then_some(())
    })
    .await;
    assert!(sold.is_some(), "the owner's confirmation is applied");

    let cancel = pb::OrderCancelled {
        order_id: order.clone(),
        previous_status: pb::OrderStatus::Confirmed as i32,
        ..Default::default()
    }
    .encode_to_vec();
    let cancelled = pb::OrderCancelled::full_name();
    let forger = shop_testkit::keypair();
    send(
        &broker.brokers,
        Signing::Unsigned,
        "forged-1",
        &order,
        &cancelled,
        &cancel,
    )
    .await;
    send(
        &broker.brokers,
        Signing::By(&forger),
        "forged-2",
        &order,
        &cancelled,
        &cancel,
    )
    .await;
    // The owner's own signature, lifted from its confirmation onto the cancellation.
    let lifted = shop_platform::event_signature::EventSigner::from_pem(
        &app.identity.events.private_pem,
        "test",
    )
    .expect("owner key")
    .sign(&shop_platform::event_signature::SignedFields {
        topic: shop_proto::order::EVENTS_TOPIC,
        key: &order,
        event_id: "forged-3",
        event_type: &cancelled,
        source: "order-service",
        payload: &confirm,
    });
    let mut headers = vec![
        ("ce_id", "forged-3"),
        ("ce_type", cancelled.as_str()),
        ("ce_source", "order-service"),
    ];
    headers.extend(lifted.iter().map(|(k, v)| (*k, v.as_str())));
    shop_testkit::produce(
        &broker.brokers,
        shop_proto::order::EVENTS_TOPIC,
        &order,
        &cancel,
        &headers,
    )
    .await;

    let dlq = shop_platform::kafka::dead_letter_topic(
        shop_proto::order::EVENTS_TOPIC,
        "inventory-service",
    );
    let dead = read_topic(&broker.brokers, &dlq, Duration::from_secs(30), 3, |_| true).await;
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|r| (r.headers["ce_id"].as_str(), r.headers["dlq_error"].as_str()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].0 == "forged-1" && reasons[0].1.starts_with("unsigned event"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0 == "forged-2" && reasons[1].1.contains("not a key of this topic's owner"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].0 == "forged-3" && reasons[2].1.starts_with("signature does not verify"),
        "{reasons:?}"
    );

    // Nothing moved, and no forged id reached the inbox.
    let p = app.product(&s).await;
    assert_eq!((p.available, p.reserved, p.sold), (39, 0, 1));
    let inbox: Vec<String> = sqlx::query_scalar("SELECT event_id FROM inbox_events")
        .fetch_all(&app.pool().await)
        .await
        .expect("inbox");
    assert_eq!(inbox, vec!["real-1".to_owned()]);
    app.assert_stock_invariants().await;
}

#[tokio::test]
async fn events_committed_by_another_copy_wake_this_relay_without_a_poll() {
    // A relay that would look on its own only once a minute.
    let app = spawn_app_with(&shop_testkit::kafka_brokers(), |s| {
        s.service.outbox_poll_ms = 60_000;
    })
    .await;
    // Let the relay finish its first look and go to sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another copy of the service commits an event to the same database: its
    // commit reaches this process only through PostgreSQL's NOTIFY.
    let pool = sqlx::PgPool::connect(&app.db.url).await.expect("pool");
    let mut tx = pool.begin().await.expect("begin");
    let event = shop_proto::inventory::StockLow {
        sku: "WAKE-001".into(),
        ..Default::default()
    };
    let event_id = shop_platform::outbox::enqueue(
        &mut tx,
        shop_inventory::events::EVENTS_TOPIC,
        "WAKE-001",
        &event,
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
    let published = shop_testkit::eventually(Duration::from_secs(10), || async {
        let stamped: bool = sqlx::query_scalar(
            "SELECT published_at IS NOT NULL FROM outbox_events WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_one(&pool)
        .await
        .expect("select");
        stamped.then_some(())
    })
    .await;
    assert!(published.is_some(), "published long before the next poll");
}
