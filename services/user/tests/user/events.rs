//! UserRegistered through the outbox, and order events into each user's figures.

use std::collections::HashSet;
use std::time::Duration;

use prost::{Message, Name};
use shop_proto::common::Money;
use shop_proto::order as order_pb;
use shop_proto::user as pb;
use shop_testkit::{Broker, Signing, read_topic};

use crate::helpers::{spawn_app, spawn_app_with, unique_email};

const USER_TOPIC: &str = shop_proto::user::EVENTS_TOPIC;
const ORDER_TOPIC: &str = shop_proto::order::EVENTS_TOPIC;

fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[1].chars().all(|c| c.is_ascii_hexdigit())
        && parts[1] != "0".repeat(32)
}

#[tokio::test]
async fn each_registration_publishes_exactly_one_user_registered() {
    let app = spawn_app().await;
    let mut ids = HashSet::new();
    for _ in 0..3 {
        ids.insert(
            app.register(&unique_email())
                .await
                .expect("register")
                .user_id,
        );
    }
    let wanted = ids.clone();
    let records = read_topic(
        &app.brokers,
        USER_TOPIC,
        Duration::from_secs(20),
        3,
        move |r| r.key.as_ref().is_some_and(|k| wanted.contains(k)),
    )
    .await;
    assert_eq!(
        records.len(),
        3,
        "one event per registration, no duplicates"
    );
    let mut event_ids = HashSet::new();
    for record in &records {
        assert_eq!(record.headers["ce_type"], pb::UserRegistered::full_name());
        assert_eq!(record.headers["content-type"], "application/protobuf");
        assert!(
            is_traceparent(&record.headers["traceparent"]),
            "{:?}",
            record.headers
        );
        event_ids.insert(record.headers["ce_id"].clone());
        let event =
            pb::UserRegistered::decode(record.payload.as_slice()).expect("protobuf payload");
        assert_eq!(Some(&event.user_id), record.key.as_ref());
        assert!(event.email.ends_with("@example.com"));
    }
    assert_eq!(event_ids.len(), 3, "distinct event ids");
}

#[tokio::test]
async fn events_written_while_the_broker_is_down_are_published_once_it_is_back() {
    let broker = Broker::start();
    let app = spawn_app_with(&broker.brokers).await;
    let pool = app.pool().await;
    let backlog = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM outbox_events WHERE published_at IS NULL",
            )
            .fetch_one(&pool)
            .await
            .expect("backlog")
        }
    };
    // The bootstrap admin's event goes out first: the relay is connected.
    let drained = shop_testkit::eventually(Duration::from_secs(30), || async {
        (backlog().await == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "outbox never drained");

    broker.pause();
    let user = app
        .register(&unique_email())
        .await
        .expect("registration works while the broker is down");
    // The relay has read the event and waits on the broker: its transaction is
    // open after the outbox query.
    let relay_waits = shop_testkit::eventually(Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                 AND state = 'idle in transaction'
                 AND query LIKE '%FROM outbox_events WHERE published_at IS NULL%'",
            )
            .fetch_one(&pool)
            .await
            .expect("activity");
            (waiting == 1).then_some(())
        }
    })
    .await;
    assert!(relay_waits.is_some(), "the relay took the event");
    assert_eq!(backlog().await, 1, "the event waits in the outbox");
    broker.resume();

    let drained = shop_testkit::eventually(Duration::from_secs(30), || async {
        (backlog().await == 0).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "outbox drained after the broker came back"
    );
    let key = user.user_id.clone();
    let records = read_topic(
        &broker.brokers,
        USER_TOPIC,
        Duration::from_secs(15),
        1,
        move |r| r.key.as_deref() == Some(key.as_str()),
    )
    .await;
    assert_eq!(records.len(), 1, "exactly one UserRegistered");
    assert!(is_traceparent(&records[0].headers["traceparent"]));
}

fn confirmed(order_id: &str, user_id: &str, amount_minor: i64) -> Vec<u8> {
    order_pb::OrderConfirmed {
        order_id: order_id.into(),
        user_id: user_id.into(),
        lines: vec![],
        total: Some(Money {
            currency_code: "EUR".into(),
            amount_minor,
        }),
        confirm_time: None,
    }
    .encode_to_vec()
}

async fn send(
    brokers: &str,
    signing: Signing<'_>,
    key: &str,
    event_id: &str,
    event_type: &str,
    payload: &[u8],
) {
    shop_testkit::produce_event(
        brokers,
        ORDER_TOPIC,
        key,
        event_id,
        event_type,
        payload,
        signing,
    )
    .await;
}

#[tokio::test]
async fn order_events_keep_user_figures_and_replays_change_nothing() {
    let broker = Broker::start();
    let app = spawn_app_with(&broker.brokers).await;
    let (user, token) = app.customer().await;
    let order_a = uuid::Uuid::now_v7().to_string();
    let order_b = uuid::Uuid::now_v7().to_string();
    let confirmed_type = order_pb::OrderConfirmed::full_name();
    let cancelled_type = order_pb::OrderCancelled::full_name();
    let cancel_b = order_pb::OrderCancelled {
        order_id: order_b.clone(),
        user_id: user.user_id.clone(),
        previous_status: order_pb::OrderStatus::Confirmed as i32,
        ..Default::default()
    }
    .encode_to_vec();
    let events = [
        (
            "e-1",
            &order_a,
            confirmed_type.as_str(),
            confirmed(&order_a, &user.user_id, 2500),
        ),
        (
            "e-2",
            &order_b,
            confirmed_type.as_str(),
            confirmed(&order_b, &user.user_id, 1000),
        ),
        ("e-3", &order_b, cancelled_type.as_str(), cancel_b),
    ];
    // Every event twice: the consumer must act on each once.
    for round in 0..2 {
        for (event_id, key, event_type, payload) in &events {
            send(
                &broker.brokers,
                Signing::By(&app.event_keys),
                key,
                event_id,
                event_type,
                payload,
            )
            .await;
        }
        let pool = app.pool().await;
        let processed = shop_testkit::count_reaches(
            &pool,
            "SELECT count(*) FROM inbox_events",
            3,
            Duration::from_secs(30),
        )
        .await;
        assert!(processed, "round {round}: three distinct events processed");
        if round == 1 {
            // The duplicates must have reached the consumer before the figures are read.
            let seen =
                shop_testkit::consumer_outcomes_reach("duplicate", 3, Duration::from_secs(30))
                    .await;
            assert!(seen, "the three redelivered events reach the consumer");
        }
        let stats = app
            .get_user(&user.user_id, Some(&token))
            .await
            .expect("get")
            .stats
            .expect("stats");
        assert_eq!(stats.order_count, 1, "round {round}: order B was cancelled");
        assert_eq!(
            stats.lifetime_spend,
            vec![Money {
                currency_code: "EUR".into(),
                amount_minor: 2500
            }],
            "round {round}"
        );
    }
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox_events")
        .fetch_one(&app.pool().await)
        .await
        .expect("count");
    assert_eq!(inbox, 3, "duplicates were recognised, not applied");
}

#[tokio::test]
async fn undecodable_order_events_go_to_the_dead_letter_topic() {
    let broker = Broker::start();
    let app = spawn_app_with(&broker.brokers).await;
    let key = uuid::Uuid::now_v7().to_string();
    send(
        &broker.brokers,
        Signing::By(&app.event_keys),
        &key,
        "poison-1",
        &order_pb::OrderConfirmed::full_name(),
        b"\xff\xff\xff not protobuf",
    )
    .await;
    // An event after the poison one is still processed: the partition is not blocked.
    let (user, _) = app.customer().await;
    let order = uuid::Uuid::now_v7().to_string();
    send(
        &broker.brokers,
        Signing::By(&app.event_keys),
        &order,
        "good-1",
        &order_pb::OrderConfirmed::full_name(),
        &confirmed(&order, &user.user_id, 700),
    )
    .await;

    let wanted = key.clone();
    let dead = read_topic(
        &broker.brokers,
        "shop.order.v1.events.user-service.dlq",
        Duration::from_secs(30),
        1,
        move |r| r.key.as_deref() == Some(wanted.as_str()),
    )
    .await;
    assert_eq!(dead.len(), 1, "the poison event was dead-lettered once");
    assert!(
        dead[0].headers["dlq_error"].contains("undecodable"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(dead[0].headers["ce_id"], "poison-1");
    assert_eq!(dead[0].headers["dlq_source_topic"], ORDER_TOPIC);

    let pool = app.pool().await;
    let applied = shop_testkit::count_reaches(
        &pool,
        "SELECT count(*) FROM user_orders",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert!(applied, "the good event after the poison one was applied");
}
