//! HTTP/2 with prior knowledge (h2c) for load generation: one connection per
//! worker, one request at a time on it, as the HTTP/1.1 rounds do, so that the
//! two rows differ by the protocol alone. Each worker drives its connection in
//! its own task, as the HTTP/1.1 client does, rather than handing it to another
//! task: on two shared cores the client's own hops between tasks would otherwise
//! be measured as the server's.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use h2::client::SendRequest;

use crate::Plan;
use crate::stats::{self, Summary};

/// GETs of `/v1/products/{sku}` through the gateway at `host` over h2c.
pub async fn round(host: &str, sku: &str, plan: Plan) -> anyhow::Result<Summary> {
    let uri = format!("http://{host}/v1/products/{sku}");
    let deadline = Instant::now() + Duration::from_secs(plan.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let (host, uri) = (host.to_owned(), uri.clone());
            tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(&host)
                    .await
                    .with_context(|| format!("connect {host}"))?;
                tcp.set_nodelay(true)?;
                let (mut sender, connection) = h2::client::handshake(tcp).await?;
                let mut connection = std::pin::pin!(connection);
                let (mut lat, mut errors) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let status = tokio::select! {
                        status = get(&mut sender, &uri) => status,
                        ended = &mut connection => anyhow::bail!("the connection ended: {ended:?}"),
                    };
                    match status {
                        Ok(200) => lat.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                anyhow::Ok((lat, errors))
            })
        })
        .collect();
    stats::gather(tasks, started).await
}

/// One GET once the connection takes a stream, its body read whole; returns the status.
async fn get(sender: &mut SendRequest<Bytes>, uri: &str) -> anyhow::Result<u16> {
    *sender = sender.clone().ready().await?;
    let request = http::Request::get(uri).body(())?;
    let (response, _) = sender.send_request(request, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(status)
}
