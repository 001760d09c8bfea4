//! The services' Kafka clients over TLS against a real TLS listener (stunnel4 in
//! front of tansu, which has none of its own): with the brokers' CA and this
//! workload's certificate, topics are made and an event goes through and back;
//! plaintext, another CA, or no client certificate get nothing from the broker.

use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::FutureRecord;
use rdkafka::producer::Producer as _;
use shop_platform::Shutdown;
use shop_platform::config::ServiceSettings;
use shop_platform::dev_pki::{DevCa, valid_for};
use shop_platform::kafka::{self, KafkaConnection};
use shop_testkit::kafka_tls::TlsBroker;

/// Whether the broker answers a metadata request on this connection within 5 s.
async fn answers(connection: &KafkaConnection) -> bool {
    let producer = kafka::producer(connection, false).expect("producer");
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
            .is_ok()
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_over_tls_with_a_client_certificate_and_nothing_else_gets_through() {
    let ca = DevCa::new("kafka test CA").expect("CA");
    let broker = TlsBroker::start(
        &ca.server(&["localhost", "127.0.0.1"]).expect("server cert"),
        &ca.cert_pem(),
    );
    let dir = std::env::temp_dir().join(format!("shop-kafka-client-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let client = ca
        .workload("order-service", &[], valid_for(Duration::from_secs(3600)))
        .expect("client cert");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        write("ca.pem", &ca.cert_pem()),
        write("client.crt", &client.cert_pem),
        write("client.key", &client.key_pem),
    );
    let other_ca = write(
        "other.pem",
        &DevCa::new("another CA").expect("CA").cert_pem(),
    );
    let settings = |ca: &str, cert: &str, key: &str| {
        let mut s = ServiceSettings::with_ports("kafka-tls-test", 0, 0);
        s.kafka_brokers = broker.bootstrap.clone();
        s.kafka_security_protocol = "ssl".into();
        (
            s.kafka_ssl_ca_file,
            s.kafka_ssl_cert_file,
            s.kafka_ssl_key_file,
        ) = (ca.to_owned(), cert.to_owned(), key.to_owned());
        KafkaConnection::from_settings(&s).expect("valid settings")
    };

    // The services' own clients: topics made, an event produced and read back.
    let tls = settings(&ca_file, &cert_file, &key_file);
    let topic = format!("tls.test.{}", uuid::Uuid::now_v7().simple());
    let made = tokio::time::timeout(
        Duration::from_secs(30),
        kafka::ensure_topics(&tls, std::slice::from_ref(&topic), 1, &Shutdown::new()),
    )
    .await;
    assert!(matches!(made, Ok(Ok(()))), "topics over TLS: {made:?}");
    let producer = kafka::producer(&tls, true).expect("producer");
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("over tls"),
            Duration::from_secs(10),
        )
        .await
        .expect("produced over TLS");
    let consumer =
        kafka::consumer(&tls, "kafka-tls-test", Duration::from_secs(6)).expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a message within 30 s")
        .expect("message");
    assert_eq!(message.payload(), Some(&b"over tls"[..]));

    // Plaintext to the TLS port, a broker certificate from another CA, and no
    // client certificate: the broker answers none of them.
    assert!(
        !answers(&KafkaConnection::plaintext(&broker.bootstrap)).await,
        "plaintext"
    );
    assert!(
        !answers(&settings(&other_ca, &cert_file, &key_file)).await,
        "another CA"
    );
    assert!(
        !answers(&settings(&ca_file, "", "")).await,
        "no client certificate"
    );
    assert!(
        answers(&tls).await,
        "and the right client still gets answers"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_security_settings_name_what_is_missing() {
    let mut s = ServiceSettings::with_ports("kafka-tls-test", 0, 0);
    s.kafka_brokers = "localhost:9093".into();
    s.kafka_security_protocol = "tls".into();
    let err = KafkaConnection::from_settings(&s).expect_err("unknown protocol");
    assert!(
        err.to_string().contains("KAFKA_SECURITY_PROTOCOL:"),
        "{err}"
    );

    s.kafka_security_protocol = "sasl_ssl".into();
    let err = KafkaConnection::from_settings(&s).expect_err("no mechanism");
    assert!(err.to_string().contains("KAFKA_SASL_MECHANISM:"), "{err}");
    s.kafka_sasl_mechanism = "scram-sha-512".into();
    let err = KafkaConnection::from_settings(&s).expect_err("no credentials");
    assert!(err.to_string().contains("KAFKA_SASL_USERNAME:"), "{err}");
    s.kafka_sasl_username = "order-service".into();
    s.kafka_sasl_password = shop_platform::config::Secret::new("s3cret-pass");
    let connection = KafkaConnection::from_settings(&s).expect("complete");
    assert!(
        !format!("{connection:?}").contains("s3cret-pass"),
        "the password stays out of debug output"
    );

    s.kafka_security_protocol = "ssl".into();
    s.kafka_ssl_ca_file = "/nonexistent/ca.pem".into();
    let err = KafkaConnection::from_settings(&s).expect_err("missing file");
    assert!(err.to_string().contains("KAFKA_SSL_CA_FILE:"), "{err}");
}
