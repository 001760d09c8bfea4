//! Latency summaries.

use std::time::Duration;

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: usize,
}

pub fn summarize(mut latencies: Vec<Duration>, elapsed: Duration, errors: usize) -> Summary {
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Summary {
        count: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50: at(0.50),
        p99: at(0.99),
        errors,
    }
}

/// A load worker: the latencies of its good requests, and how many failed.
pub type Worker = tokio::task::JoinHandle<anyhow::Result<(Vec<Duration>, usize)>>;

/// What each load worker measured (latencies of its good requests, and how many
/// failed), summarised together over the time since `started`.
pub async fn gather(workers: Vec<Worker>, started: std::time::Instant) -> anyhow::Result<Summary> {
    let (mut all, mut errors) = (Vec::new(), 0);
    for worker in workers {
        let (latencies, failed) = worker.await??;
        all.extend(latencies);
        errors += failed;
    }
    Ok(summarize(all, started.elapsed(), errors))
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

pub fn ms_f(secs: f64) -> String {
    format!("{:.2}", secs * 1000.0)
}
