//! Section 7, what mutual TLS costs: the same gateway and CreateOrder loads
//! against the mesh with every gRPC hop on mutual TLS (as `make dev` runs it)
//! and against the same binaries with every hop in plaintext
//! (`SHOPMESH_BENCH_PLAINTEXT`). `make bench` runs `tls-cost` once against each
//! mesh and `tls-report` over the two results.

use serde::{Deserialize, Serialize};

use crate::stats::{self, Summary};
use crate::{Plan, grpc_round, http_round, orders};

/// CreateOrder's closed loop runs at this many concurrent clients (section 3's
/// ladder peaks here on two cores).
const ORDER_CONCURRENCY: usize = 16;

/// The median of the rounds with the lowest and highest beside it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(rounds: &[Summary], figure: fn(&Summary) -> f64) -> Self {
        let values: Vec<f64> = rounds.iter().map(figure).collect();
        Self {
            median: stats::median(values.clone()),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Figures {
    pub grpc_per_second: Spread,
    pub gateway_per_second: Spread,
    pub gateway_p50_ms: Spread,
    pub orders_per_second: Spread,
    pub orders_p99_ms: Spread,
    pub errors: usize,
}

/// Rounds of direct GetProduct, GetProduct through the gateway and CreateOrder,
/// alternating, against whichever mesh is running on the README's ports.
pub async fn measure(plan: Plan, plaintext: bool) -> anyhow::Result<Figures> {
    let scheme = if plaintext { "http" } else { "https" };
    let grpc_addr = format!("{scheme}://127.0.0.1:50052");
    let sku = "MUG-001";
    let shop = std::sync::Arc::new(orders::setup_as_admin().await?);
    let warm = Plan { seconds: 1, ..plan };
    grpc_round(&grpc_addr, sku, warm).await?;
    http_round(orders::GATEWAY, sku, warm).await?;
    orders::closed_loop(shop.clone(), ORDER_CONCURRENCY, 1).await?;
    let (mut grpc, mut rest, mut placed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        grpc.push(grpc_round(&grpc_addr, sku, plan).await?);
        rest.push(http_round(orders::GATEWAY, sku, plan).await?);
        placed.push(orders::closed_loop(shop.clone(), ORDER_CONCURRENCY, plan.seconds).await?);
    }
    Ok(Figures {
        grpc_per_second: Spread::of(&grpc, |r| r.per_second),
        gateway_per_second: Spread::of(&rest, |r| r.per_second),
        gateway_p50_ms: Spread::of(&rest, |r| r.p50.as_secs_f64() * 1000.0),
        orders_per_second: Spread::of(&placed, |r| r.per_second),
        orders_p99_ms: Spread::of(&placed, |r| r.p99.as_secs_f64() * 1000.0),
        errors: grpc
            .iter()
            .chain(&rest)
            .chain(&placed)
            .map(|r| r.errors)
            .sum(),
    })
}

/// The Markdown section comparing the two meshes.
pub fn render(tls: &Figures, plain: &Figures) -> String {
    let cell = |s: &Spread| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
    let cell_ms = |s: &Spread| format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max);
    // The share of plaintext's requests/s that mutual TLS gives up.
    let fewer = |on: &Spread, off: &Spread| (1.0 - on.median / off.median) * 100.0;
    let rows = [
        (
            "gRPC GetProduct direct (requests/s)",
            cell(&tls.grpc_per_second),
            cell(&plain.grpc_per_second),
            Some(fewer(&tls.grpc_per_second, &plain.grpc_per_second)),
        ),
        (
            "GET /v1/products/{sku} via the gateway (requests/s)",
            cell(&tls.gateway_per_second),
            cell(&plain.gateway_per_second),
            Some(fewer(&tls.gateway_per_second, &plain.gateway_per_second)),
        ),
        (
            "the gateway's p50 (ms)",
            cell_ms(&tls.gateway_p50_ms),
            cell_ms(&plain.gateway_p50_ms),
            None,
        ),
        (
            "CreateOrder via the gateway, closed loop (orders/s)",
            cell(&tls.orders_per_second),
            cell(&plain.orders_per_second),
            Some(fewer(&tls.orders_per_second, &plain.orders_per_second)),
        ),
        (
            "CreateOrder p99 (ms)",
            cell_ms(&tls.orders_p99_ms),
            cell_ms(&plain.orders_p99_ms),
            None,
        ),
    ];
    let mut out = String::from("## 7. What mutual TLS costs\n\n");
    out.push_str(&format!(
        "The same release binaries on the same ports, first with every gRPC hop on mutual TLS (as `make dev` runs them; the gateway's HTTP side is plain HTTP in both), then restarted with every hop in plaintext (`SHOPMESH_BENCH_PLAINTEXT=1`, which only this benchmark sets). Each mesh: rounds of direct GetProduct, GetProduct through the gateway and CreateOrder at {ORDER_CONCURRENCY} concurrent clients, alternating; median (min–max) over the rounds. The plaintext mesh runs second, on a database the first run has already grown.\n\n"
    ));
    out.push_str("| figure | mutual TLS | plaintext | TLS costs |\n|---|---:|---:|---:|\n");
    let mut worst: f64 = 0.0;
    for (name, on, off, cost) in rows {
        let cost_cell = cost.map_or_else(String::new, |c| {
            worst = worst.max(c);
            // Below zero the TLS mesh did better: noise between the two meshes.
            if c >= 0.0 {
                format!("{c:.1} % fewer")
            } else {
                format!("none (TLS measured {:.1} % more)", -c)
            }
        });
        out.push_str(&format!("| {name} | {on} | {off} | {cost_cell} |\n"));
    }
    out.push_str(&format!(
        "\nAt most {worst:.1} % fewer requests/s with mutual TLS (goal ≤ 15 %: {}); {} failed requests with TLS, {} without.\n",
        crate::goal(worst <= 15.0),
        tls.errors,
        plain.errors
    ));
    out
}
