//! `shop-bench gateway-overhead`: GET /v1/products/{sku} through the gateway
//! against GetProduct called directly over gRPC, at the same concurrency, in one
//! run, alternating rounds; prints a Markdown section with throughput and p50/p99
//! of each and what the gateway adds. Loopback only, bounded in time.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use shop_proto::inventory::GetProductRequest;
use shop_proto::inventory::inventory_service_client::InventoryServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug)]
struct Plan {
    concurrency: usize,
    seconds: u64,
    rounds: usize,
}

#[derive(Debug, Clone, Copy)]
struct Round {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration, errors: usize) -> Round {
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Round {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        errors,
    }
}

async fn grpc_round(addr: &str, sku: &str, plan: Plan) -> anyhow::Result<Round> {
    let client = InventoryServiceClient::connect(addr.to_owned())
        .await
        .context("gRPC connect")?;
    let deadline = Instant::now() + Duration::from_secs(plan.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let mut client = client.clone();
            let sku = sku.to_owned();
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match client
                        .get_product(GetProductRequest { sku: sku.clone() })
                        .await
                    {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    Ok(summarize(all, started.elapsed(), errors))
}

/// One HTTP/1.1 keep-alive connection: GET and read one whole response.
async fn http_get(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<u16> {
    stream.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .context("content-length")?
                .parse()?;
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
    }
}

async fn http_round(host: &str, sku: &str, plan: Plan) -> anyhow::Result<Round> {
    let request = format!("GET /v1/products/{sku} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let deadline = Instant::now() + Duration::from_secs(plan.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let request = request.clone();
            let host = host.to_owned();
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0);
                let mut stream = TcpStream::connect(&host).await?;
                stream.set_nodelay(true)?;
                let mut buf = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match http_get(&mut stream, &request, &mut buf).await {
                        Ok(200) => lat.push(t.elapsed()),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            stream = TcpStream::connect(&host).await?;
                        }
                    }
                }
                anyhow::Ok((lat, errors))
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    Ok(summarize(all, started.elapsed(), errors))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(d: f64) -> String {
    format!("{:.3}", d * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("gateway-overhead") {
        bail!("usage: shop-bench gateway-overhead [CONCURRENCY] [SECONDS] [ROUNDS]");
    }
    let arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let plan = Plan {
        concurrency: arg(1, 16) as usize,
        seconds: arg(2, 5),
        rounds: arg(3, 3) as usize,
    };
    let (grpc_addr, http_host, sku) = ("http://127.0.0.1:50052", "127.0.0.1:8080", "MUG-001");
    // Warm both paths (connections, caches) before measuring.
    let warm = Plan { seconds: 1, ..plan };
    grpc_round(grpc_addr, sku, warm).await?;
    http_round(http_host, sku, warm).await?;

    let (mut grpc, mut http) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        grpc.push(grpc_round(grpc_addr, sku, plan).await?);
        http.push(http_round(http_host, sku, plan).await?);
    }
    let pick = |rounds: &[Round], f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let (g_rps, h_rps) = (pick(&grpc, |r| r.per_second), pick(&http, |r| r.per_second));
    let (g50, h50) = (
        pick(&grpc, |r| r.p50.as_secs_f64()),
        pick(&http, |r| r.p50.as_secs_f64()),
    );
    let (g99, h99) = (
        pick(&grpc, |r| r.p99.as_secs_f64()),
        pick(&http, |r| r.p99.as_secs_f64()),
    );
    let errors: usize = grpc.iter().chain(&http).map(|r| r.errors).sum();
    println!("| path | requests/s | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| gRPC GetProduct, direct to :50052 | {g_rps:.0} | {} | {} |",
        ms(g50),
        ms(g99)
    );
    println!(
        "| REST GET /v1/products/{{sku}} via gateway :8080 | {h_rps:.0} | {} | {} |",
        ms(h50),
        ms(h99)
    );
    println!();
    println!(
        "Gateway throughput = **{:.2}×** the direct gRPC throughput (goal ≥ 0.5×: {}); the gateway adds **{} ms** at p50 (goal ≤ 1 ms: {}) and {} ms at p99. \
         Concurrency {}, {} rounds of {} s each per path, alternating; medians over the rounds; {} failed requests.",
        h_rps / g_rps,
        if h_rps / g_rps >= 0.5 {
            "met"
        } else {
            "missed"
        },
        ms(h50 - g50),
        if (h50 - g50) * 1000.0 <= 1.0 {
            "met"
        } else {
            "missed"
        },
        ms(h99 - g99),
        plan.concurrency,
        plan.rounds,
        plan.seconds,
        errors
    );
    Ok(())
}
