//! Counters and histograms for Prometheus: one registry per process, rendered by
//! the admin port (services) or /metrics (gateway), plus process figures read
//! from /proc at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Label sets kept per family. Labels come from known routes, methods and codes,
/// so a family never needs this many; the cap is the backstop that keeps a
/// scrape bounded if a label ever takes a value from a client.
pub const MAX_SERIES_PER_FAMILY: usize = 1_000;

/// Latency buckets in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Debug, Default)]
struct Family {
    help: &'static str,
    kind: &'static str,
    /// Rendered label set (`a="x",b="y"`) → value.
    values: BTreeMap<String, f64>,
    histograms: BTreeMap<String, Histogram>,
    /// Samples refused because the family was full.
    dropped: u64,
}

/// The slot for `key` in `series`; None, and the sample counted in `dropped`, once
/// the family holds `MAX_SERIES_PER_FAMILY` other series.
fn bounded_slot<'a, V: Default>(
    series: &'a mut BTreeMap<String, V>,
    dropped: &mut u64,
    key: String,
) -> Option<&'a mut V> {
    if series.len() >= MAX_SERIES_PER_FAMILY && !series.contains_key(&key) {
        *dropped += 1;
        return None;
    }
    Some(series.entry(key).or_default())
}

impl Family {
    fn value(&mut self, key: String) -> Option<&mut f64> {
        bounded_slot(&mut self.values, &mut self.dropped, key)
    }

    fn histogram(&mut self, key: String) -> Option<&mut Histogram> {
        bounded_slot(&mut self.histograms, &mut self.dropped, key)
    }
}

/// A request counter and a latency histogram with the same labels (RED figures).
#[derive(Clone, Copy, Debug)]
pub struct RedFamilies {
    pub requests: &'static str,
    pub requests_help: &'static str,
    pub duration: &'static str,
    pub duration_help: &'static str,
}

#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', " ")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The process's registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Registry {
    fn family<R>(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        f: impl FnOnce(&mut Family) -> R,
    ) -> R {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            ..Family::default()
        });
        f(family)
    }

    pub fn inc(&self, name: &'static str, help: &'static str, pairs: &[(&str, &str)]) {
        self.family(name, help, "counter", |f| {
            if let Some(value) = f.value(labels(pairs)) {
                *value += 1.0;
            }
        });
    }

    /// Counts one request and its latency, rendering the labels once for both.
    pub fn record(&self, red: &RedFamilies, pairs: &[(&str, &str)], elapsed: Duration) {
        let key = labels(pairs);
        self.family(red.requests, red.requests_help, "counter", |f| {
            if let Some(value) = f.value(key.clone()) {
                *value += 1.0;
            }
        });
        self.observe_key(red.duration, red.duration_help, key, elapsed);
    }

    pub fn set(&self, name: &'static str, help: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.family(name, help, "gauge", |f| {
            if let Some(slot) = f.value(labels(pairs)) {
                *slot = value;
            }
        });
    }

    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&str, &str)],
        elapsed: Duration,
    ) {
        self.observe_key(name, help, labels(pairs), elapsed);
    }

    fn observe_key(&self, name: &'static str, help: &'static str, key: String, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.family(name, help, "histogram", |f| {
            let Some(h) = f.histogram(key) else {
                return;
            };
            h.count += 1;
            h.sum += secs;
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.buckets[i] += 1;
                }
            }
        });
    }

    /// Prometheus text format; `base` labels (e.g. `service="order-service"`) go on every line.
    pub fn render(&self, base: &[(&str, &str)]) -> String {
        let base = labels(base);
        let join = |l: &str| match (base.is_empty(), l.is_empty()) {
            (true, _) => l.to_owned(),
            (false, true) => base.clone(),
            (false, false) => format!("{base},{l}"),
        };
        let mut out = String::new();
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let dropped: Vec<(&str, u64)> = families
            .iter()
            .filter(|(_, f)| f.dropped > 0)
            .map(|(name, f)| (*name, f.dropped))
            .collect();
        if !dropped.is_empty() {
            let _ = writeln!(
                out,
                "# HELP shop_metrics_series_dropped_total Samples not recorded because their family already held {MAX_SERIES_PER_FAMILY} series."
            );
            let _ = writeln!(out, "# TYPE shop_metrics_series_dropped_total counter");
            for (family, n) in dropped {
                let l = join(&labels(&[("family", family)]));
                let _ = writeln!(out, "shop_metrics_series_dropped_total{{{l}}} {n}");
            }
        }
        for (name, f) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (l, v) in &f.values {
                let _ = writeln!(out, "{name}{{{}}} {v}", join(l));
            }
            for (l, h) in &f.histograms {
                let l = join(l);
                let sep = if l.is_empty() { "" } else { "," };
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{l}{sep}le=\"{bound}\"}} {}",
                        h.buckets[i]
                    );
                }
                let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
            }
        }
        out.push_str(&process_metrics(&base));
        out
    }
}

/// Resident memory, CPU time and open files of this process (Linux /proc).
fn process_metrics(base: &str) -> String {
    let mut out = String::new();
    let page = 4096.0;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
    {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes."
        );
        let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(
            out,
            "process_resident_memory_bytes{{{base}}} {}",
            rss * page
        );
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
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time spent in seconds."
        );
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(out, "process_cpu_seconds_total{{{base}}} {cpu}");
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors."
        );
        let _ = writeln!(out, "# TYPE process_open_fds gauge");
        let _ = writeln!(out, "process_open_fds{{{base}}} {}", fds.count());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let r = Registry::default();
        r.inc("x_total", "Things.", &[("k", "a\"b")]);
        r.inc("x_total", "Things.", &[("k", "a\"b")]);
        r.set("y", "Level.", &[], 3.0);
        r.observe(
            "z_seconds",
            "Time.",
            &[("rpc", "Get")],
            Duration::from_millis(3),
        );
        let text = r.render(&[("service", "s")]);
        assert!(
            text.contains("x_total{service=\"s\",k=\"a\\\"b\"} 2"),
            "{text}"
        );
        assert!(text.contains("y{service=\"s\"} 3"), "{text}");
        assert!(
            text.contains("z_seconds_bucket{service=\"s\",rpc=\"Get\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("z_seconds_bucket{service=\"s\",rpc=\"Get\",le=\"0.001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("z_seconds_count{service=\"s\",rpc=\"Get\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE z_seconds histogram"), "{text}");
    }

    #[test]
    fn a_family_holds_at_most_its_cap_of_series_and_counts_the_rest() {
        let r = Registry::default();
        for i in 0..MAX_SERIES_PER_FAMILY + 50 {
            r.inc("junk_total", "Junk.", &[("k", &i.to_string())]);
            r.observe(
                "junk_seconds",
                "Junk.",
                &[("k", &i.to_string())],
                Duration::ZERO,
            );
        }
        // A series that exists keeps counting once the family is full.
        r.inc("junk_total", "Junk.", &[("k", "0")]);
        let text = r.render(&[]);
        let series = text
            .lines()
            .filter(|l| l.starts_with("junk_total{"))
            .count();
        assert_eq!(series, MAX_SERIES_PER_FAMILY);
        let histograms = text
            .lines()
            .filter(|l| l.starts_with("junk_seconds_count{"))
            .count();
        assert_eq!(histograms, MAX_SERIES_PER_FAMILY);
        assert!(text.contains("junk_total{k=\"0\"} 2"), "{text}");
        assert!(
            text.contains("shop_metrics_series_dropped_total{family=\"junk_total\"} 50"),
            "{text}"
        );
    }
}
