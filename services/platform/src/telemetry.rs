//! One telemetry entry point: `tracing` with JSON logs off a terminal, spans and
//! log records exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (each
//! record carrying the trace and span it happened in), and W3C trace context
//! carried over gRPC metadata and Kafka headers.

use std::collections::HashMap;
use std::io::IsTerminal;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes and stops the trace and log exporters when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    logs: Option<SdkLoggerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(logs) = &self.logs
            && let Err(err) = logs.shutdown()
        {
            eprintln!("log exporter shutdown failed: {err}");
        }
        if let Err(err) = self.provider.shutdown() {
            eprintln!("trace exporter shutdown failed: {err}");
        }
    }
}

/// Targets whose events never become OTLP log records: the exporter's own
/// transport (exporting them would log the export that logs them) and the broker
/// client's chatter, which stdout keeps.
const NOT_EXPORTED_AS_LOGS: [&str; 6] = [
    "h2",
    "hyper",
    "tonic",
    "tower",
    "opentelemetry",
    "librdkafka",
];

/// Log records over OTLP, from events at `OTEL_LOGS_FILTER` (by default info) and
/// above, whatever RUST_LOG says of stdout; off with `OTEL_LOGS_EXPORTER=none`.
fn otlp_logs(
    resource: Resource,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<Option<SdkLoggerProvider>> {
    use anyhow::Context as _;
    use opentelemetry_otlp::WithTonicConfig as _;
    if std::env::var("OTEL_LOGS_EXPORTER").is_ok_and(|v| v == "none") {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::LogExporter::builder().with_tonic();
    if let Some(tls) = tls {
        exporter = exporter.with_tls_config(tls);
    }
    let exporter = exporter.build().context("building the OTLP log exporter")?;
    Ok(Some(
        SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build(),
    ))
}

fn otlp_logs_filter() -> EnvFilter {
    let base = std::env::var("OTEL_LOGS_FILTER").unwrap_or_else(|_| "info".into());
    let mut filter = EnvFilter::try_new(&base).unwrap_or_else(|_| EnvFilter::new("info"));
    for target in NOT_EXPORTED_AS_LOGS {
        if let Ok(directive) = format!("{target}=off").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global subscriber and propagator. Spans always get W3C trace ids
/// (so that trace context crosses every hop); they leave the process only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, through a bounded batch queue (over TLS
/// when it is `https://`, see `otlp_tls`).
pub fn init(service_name: &'static str) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());

    let environment = std::env::var("APP_ENV").unwrap_or_else(|_| "production".into());
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "deployment.environment.name",
            environment,
        ))
        .build();
    let exporting = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.is_empty());
    // The collector's CA and this process's pair, read once for both exporters.
    let tls = if exporting { otlp_tls()? } else { None };
    let logs = if exporting {
        otlp_logs(resource.clone(), tls.clone())?
    } else {
        None
    };
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if exporting {
        use anyhow::Context as _;
        use opentelemetry_otlp::WithTonicConfig as _;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(tls) = tls {
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter
            .build()
            .context("building the OTLP span exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service_name);

    // RUST_LOG filters the log lines only; spans go to the trace pipeline at info and
    // above (OTEL_TRACES_FILTER to change that), whatever the log level.
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let trace_filter = std::env::var("OTEL_TRACES_FILTER")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let fmt = if std::io::stdout().is_terminal() {
        tracing_subscriber::fmt::layer()
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .event_format(JsonWithTrace)
            .with_filter(log_filter)
            .boxed()
    };
    // The bridge reads the trace context that the layer above attaches on entering
    // a span, so each record names the trace and span it happened in.
    let log_bridge = logs
        .as_ref()
        .map(|logs| OpenTelemetryTracingBridge::new(logs).with_filter(otlp_logs_filter()));
    tracing_subscriber::registry()
        .with(fmt)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(trace_filter),
        )
        .with(log_bridge)
        .try_init()
        .ok();
    Ok(TelemetryGuard { provider, logs })
}

/// One JSON object per line, with the trace and span ids of the span the event
/// happened in, so that a log line leads to its trace.
struct JsonWithTrace;

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            serde_json::Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(
            field.name().to_owned(),
            serde_json::Value::String(value.to_owned()),
        );
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonWithTrace
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt;
        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), chrono::Utc::now().to_rfc3339().into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("target".into(), event.metadata().target().into());
        event.record(&mut JsonFields(&mut line));
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), span.name().into());
            let cx = tracing::Span::current().context();
            let span_context = cx.span().span_context().clone();
            if span_context.is_valid() {
                line.insert(
                    "trace_id".into(),
                    span_context.trace_id().to_string().into(),
                );
                line.insert("span_id".into(), span_context.span_id().to_string().into());
            }
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// The W3C headers (`traceparent`, `tracestate`) of the current span.
pub fn current_trace_headers() -> HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut headers = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers
}

/// The trace context carried by a map of headers.
pub fn context_from_headers(headers: &HashMap<String, String>) -> Context {
    global::get_text_map_propagator(|p| p.extract(headers))
}

struct MetadataReader<'a>(&'a MetadataMap);

impl Extractor for MetadataReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|kv| match kv {
                KeyAndValueRef::Ascii(k, _) => Some(k.as_str()),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect()
    }
}

struct MetadataWriter<'a>(&'a mut MetadataMap);

impl Injector for MetadataWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The W3C trace headers a request carries.
fn carried_trace_headers(headers: &http::HeaderMap) -> HashMap<String, String> {
    ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| {
            let value = headers.get(*k)?.to_str().ok()?;
            Some(((*k).to_owned(), value.to_owned()))
        })
        .collect()
}

/// Makes `span` continue the W3C trace that HTTP request headers carry, if any.
pub fn set_parent_from_http(span: &tracing::Span, headers: &http::HeaderMap) {
    let carried = carried_trace_headers(headers);
    if !carried.is_empty() {
        let _ = span.set_parent(context_from_headers(&carried));
    }
}

/// Leaves `span` the root of a new trace, linked to the one the request headers
/// carry: an untrusted client's `traceparent` (its sampled flag above all) then
/// decides nothing, yet its trace can still be found from ours.
pub fn link_from_http(span: &tracing::Span, headers: &http::HeaderMap) {
    let carried = carried_trace_headers(headers);
    if carried.is_empty() {
        return;
    }
    let client = context_from_headers(&carried);
    let linked = client.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// The trace context a caller sent in gRPC metadata.
pub fn context_from_metadata(metadata: &MetadataMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&MetadataReader(metadata)))
}

/// Writes the current span's context into outgoing gRPC metadata.
pub fn inject_into_metadata(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataWriter(metadata)));
}

/// The server span for one gRPC call, continuing the caller's trace; for
/// `tonic::transport::Server::trace_fn`. Health checks get none: every caller
/// probes every peer copy several times a second (grpc::channel), and kubelets
/// and load balancers probe too, which would bury the traces that matter.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.health.v1.Health/") {
        return tracing::Span::none();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    set_parent_from_http(&span, request.headers());
    span
}

/// The OTLP exporter's TLS from the specification's variables: the collector's CA
/// (`OTEL_EXPORTER_OTLP_CERTIFICATE`) and, for a collector that asks for one, this
/// process's certificate (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
/// `OTEL_EXPORTER_OTLP_CLIENT_KEY`), all PEM files. None when no CA is named: an
/// `https://` endpoint is then checked against the built-in roots.
fn otlp_tls() -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use anyhow::Context as _;
    let read = |var: &str| -> anyhow::Result<Option<String>> {
        match std::env::var(var) {
            Ok(path) if !path.is_empty() => std::fs::read_to_string(&path)
                .map(Some)
                .with_context(|| format!("{var}: cannot read {path}")),
            _ => Ok(None),
        }
    };
    let Some(ca) = read("OTEL_EXPORTER_OTLP_CERTIFICATE")? else {
        return Ok(None);
    };
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if let (Some(cert), Some(key)) = (
        read("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?,
        read("OTEL_EXPORTER_OTLP_CLIENT_KEY")?,
    ) {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}
