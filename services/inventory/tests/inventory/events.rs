use std::time::Duration;

use prost::{Message, Name};
use shop_proto::inventory as inv_pb;
use shop_proto::order as pb;
use shop_testkit::{Broker, read_topic};

use crate::helpers::{order_id, sku, spawn_app_with};

async fn send(brokers: &str, event_id: &str, key: &str, event_type: &str, payload: &[u8]) {
    shop_testkit::produce_event(
        brokers,
        shop_proto::order::EVENTS_TOPIC,
        key,
        event_id,
        event_type,
        payload,
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
            send(&broker.brokers, id, key, event_type, payload).await;
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
