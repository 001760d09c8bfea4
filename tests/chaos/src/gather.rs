//! What each harness reads into a [`Snapshot`]: one SQL query per part, run on
//! the databases of the services it names (every column as text, so psql's
//! output and sqlx's rows assemble the same way), and the topics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::Row;

use crate::{
    DeadLetter, Order, OrderLine, OutboxEvent, Product, Snapshot, TopicRecord, Topics, UserOrders,
};

/// One part of the snapshot: a query and the services' databases it runs on.
#[derive(Clone, Debug, Serialize)]
pub struct Query {
    pub part: &'static str,
    pub services: &'static [&'static str],
    pub sql: String,
}

/// Rows by part, then by service; every value as text.
pub type Rows = BTreeMap<String, BTreeMap<String, Vec<Vec<String>>>>;

/// Every query a full snapshot needs.
pub fn queries() -> Vec<Query> {
    let order_topic = shop_proto::order::EVENTS_TOPIC;
    vec![
        Query {
            part: "orders",
            services: &["order"],
            sql: "SELECT order_id::text, user_id::text, status FROM orders".into(),
        },
        Query {
            part: "order_lines",
            services: &["order"],
            sql: "SELECT order_id::text, sku, quantity::text FROM order_lines".into(),
        },
        Query {
            part: "outbox",
            services: &["user", "inventory", "order"],
            sql: "SELECT event_id::text, topic, (published_at IS NOT NULL)::text FROM outbox_events"
                .into(),
        },
        Query {
            part: "inboxes",
            services: &["inventory", "user"],
            sql: format!("SELECT event_id::text FROM inbox_events WHERE topic = '{order_topic}'"),
        },
        Query {
            part: "products",
            services: &["inventory"],
            sql: "SELECT p.sku, p.initial_stock::text, p.adjusted::text, p.available::text,
                        p.reserved::text, p.sold::text,
                        COALESCE((SELECT sum(delta) FROM stock_adjustments a WHERE a.sku = p.sku), 0)::text,
                        COALESCE((SELECT sum(l.quantity) FROM reservation_lines l JOIN reservations r USING (order_id)
                                  WHERE l.sku = p.sku AND r.status = 'held'), 0)::text,
                        COALESCE((SELECT sum(l.quantity) FROM reservation_lines l JOIN reservations r USING (order_id)
                                  WHERE l.sku = p.sku AND r.status = 'committed'), 0)::text
                 FROM products p"
                .into(),
        },
        Query {
            part: "user_orders",
            services: &["user"],
            sql: "SELECT user_id::text, count(*)::text FROM user_orders WHERE cancelled_at IS NULL
                  GROUP BY user_id"
                .into(),
        },
    ]
}

fn int(part: &str, value: &str) -> anyhow::Result<i64> {
    value
        .trim()
        .parse()
        .with_context(|| format!("{part}: {value:?} is not an integer"))
}

fn columns<const N: usize>(part: &str, row: &[String]) -> anyhow::Result<[String; N]> {
    match <[String; N]>::try_from(row.to_vec()) {
        Ok(columns) => Ok(columns),
        Err(row) => bail!("{part}: a row of {} columns, not {N}: {row:?}", row.len()),
    }
}

impl Snapshot {
    /// Fills the database parts from `rows` (each part present only when its
    /// rows are).
    pub fn add_rows(&mut self, rows: &Rows) -> anyhow::Result<()> {
        let part = |name: &str| rows.get(name);
        let all = |name: &str| {
            part(name)
                .into_iter()
                .flat_map(|by_service| by_service.iter())
                .flat_map(|(service, rows)| rows.iter().map(move |r| (service.as_str(), r)))
        };
        if part("orders").is_some() {
            let mut orders = Vec::new();
            for (_, row) in all("orders") {
                let [order_id, user_id, status] = columns("orders", row)?;
                orders.push(Order {
                    order_id,
                    user_id,
                    status,
                });
            }
            self.orders = Some(orders);
        }
        if part("order_lines").is_some() {
            let mut lines = Vec::new();
            for (_, row) in all("order_lines") {
                let [order_id, sku, quantity] = columns("order_lines", row)?;
                let quantity = int("order_lines", &quantity)?;
                lines.push(OrderLine {
                    order_id,
                    sku,
                    quantity,
                });
            }
            self.order_lines = Some(lines);
        }
        if part("outbox").is_some() {
            let mut outbox = Vec::new();
            for (service, row) in all("outbox") {
                let [event_id, topic, published] = columns("outbox", row)?;
                outbox.push(OutboxEvent {
                    service: service.to_owned(),
                    event_id,
                    topic,
                    published: published == "true",
                });
            }
            self.outbox = Some(outbox);
        }
        if let Some(by_service) = part("inboxes") {
            let mut inboxes = BTreeMap::new();
            for (service, rows) in by_service {
                let mut ids = Vec::new();
                for row in rows {
                    let [event_id] = columns("inboxes", row)?;
                    ids.push(event_id);
                }
                // A service's consumer group is named after the service.
                inboxes.insert(format!("{service}-service"), ids);
            }
            self.inboxes = Some(inboxes);
        }
        if part("products").is_some() {
            let mut products = Vec::new();
            for (_, row) in all("products") {
                let [
                    sku,
                    initial_stock,
                    adjusted,
                    available,
                    reserved,
                    sold,
                    adjustments,
                    held,
                    committed,
                ] = columns("products", row)?;
                let n = |v: &str| int("products", v);
                products.push(Product {
                    initial_stock: n(&initial_stock)?,
                    adjusted: n(&adjusted)?,
                    available: n(&available)?,
                    reserved: n(&reserved)?,
                    sold: n(&sold)?,
                    adjustments: n(&adjustments)?,
                    held: n(&held)?,
                    committed: n(&committed)?,
                    sku,
                });
            }
            self.products = Some(products);
        }
        if part("user_orders").is_some() {
            let mut users = Vec::new();
            for (_, row) in all("user_orders") {
                let [user_id, count] = columns("user_orders", row)?;
                let count = int("user_orders", &count)?;
                users.push(UserOrders { user_id, count });
            }
            self.user_orders = Some(users);
        }
        Ok(())
    }
}

/// Runs the queries of `parts` that `service` answers on `pool`, adding their
/// rows to `rows` (for the Rust tests, which hold each service's pool).
pub async fn read_database(
    rows: &mut Rows,
    service: &str,
    pool: &sqlx::PgPool,
    parts: &[&str],
) -> anyhow::Result<()> {
    for query in queries() {
        if !parts.contains(&query.part) || !query.services.contains(&service) {
            continue;
        }
        let found = sqlx::query(sqlx::AssertSqlSafe(query.sql.clone()))
            .fetch_all(pool)
            .await
            .with_context(|| format!("{} on {service}", query.part))?;
        let mut texts = Vec::with_capacity(found.len());
        for row in found {
            let values: Result<Vec<String>, _> = (0..row.len())
                .map(|i| row.try_get::<String, _>(i))
                .collect();
            texts.push(values?);
        }
        rows.entry(query.part.to_owned())
            .or_default()
            .insert(service.to_owned(), texts);
    }
    Ok(())
}

fn header(message: &impl Message, name: &str) -> String {
    message
        .headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .unwrap_or_default()
}

/// Every record of every `*.events` and `*.dlq` topic on `brokers`, read to
/// the end, and where each of `groups` has committed (blocking: run it on a
/// blocking thread).
pub fn read_topics(brokers: &str, groups: &[&str]) -> anyhow::Result<Topics> {
    let timeout = Duration::from_secs(10);
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "shop-chaos-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = reader.fetch_metadata(None, timeout)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for topic in metadata.topics() {
        let name = topic.name();
        if !(name.ends_with(".events") || name.ends_with(".dlq")) {
            continue;
        }
        for partition in topic.partitions() {
            let (low, high) = reader.fetch_watermarks(name, partition.id(), timeout)?;
            if high > low {
                assignment.add_partition_offset(name, partition.id(), Offset::Beginning)?;
                ends.insert((name.to_owned(), partition.id()), high);
            }
        }
    }
    let mut topics = Topics::default();
    if !ends.is_empty() {
        reader.assign(&assignment)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut remaining = ends.clone();
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("topics not read to their end within 60 s: {remaining:?}");
        }
        let Some(message) = reader.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let place = (message.topic().to_owned(), message.partition());
        if remaining
            .get(&place)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&place);
        }
        if message.topic().ends_with(".dlq") {
            topics.dead_letters.push(DeadLetter {
                topic: message.topic().to_owned(),
                key,
                event_type: header(&message, "ce_type"),
                source_offset: header(&message, "dlq_source_offset"),
                error: header(&message, "dlq_error"),
            });
        } else {
            topics.records.push(TopicRecord {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
                key,
                event_id: header(&message, "ce_id"),
                event_type: header(&message, "ce_type"),
            });
        }
    }
    for group in groups {
        let member: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", *group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut partitions = TopicPartitionList::new();
        for (topic, partition) in ends.keys().filter(|(t, _)| t.ends_with(".events")) {
            partitions.add_partition(topic, *partition);
        }
        let committed = member.committed_offsets(partitions, timeout)?;
        let mut at = BTreeMap::new();
        for element in committed.elements() {
            let offset = element.offset().to_raw().unwrap_or(-1001);
            at.insert(
                format!("{}/{}", element.topic(), element.partition()),
                offset,
            );
        }
        topics.groups.insert((*group).to_owned(), at);
    }
    Ok(topics)
}
