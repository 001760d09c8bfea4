//! Leaving a consumer group never holds up the thread that lets the consumer go,
//! whatever the broker does: a service stopping during a broker outage stops on
//! time, and a test's runtime can always shut down.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;
use shop_platform::Shutdown;
use shop_platform::kafka::{self, KafkaConnection};
use shop_testkit::Broker;

#[tokio::test]
async fn a_group_member_dropped_while_the_broker_is_frozen_lets_go_at_once() {
    let broker = Broker::start();
    let connection = KafkaConnection::plaintext(&broker.brokers);
    let topic = format!("group.close.{}", uuid::Uuid::now_v7().simple());
    kafka::ensure_topics(
        &connection,
        std::slice::from_ref(&topic),
        1,
        &Shutdown::new(),
    )
    .await
    .expect("topic");
    let consumer = kafka::consumer(
        &connection,
        &format!("close-test-{}", uuid::Uuid::now_v7().simple()),
        Duration::from_secs(6),
    )
    .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    // A member of the group: it holds the topic's partition.
    let joined = shop_testkit::eventually(Duration::from_secs(30), || async {
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        consumer
            .assignment()
            .is_ok_and(|a| a.count() > 0)
            .then_some(())
    })
    .await;
    assert!(joined.is_some(), "the consumer never joined its group");

    // With the broker frozen, leaving the group cannot finish; rdkafka's own
    // drop would wait for it (here for its session timeout, at worst forever).
    broker.pause();
    let started = Instant::now();
    drop(consumer);
    let took = started.elapsed();
    broker.resume();
    assert!(
        took < Duration::from_secs(2),
        "dropping the consumer held this thread for {took:?}"
    );
}
