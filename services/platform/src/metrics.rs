//! Every metric the mesh exports, declared once with its type and its label set
//! (prometheus-client), rendered in the OpenMetrics text format by the admin
//! port (services) and /metrics (gateway).
//!
//! Label values never come from a request: each is an enum, a number with a
//! fixed range, or a value from the program's own tables (the methods in the
//! contracts' descriptors, the gateway's route templates, the topics a process
//! publishes or subscribes to). So every family's series are bounded by
//! construction, whatever clients send.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What /metrics answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label value for a route, method or service the process does not know.
pub const OTHER_LABEL: &str = "other";

/// Latency buckets in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A gRPC status code as its name (`Ok`, `NotFound`, …): 17 values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct GrpcCode(pub tonic::Code);

impl EncodeLabelValue for GrpcCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        write!(encoder, "{:?}", self.0)
    }
}

/// A call a gRPC server answered: service and method from the contracts'
/// descriptors (`other` for anything else), and the code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc_service: &'static str,
    pub rpc_method: &'static str,
    pub grpc_code: GrpcCode,
}

/// A gRPC method, as `RpcLabels` names it, without the code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActiveLabels {
    pub rpc_service: &'static str,
    pub rpc_method: &'static str,
}

/// A request the gateway answered: a standard method or `other`; a route
/// template from its table, one of its own paths or `other`; the status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: Cow<'static, str>,
    pub status: u16,
}

/// A topic this process publishes to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

/// What became of an event a consumer received.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConsumerOutcome {
    Applied,
    Duplicate,
    DeadLettered,
}

impl ConsumerOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

impl EncodeLabelValue for ConsumerOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// A consumer (its name) and the one topic it subscribes to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerEventLabels {
    pub consumer: String,
    pub topic: String,
    pub outcome: ConsumerOutcome,
}

/// A partition of a consumer's topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
}

/// The state CreateOrder left an order in (the order service's four states).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SagaLabels {
    pub status: &'static str,
}

/// A backend of the gateway: a package from its own route table (`shop.user`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

/// Where a rate limit was decided: in the shared Redis, or by this copy alone
/// while Redis was unreachable.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabels {
    pub decided_by: LimitDecider,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LimitDecider {
    Shared,
    Local,
}

impl EncodeLabelValue for LimitDecider {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let name = match self {
            Self::Shared => "shared",
            Self::Local => "local",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

/// A request counter and a latency histogram with the same labels (RED figures).
#[derive(Debug)]
pub struct Red<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug> {
    pub requests: Family<L, Counter>,
    pub duration: LatencyFamily<L>,
}

impl<L> Red<L>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }

    /// Counts one request and its latency.
    pub fn record(&self, labels: &L, elapsed: Duration) {
        self.requests.get_or_create(labels).inc();
        self.duration
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// The process's metrics. Gauges read at scrape time (the outbox backlog, the
/// pool) are set by the admin port just before it renders.
#[derive(Debug)]
pub struct Metrics {
    pub rpc: Red<RpcLabels>,
    pub rpc_active: Family<ActiveLabels, Gauge>,
    pub http: Red<HttpLabels>,
    pub outbox_published: Family<TopicLabels, Counter>,
    pub outbox_backlog: Gauge,
    pub outbox_oldest_unsent_age: Gauge<f64, AtomicU64>,
    pub consumer_events: Family<ConsumerEventLabels, Counter>,
    pub consumer_lag: Family<LagLabels, Gauge>,
    pub saga_outcomes: Family<SagaLabels, Counter>,
    pub up: Gauge,
    pub db_pool_connections: Gauge,
    pub db_pool_idle_connections: Gauge,
    /// Calls to the shared Redis that failed or timed out (the local fallback answered).
    pub shared_store_failures: Counter,
    /// Whether the shared Redis answered the last call (1) or not (0).
    pub shared_store_up: Gauge,
    /// Calls sent a second time alongside a slow first attempt.
    pub hedged_calls: Counter,
    /// Retries a retry budget refused (the call failed with its first error).
    pub retries_refused: Counter,
    /// Peer addresses a client took out of its balance after a failed health probe.
    pub peer_ejections: Counter,
    /// The gateway's view of each backend at its last readiness check.
    pub backend_up: Family<BackendLabels, Gauge>,
    /// Requests the rate limit refused, by where the decision was made.
    pub rate_limited: Family<LimiterLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        Self {
            rpc: Red::new(),
            rpc_active: Family::default(),
            http: Red::new(),
            outbox_published: Family::default(),
            outbox_backlog: Gauge::default(),
            outbox_oldest_unsent_age: Gauge::default(),
            consumer_events: Family::default(),
            consumer_lag: Family::default(),
            saga_outcomes: Family::default(),
            up: Gauge::default(),
            db_pool_connections: Gauge::default(),
            db_pool_idle_connections: Gauge::default(),
            shared_store_failures: Counter::default(),
            shared_store_up: Gauge::default(),
            rate_limited: Family::default(),
            backend_up: Family::default(),
            peer_ejections: Counter::default(),
            retries_refused: Counter::default(),
            hedged_calls: Counter::default(),
        }
    }

    /// Registers every family (the registry holds clones: they share the values).
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "rpc_server_requests",
            "gRPC calls answered, by method and code",
            self.rpc.requests.clone(),
        );
        registry.register(
            "rpc_server_duration_seconds",
            "Time to answer a gRPC call (to the response headers for streams)",
            self.rpc.duration.clone(),
        );
        registry.register(
            "rpc_server_active_requests",
            "gRPC calls being answered (until the response headers for streams), by method",
            self.rpc_active.clone(),
        );
        registry.register(
            "gateway_http_requests",
            "HTTP requests by method, route and status",
            self.http.requests.clone(),
        );
        registry.register(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request (to the first byte for streams)",
            self.http.duration.clone(),
        );
        registry.register(
            "shop_outbox_published",
            "Events the relay published, by topic",
            self.outbox_published.clone(),
        );
        registry.register(
            "shop_outbox_backlog_events",
            "Events written to the outbox and not yet published",
            self.outbox_backlog.clone(),
        );
        registry.register(
            "shop_outbox_oldest_unsent_age_seconds",
            "Age of the oldest event not yet published (0 when none)",
            self.outbox_oldest_unsent_age.clone(),
        );
        registry.register(
            "shop_consumer_events",
            "Events a consumer handled, by outcome",
            self.consumer_events.clone(),
        );
        registry.register(
            "shop_consumer_lag_messages",
            "Messages between a consumer's position and the partition's end",
            self.consumer_lag.clone(),
        );
        registry.register(
            "shop_saga_outcomes",
            "CreateOrder answers, by the state the order was left in",
            self.saga_outcomes.clone(),
        );
        registry.register(
            "shop_up",
            "Whether the service is serving (1) or not (0)",
            self.up.clone(),
        );
        registry.register(
            "shop_db_pool_connections",
            "Open database connections in the pool",
            self.db_pool_connections.clone(),
        );
        registry.register(
            "shop_db_pool_idle_connections",
            "Idle database connections in the pool",
            self.db_pool_idle_connections.clone(),
        );
        registry.register(
            "shop_shared_store_failures",
            "Calls to the shared Redis that failed or timed out",
            self.shared_store_failures.clone(),
        );
        registry.register(
            "shop_shared_store_up",
            "Whether the shared Redis answered the last call (1) or not (0)",
            self.shared_store_up.clone(),
        );
        registry.register(
            "shop_rate_limited",
            "Requests a rate limit refused, by where the decision was made",
            self.rate_limited.clone(),
        );
        registry.register(
            "gateway_backend_up",
            "Whether a backend answered SERVING at the gateway's last readiness check",
            self.backend_up.clone(),
        );
        registry.register(
            "shop_peer_ejections",
            "Peer addresses taken out of a client's balance after a failed health probe",
            self.peer_ejections.clone(),
        );
        registry.register(
            "shop_retries_refused",
            "Retries a retry budget refused",
            self.retries_refused.clone(),
        );
        registry.register(
            "shop_hedged_calls",
            "Calls sent a second time, to another copy, alongside a slow first attempt",
            self.hedged_calls.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The OpenMetrics text of every family, each line labelled `service`.
pub fn render(service: &str) -> String {
    let labels = [(Cow::Borrowed("service"), Cow::Owned(service.to_owned()))];
    let mut registry = Registry::with_labels(labels.into_iter());
    metrics().register(&mut registry);
    let mut out = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %err, "metrics could not be rendered");
    }
    out
}

/// When this process started, in seconds since the Unix epoch: the machine's boot
/// time (/proc/stat's btime) plus field 22 of /proc/self/stat, the start in ticks
/// after boot. Read once: it cannot change while the process runs.
fn start_time() -> Option<f64> {
    static STARTED: OnceLock<Option<f64>> = OnceLock::new();
    *STARTED.get_or_init(|| {
        let boot: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) start after ')'.
        let ticks: f64 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()?;
        Some(boot + ticks / 100.0)
    })
}

/// Resident memory, CPU time, start time and open files of this process, read
/// from Linux's /proc at scrape time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let page = 4096.0;
        if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<f64>().ok())
        {
            let gauge = ConstGauge::new(rss * page);
            gauge.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces) start after ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let counter = ConstCounter::new((ticks(11) + ticks(12)) / 100.0);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
            // A change of it is a restart (what the ProcessRestarting alert counts).
            if let Some(started) = start_time() {
                let gauge = ConstGauge::new(started);
                gauge.encode(encoder.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds",
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let gauge = ConstGauge::new(fds.count() as i64);
            gauge.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_typed_families_with_the_service_label() {
        let m = metrics();
        let labels = RpcLabels {
            rpc_service: "shop.test.v1.Probe",
            rpc_method: "Get",
            grpc_code: GrpcCode(tonic::Code::NotFound),
        };
        m.rpc.record(&labels, Duration::from_millis(3));
        m.rpc.record(&labels, Duration::from_millis(30));
        m.saga_outcomes
            .get_or_create(&SagaLabels {
                status: "confirmed",
            })
            .inc();
        let text = render("s");
        let series = "service=\"s\",rpc_service=\"shop.test.v1.Probe\",rpc_method=\"Get\",grpc_code=\"NotFound\"";
        assert!(
            text.contains(&format!("rpc_server_requests_total{{{series}}} 2")),
            "{text}"
        );
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("rpc_server_duration_seconds_bucket{")
                        && l.contains(&format!("le=\"{le}\""))
                        && l.contains("grpc_code=\"NotFound\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(bucket("0.001").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("0.005").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("0.05").as_deref(), Some("2"), "{text}");
        assert!(text.contains("# TYPE rpc_server_duration_seconds histogram"));
        assert!(
            text.contains("shop_saga_outcomes_total{service=\"s\",status=\"confirmed\"}"),
            "{text}"
        );
        assert!(text.contains("process_open_fds{service=\"s\"}"), "{text}");
        let started: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_start_time_seconds{service=\"s\"} "))
            .expect("process_start_time_seconds")
            .parse()
            .expect("a number");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "started {started}, now {now}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
