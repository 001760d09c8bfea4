//! Section 8, a peer in the same run: the gateway against grpc-gateway (Go, v1,
//! built by `scripts/grpc-gateway-peer.sh` from Debian's packages), both in
//! front of the same inventory copy over plaintext gRPC, the same GET, the same
//! load generator, alternating rounds. `make bench` runs `peer` twice: once with
//! GetProduct answered from the product cache (no I/O behind the gateways, so
//! their own cost shows) and once with the cache off (a PostgreSQL round trip
//! per request), and `peer-report` over the two.

use serde::{Deserialize, Serialize};

use crate::tls_cost::Spread;
use crate::{Plan, http_round, orders};

/// Client connections per load: the two, a light and a crowded one.
const CONCURRENCIES: [usize; 2] = [16, 64];

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Row {
    pub concurrency: usize,
    pub ours_per_second: Spread,
    pub ours_p99_ms: Spread,
    pub peer_per_second: Spread,
    pub peer_p99_ms: Spread,
    pub errors: usize,
}

/// Rounds of GET /v1/products/{sku} on our gateway (:8080) and on the peer
/// (`peer`, host:port), alternating, at each concurrency.
pub async fn measure(plan: Plan, peer: &str) -> anyhow::Result<Vec<Row>> {
    let sku = "MUG-001";
    let mut rows = Vec::new();
    for concurrency in CONCURRENCIES {
        let load = Plan {
            concurrency,
            ..plan
        };
        let warm = Plan { seconds: 1, ..load };
        http_round(orders::GATEWAY, sku, warm).await?;
        http_round(peer, sku, warm).await?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            ours.push(http_round(orders::GATEWAY, sku, load).await?);
            theirs.push(http_round(peer, sku, load).await?);
        }
        let ms = |r: &crate::stats::Summary| r.p99.as_secs_f64() * 1000.0;
        rows.push(Row {
            concurrency,
            ours_per_second: Spread::of(&ours, |r| r.per_second),
            ours_p99_ms: Spread::of(&ours, ms),
            peer_per_second: Spread::of(&theirs, |r| r.per_second),
            peer_p99_ms: Spread::of(&theirs, ms),
            errors: ours.iter().chain(&theirs).map(|r| r.errors).sum(),
        });
    }
    Ok(rows)
}

/// The Markdown section over both backends.
pub fn render(memory: &[Row], database: &[Row]) -> String {
    let cell = |s: &Spread| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
    let cell_ms = |s: &Spread| format!("{:.2}", s.median);
    let mut out = String::from("## 8. Against grpc-gateway\n\n");
    out.push_str(
        "grpc-gateway v1.6.4 (Go 1.19, Debian's packages; `scripts/grpc-gateway-peer.sh` generates it from this repo's inventory protos) and this gateway, each in front of the same inventory copy over plaintext gRPC (the plaintext mesh of section 7), the same GET /v1/products/{sku}, the same load generator, alternating rounds; median (min–max) over the rounds. Once with GetProduct answered from the product cache, so that nothing behind the gateways does I/O and their own cost shows; once with the cache off (`PRODUCT_CACHE_TTL_MS=0`: a PostgreSQL round trip per request).\n\n",
    );
    out.push_str("| backend | connections | this gateway (requests/s) | p99 (ms) | grpc-gateway (requests/s) | p99 (ms) | ratio |\n|---|---:|---:|---:|---:|---:|---:|\n");
    let mut errors = 0;
    for (backend, rows) in [("no I/O (cache)", memory), ("PostgreSQL", database)] {
        for row in rows {
            errors += row.errors;
            out.push_str(&format!(
                "| {backend} | {} | {} | {} | {} | {} | {:.2}× |\n",
                row.concurrency,
                cell(&row.ours_per_second),
                cell_ms(&row.ours_p99_ms),
                cell(&row.peer_per_second),
                cell_ms(&row.peer_p99_ms),
                row.ours_per_second.median / row.peer_per_second.median
            ));
        }
    }
    let share = memory
        .iter()
        .map(|r| r.ours_per_second.median / r.peer_per_second.median)
        .fold(f64::INFINITY, f64::min);
    let lower_p99 = memory
        .iter()
        .chain(database)
        .all(|r| r.ours_p99_ms.median < r.peer_p99_ms.median);
    out.push_str(&format!(
        "\nOn the no-I/O backend this gateway does at least **{share:.2}×** grpc-gateway's requests/s (goal ≥ 1.5×: {}); a lower p99 than grpc-gateway's in every row (goal): {}; {errors} failed requests.\n",
        crate::goal(share >= 1.5),
        crate::goal(lower_p99),
    ));
    out
}
