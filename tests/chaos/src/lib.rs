//! The mesh's invariants (docs/design.md §5), defined once.
//!
//! A harness gathers a [`Snapshot`] of what the databases and topics hold, in
//! whatever way it can reach them: `make chaos` with psql and a topic reader
//! (tests/chaos/run.py, through the `check-invariants` binary), the Rust tests
//! with [`gather`]. [`check`] then runs every invariant whose inputs the
//! snapshot has and names each violation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub mod gather;

pub use gather::{Query, Rows, queries};

/// The CloudEvents type of the event every confirmed order must have once.
pub fn order_confirmed_type() -> String {
    format!("{}.OrderConfirmed", order_package())
}

fn order_package() -> &'static str {
    shop_proto::order::EVENTS_TOPIC
        .strip_suffix(".events")
        .unwrap_or(shop_proto::order::EVENTS_TOPIC)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub user_id: String,
    pub status: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OrderLine {
    pub order_id: String,
    pub sku: String,
    pub quantity: i64,
}

/// One row of a service's outbox.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OutboxEvent {
    pub service: String,
    pub event_id: String,
    pub topic: String,
    pub published: bool,
}

/// One record on an event topic, by its CloudEvents headers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopicRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub event_id: String,
    pub event_type: String,
}

/// One record on a dead-letter topic.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    pub key: String,
    pub event_type: String,
    pub source_offset: String,
    pub error: String,
}

/// What the topics hold: every record of every `*.events` and `*.dlq` topic, and
/// where each consumer group has committed (`"topic/partition"` → offset).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Topics {
    pub records: Vec<TopicRecord>,
    pub dead_letters: Vec<DeadLetter>,
    pub groups: BTreeMap<String, BTreeMap<String, i64>>,
}

/// A product's counters, and what its reservations say it should hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub initial_stock: i64,
    pub adjusted: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// Sum of the product's stock adjustments.
    pub adjustments: i64,
    /// Quantities on held reservations.
    pub held: i64,
    /// Quantities on committed reservations.
    pub committed: i64,
}

/// A user's figure in the user service: orders counted and not cancelled.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserOrders {
    pub user_id: String,
    pub count: i64,
}

/// What a harness could read. A missing part skips the invariants that need it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Orders a client was answered CONFIRMED.
    #[serde(default)]
    pub client_confirmed: Option<Vec<String>>,
    #[serde(default)]
    pub orders: Option<Vec<Order>>,
    #[serde(default)]
    pub order_lines: Option<Vec<OrderLine>>,
    /// Every service's outbox, all of them.
    #[serde(default)]
    pub outbox: Option<Vec<OutboxEvent>>,
    #[serde(default)]
    pub topics: Option<Topics>,
    /// Consumer (its group id) → the order-event ids in its inbox.
    #[serde(default)]
    pub inboxes: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    pub products: Option<Vec<Product>>,
    /// SKUs only the run's orders touched: their `sold` must equal confirmed lines.
    #[serde(default)]
    pub tracked_skus: Vec<String>,
    #[serde(default)]
    pub user_orders: Option<Vec<UserOrders>>,
}

/// Which invariants ran, what they saw, and what broke.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub checked: Vec<&'static str>,
    pub facts: BTreeMap<&'static str, i64>,
    pub violations: Vec<String>,
}

impl Report {
    fn fail(&mut self, violation: String) {
        self.violations.push(violation);
    }
}

/// The first few of a list, for a violation's message.
fn some<T: std::fmt::Debug>(items: &[T]) -> String {
    format!("{:?}", &items[..items.len().min(3)])
}

fn counts_as_confirmed(status: &str) -> bool {
    status == "confirmed" || status == "cancelled"
}

/// Runs every invariant the snapshot has the inputs for.
pub fn check(snapshot: &Snapshot) -> Report {
    let mut report = Report::default();
    if let Some(orders) = &snapshot.orders {
        report.facts.insert("orders", orders.len() as i64);
        let confirmed = orders
            .iter()
            .filter(|o| counts_as_confirmed(&o.status))
            .count();
        report.facts.insert("confirmed", confirmed as i64);
        orders_settled(snapshot, orders, &mut report);
    }
    if let Some(topics) = &snapshot.topics {
        report.facts.insert("events", topics.records.len() as i64);
        no_dead_letters(topics, &mut report);
        if let Some(outbox) = &snapshot.outbox {
            outbox_matches_topics(outbox, topics, &mut report);
        }
        if let Some(orders) = &snapshot.orders {
            one_confirmation_per_order(orders, topics, &mut report);
        }
        if let Some(inboxes) = &snapshot.inboxes {
            consumers_applied_each_event_once(inboxes, topics, &mut report);
        }
    }
    if let Some(products) = &snapshot.products {
        stock_adds_up(products, &mut report);
        if let (Some(orders), Some(lines)) = (&snapshot.orders, &snapshot.order_lines) {
            sold_is_what_orders_hold(snapshot, products, orders, lines, &mut report);
        }
    }
    if let (Some(orders), Some(user_orders)) = (&snapshot.orders, &snapshot.user_orders) {
        user_figures_match_orders(orders, user_orders, &mut report);
    }
    report
}

/// 1. Every order a client saw confirmed is stored CONFIRMED or CANCELLED; no
///    order is PENDING.
fn orders_settled(snapshot: &Snapshot, orders: &[Order], report: &mut Report) {
    report.checked.push("1 orders settled");
    let status: HashMap<&str, &str> = orders
        .iter()
        .map(|o| (o.order_id.as_str(), o.status.as_str()))
        .collect();
    if let Some(seen) = &snapshot.client_confirmed {
        let missing: Vec<&String> = seen
            .iter()
            .filter(|o| {
                !status
                    .get(o.as_str())
                    .is_some_and(|s| counts_as_confirmed(s))
            })
            .collect();
        if !missing.is_empty() {
            report.fail(format!(
                "{} orders a client saw confirmed are not stored as such: {}",
                missing.len(),
                some(&missing)
            ));
        }
    }
    let pending: Vec<&str> = orders
        .iter()
        .filter(|o| o.status == "pending")
        .map(|o| o.order_id.as_str())
        .collect();
    if !pending.is_empty() {
        report.fail(format!(
            "{} orders still pending: {}",
            pending.len(),
            some(&pending)
        ));
    }
}

/// 2. No record on any dead-letter topic.
fn no_dead_letters(topics: &Topics, report: &mut Report) {
    report.checked.push("2 no dead letters");
    for d in &topics.dead_letters {
        report.fail(format!(
            "dead letter on {}: {} for {} (offset {}): {}",
            d.topic, d.event_type, d.key, d.source_offset, d.error
        ));
    }
}

/// 3. Every record on the event topics has an outbox row in some service's
///    database, and every outbox row is stamped sent with its event on a topic.
fn outbox_matches_topics(outbox: &[OutboxEvent], topics: &Topics, report: &mut Report) {
    report.checked.push("3 outbox matches topics");
    let mut on_topics: HashMap<&str, usize> = HashMap::new();
    for r in &topics.records {
        *on_topics.entry(r.event_id.as_str()).or_default() += 1;
    }
    let duplicates: usize = on_topics.values().map(|n| n - 1).sum();
    report
        .facts
        .insert("duplicate deliveries", duplicates as i64);
    let written: HashSet<&str> = outbox.iter().map(|e| e.event_id.as_str()).collect();
    let stray: Vec<&str> = on_topics
        .keys()
        .filter(|e| !written.contains(*e))
        .copied()
        .collect();
    if !stray.is_empty() {
        report.fail(format!(
            "{} events on topics have no outbox row (a rolled-back write?): {}",
            stray.len(),
            some(&stray)
        ));
    }
    let unsent: Vec<String> = outbox
        .iter()
        .filter(|e| !e.published || !on_topics.contains_key(e.event_id.as_str()))
        .map(|e| {
            let stamp = if e.published {
                "stamped sent"
            } else {
                "not stamped"
            };
            format!("{} ({}, {}, {stamp})", e.event_id, e.service, e.topic)
        })
        .collect();
    if !unsent.is_empty() {
        report.fail(format!(
            "{} outbox events never reached their topic: {}",
            unsent.len(),
            some(&unsent)
        ));
    }
}

/// 4. Every order stored CONFIRMED or CANCELLED has exactly one OrderConfirmed
///    event id under its key, and no other order has one.
fn one_confirmation_per_order(orders: &[Order], topics: &Topics, report: &mut Report) {
    report.checked.push("4 one confirmation per order");
    let confirmed_type = order_confirmed_type();
    let mut events: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in topics
        .records
        .iter()
        .filter(|r| r.event_type == confirmed_type)
    {
        events
            .entry(r.key.as_str())
            .or_default()
            .insert(r.event_id.as_str());
    }
    let ever: HashSet<&str> = orders
        .iter()
        .filter(|o| counts_as_confirmed(&o.status))
        .map(|o| o.order_id.as_str())
        .collect();
    let wrong: Vec<&str> = ever
        .iter()
        .filter(|o| events.get(*o).map_or(0, HashSet::len) != 1)
        .copied()
        .collect();
    if !wrong.is_empty() {
        report.fail(format!(
            "{} confirmed orders without exactly one OrderConfirmed: {}",
            wrong.len(),
            some(&wrong)
        ));
    }
    let extra: Vec<&str> = events
        .keys()
        .filter(|o| !ever.contains(*o))
        .copied()
        .collect();
    if !extra.is_empty() {
        report.fail(format!(
            "{} OrderConfirmed events for orders never confirmed: {}",
            extra.len(),
            some(&extra)
        ));
    }
}

/// 5. Each consumer's inbox holds every order-event id on the topic exactly once,
///    and its group has committed to the end of every partition.
fn consumers_applied_each_event_once(
    inboxes: &BTreeMap<String, Vec<String>>,
    topics: &Topics,
    report: &mut Report,
) {
    report.checked.push("5 consumers applied each event once");
    let order_topic = shop_proto::order::EVENTS_TOPIC;
    let mut at: HashMap<&str, (String, i64)> = HashMap::new();
    let mut ends: BTreeMap<String, i64> = BTreeMap::new();
    for r in topics.records.iter().filter(|r| r.topic == order_topic) {
        let partition = format!("{}/{}", r.topic, r.partition);
        let end = ends.entry(partition.clone()).or_default();
        *end = (*end).max(r.offset + 1);
        at.insert(r.event_id.as_str(), (partition, r.offset));
    }
    for (consumer, inbox) in inboxes {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for e in inbox {
            *seen.entry(e.as_str()).or_default() += 1;
        }
        let committed = topics.groups.get(consumer);
        let twice = seen.values().any(|n| *n > 1);
        let missing: Vec<&(String, i64)> = at
            .iter()
            .filter(|(e, _)| !seen.contains_key(*e))
            .map(|(_, where_)| where_)
            .collect();
        let unknown = seen.keys().any(|e| !at.contains_key(e));
        if twice || unknown || !missing.is_empty() {
            // Where the missing ones are, and where the group's committed offsets stand.
            let mut gaps: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
            for (partition, offset) in &missing {
                gaps.entry(partition.as_str()).or_default().push(*offset);
            }
            let detail: Vec<String> = gaps
                .iter()
                .map(|(tp, offsets)| {
                    let low = offsets.iter().min().copied().unwrap_or_default();
                    let high = offsets.iter().max().copied().unwrap_or_default();
                    let group = committed.and_then(|c| c.get(*tp));
                    format!(
                        "{tp}: {} missing at offsets {low}–{high}, group committed {group:?}",
                        offsets.len()
                    )
                })
                .collect();
            report.fail(format!(
                "{consumer} consumer: inbox holds {} of {} order events{}{}",
                seen.len(),
                at.len(),
                if twice { ", some twice" } else { "" },
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", detail.join("; "))
                }
            ));
        }
        let behind: Vec<String> = ends
            .iter()
            .filter_map(|(tp, end)| {
                let done = committed.and_then(|c| c.get(tp)).copied().unwrap_or(0);
                (done < *end).then(|| format!("{tp} ({done} of {end})"))
            })
            .collect();
        if !behind.is_empty() {
            report.fail(format!(
                "{consumer} group has not committed to the end of {}",
                behind.join(", ")
            ));
        }
    }
}

/// 6. Per product: `initial_stock + adjusted = available + reserved + sold`,
///    nothing negative, `adjusted` the sum of its adjustments, `reserved` what held
///    reservations hold and `sold` what committed ones do.
fn stock_adds_up(products: &[Product], report: &mut Report) {
    report.checked.push("6 stock adds up");
    for p in products {
        let Product {
            sku,
            initial_stock,
            adjusted,
            available,
            reserved,
            sold,
            adjustments,
            held,
            committed,
        } = p;
        if initial_stock + adjusted != available + reserved + sold {
            report.fail(format!(
                "{sku}: initial {initial_stock} + adjusted {adjusted} != available {available} + reserved {reserved} + sold {sold}"
            ));
        }
        if *available < 0 || *reserved < 0 || *sold < 0 {
            report.fail(format!(
                "{sku}: a negative counter (available {available}, reserved {reserved}, sold {sold})"
            ));
        }
        if adjusted != adjustments {
            report.fail(format!(
                "{sku}: adjusted {adjusted} but its adjustments add up to {adjustments}"
            ));
        }
        if reserved != held {
            report.fail(format!(
                "{sku}: reserved {reserved} but held reservations hold {held}"
            ));
        }
        if sold != committed {
            report.fail(format!(
                "{sku}: sold {sold} but committed reservations hold {committed}"
            ));
        }
    }
}

/// 6, across services: for the run's own SKUs, `sold` is the quantities on
/// CONFIRMED orders and nothing is reserved once the mesh is quiet.
fn sold_is_what_orders_hold(
    snapshot: &Snapshot,
    products: &[Product],
    orders: &[Order],
    lines: &[OrderLine],
    report: &mut Report,
) {
    report.checked.push("6 sold is what confirmed orders hold");
    let confirmed: HashSet<&str> = orders
        .iter()
        .filter(|o| o.status == "confirmed")
        .map(|o| o.order_id.as_str())
        .collect();
    let mut want: HashMap<&str, i64> = HashMap::new();
    for l in lines
        .iter()
        .filter(|l| confirmed.contains(l.order_id.as_str()))
    {
        *want.entry(l.sku.as_str()).or_default() += l.quantity;
    }
    let tracked: BTreeSet<&str> = snapshot.tracked_skus.iter().map(String::as_str).collect();
    for p in products.iter().filter(|p| tracked.contains(p.sku.as_str())) {
        let sold = want.get(p.sku.as_str()).copied().unwrap_or(0);
        if p.sold != sold || p.reserved != 0 {
            report.fail(format!(
                "{}: sold {} reserved {}, orders say sold {sold} reserved 0",
                p.sku, p.sold, p.reserved
            ));
        }
    }
}

/// 7. Per user: CONFIRMED orders = the user service's not-cancelled order rows.
fn user_figures_match_orders(orders: &[Order], user_orders: &[UserOrders], report: &mut Report) {
    report.checked.push("7 user figures match orders");
    let mut want: BTreeMap<&str, i64> = BTreeMap::new();
    for o in orders.iter().filter(|o| o.status == "confirmed") {
        *want.entry(o.user_id.as_str()).or_default() += 1;
    }
    let have: BTreeMap<&str, i64> = user_orders
        .iter()
        .filter(|u| u.count > 0)
        .map(|u| (u.user_id.as_str(), u.count))
        .collect();
    if want != have {
        let differ: Vec<&str> = want
            .keys()
            .chain(have.keys())
            .filter(|u| want.get(*u) != have.get(*u))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        report.fail(format!(
            "user figures differ from orders for {} users: {}",
            differ.len(),
            some(&differ)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, user: &str, status: &str) -> Order {
        Order {
            order_id: id.into(),
            user_id: user.into(),
            status: status.into(),
        }
    }

    fn record(offset: i64, key: &str, id: &str, event_type: &str) -> TopicRecord {
        TopicRecord {
            topic: shop_proto::order::EVENTS_TOPIC.into(),
            partition: 0,
            offset,
            key: key.into(),
            event_id: id.into(),
            event_type: event_type.into(),
        }
    }

    fn quiet_mesh() -> Snapshot {
        let confirmed = order_confirmed_type();
        let topic = shop_proto::order::EVENTS_TOPIC;
        let groups = BTreeMap::from([(
            "inventory-service".to_owned(),
            BTreeMap::from([(format!("{topic}/0"), 1)]),
        )]);
        Snapshot {
            client_confirmed: Some(vec!["o1".into()]),
            orders: Some(vec![
                order("o1", "u1", "confirmed"),
                order("o2", "u1", "rejected"),
            ]),
            order_lines: Some(vec![OrderLine {
                order_id: "o1".into(),
                sku: "A".into(),
                quantity: 2,
            }]),
            outbox: Some(vec![OutboxEvent {
                service: "order".into(),
                event_id: "e1".into(),
                topic: topic.into(),
                published: true,
            }]),
            topics: Some(Topics {
                records: vec![record(0, "o1", "e1", &confirmed)],
                dead_letters: vec![],
                groups,
            }),
            inboxes: Some(BTreeMap::from([(
                "inventory-service".to_owned(),
                vec!["e1".to_owned()],
            )])),
            products: Some(vec![Product {
                sku: "A".into(),
                initial_stock: 10,
                available: 8,
                sold: 2,
                committed: 2,
                ..Product::default()
            }]),
            tracked_skus: vec!["A".into()],
            user_orders: Some(vec![UserOrders {
                user_id: "u1".into(),
                count: 1,
            }]),
        }
    }

    #[test]
    fn a_quiet_mesh_keeps_every_invariant() {
        let report = check(&quiet_mesh());
        assert_eq!(report.violations, Vec::<String>::new());
        assert_eq!(report.checked.len(), 8, "{:?}", report.checked);
    }

    #[test]
    fn each_break_is_named() {
        type Break = fn(&mut Snapshot);
        let breaks: [(&str, Break); 8] = [
            ("not stored as such", |s| {
                s.orders.as_mut().unwrap()[0].status = "rejected".into();
            }),
            ("dead letter", |s| {
                s.topics
                    .as_mut()
                    .unwrap()
                    .dead_letters
                    .push(DeadLetter::default());
            }),
            ("no outbox row", |s| s.outbox.as_mut().unwrap().clear()),
            ("without exactly one OrderConfirmed", |s| {
                let confirmed = order_confirmed_type();
                let records = &mut s.topics.as_mut().unwrap().records;
                records.push(record(1, "o1", "e2", &confirmed));
            }),
            ("inbox holds", |s| {
                s.inboxes
                    .as_mut()
                    .unwrap()
                    .get_mut("inventory-service")
                    .unwrap()
                    .push("e1".into());
            }),
            ("initial 10", |s| {
                s.products.as_mut().unwrap()[0].available = 9
            }),
            ("orders say sold", |s| {
                s.order_lines.as_mut().unwrap()[0].quantity = 3;
            }),
            ("user figures differ", |s| {
                s.user_orders.as_mut().unwrap()[0].count = 2;
            }),
        ];
        for (expected, breaking) in breaks {
            let mut snapshot = quiet_mesh();
            breaking(&mut snapshot);
            let report = check(&snapshot);
            assert!(
                report.violations.iter().any(|v| v.contains(expected)),
                "{expected}: {:?}",
                report.violations
            );
        }
    }

    #[test]
    fn a_partial_snapshot_checks_only_what_it_has() {
        let snapshot = Snapshot {
            products: quiet_mesh().products,
            ..Snapshot::default()
        };
        let report = check(&snapshot);
        assert_eq!(report.checked, vec!["6 stock adds up"]);
        assert!(report.violations.is_empty());
    }
}
