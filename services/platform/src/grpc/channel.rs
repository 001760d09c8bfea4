//! Client channels: connections kept, calls balanced over every address a name
//! resolves to, the names looked up again as peers move, and copies that stop
//! answering taken out of the balance until they answer again.
//!
//! Balancing is tonic's: tower's power-of-two-choices over the ready endpoints,
//! by pending requests. What tower cannot see is a copy that accepts connections
//! but never answers (frozen, overloaded) or has gone for good: every caller
//! probes each address with grpc.health.v1 every `PROBE_EVERY`, and one that
//! fails, times out or says NOT_SERVING is ejected for a period that doubles with
//! each failed probe back (1 s up to 30 s). The balance is never left empty: if
//! every copy is ejected, all are kept, as Envoy's panic threshold does.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::transport::channel::Change;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::tls::{FileStamp, TlsFiles};

/// How often a channel resolves its peers' names again, so that a peer which comes
/// back on a new address (a recreated container, a pod rescheduled behind a
/// headless service) is reached without restarting the caller.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// How often every address a channel holds is asked whether it serves.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A probe without an answer this long is a failure (a frozen copy).
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// The first ejection of an address; each failed probe back doubles it.
const FIRST_EJECTION: Duration = Duration::from_secs(1);
const MAX_EJECTION: Duration = Duration::from_secs(30);

/// A channel to `target` (`http://host:port` or, with `tls`, `https://host:port`;
/// several comma-separated): calls balanced across every address the names
/// resolve to, connections kept, and the names resolved again every `every`
/// (`PEER_RESOLVE_EVERY_MS`, by default `RESOLVE_EVERY`). Over https each
/// connection presents this workload's certificate and requires the peer's to
/// name the host written in `target`; a changed certificate on disk is used for
/// the connections made after the next look-up.
pub async fn channel_every(
    target: &str,
    connect_timeout: Duration,
    every: Duration,
    tls: Option<&TlsFiles>,
) -> anyhow::Result<Channel> {
    channel_resolved_by(
        target,
        connect_timeout,
        every,
        tls,
        |authority| async move {
            tokio::net::lookup_host(authority)
                .await
                .map(Iterator::collect)
        },
    )
    .await
}

/// `channel` with its name lookup and period given (tests resolve names by hand).
/// A name that resolves to no usable address is dialled as written, which resolves
/// it again on every connection attempt; a lookup that fails or hangs keeps the
/// addresses the name had.
pub async fn channel_resolved_by<R, F>(
    target: &str,
    connect_timeout: Duration,
    every: Duration,
    tls: Option<&TlsFiles>,
    resolve: R,
) -> anyhow::Result<Channel>
where
    R: Fn(String) -> F + Send + Sync + 'static,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    use anyhow::Context as _;
    let targets: Vec<String> = target
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!targets.is_empty(), "no gRPC address in {target:?}");
    for uri in &targets {
        peer_endpoint(uri, connect_timeout, None)
            .with_context(|| format!("not a valid gRPC address: {uri}"))?;
        if uri.starts_with("https://") && tls.is_none() {
            anyhow::bail!(
                "{uri}: an https:// peer needs this workload's certificate (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE)"
            );
        }
    }
    let (channel, changes) = Channel::balance_channel::<String>(1024);
    let mut peers = PeerSet {
        targets,
        tls: tls.cloned(),
        tls_stamp: None,
        connect_timeout,
        lookup_timeout: every.max(Duration::from_secs(1)),
        by_target: BTreeMap::new(),
        inserted: BTreeSet::new(),
        probes: BTreeMap::new(),
        ejected: BTreeMap::new(),
    };
    peers.resolve(&resolve).await;
    peers.apply(&changes).await;
    tokio::spawn(async move {
        let mut lookups = tokio::time::interval(every);
        let mut probes = tokio::time::interval(PROBE_EVERY);
        for ticks in [&mut lookups, &mut probes] {
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        lookups.tick().await;
        loop {
            tokio::select! {
                _ = lookups.tick() => peers.resolve(&resolve).await,
                _ = probes.tick() => peers.probe().await,
            }
            if changes.is_closed() || !peers.apply(&changes).await {
                break;
            }
        }
    });
    Ok(channel)
}

/// An endpoint for `address`; with `tls`, the client configuration for a peer
/// whose certificate must name the host in it.
fn peer_endpoint(
    address: &str,
    connect_timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(address.to_owned())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    match tls {
        Some(tls) if address.starts_with("https://") => endpoint.tls_config(tls),
        _ => Ok(endpoint),
    }
}

/// The host a target names (`https://inventory-service:50052` → `inventory-service`).
fn host_of(target: &str) -> &str {
    let authority = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .unwrap_or(target);
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// The addresses a balanced channel holds, per target, changed only by what a
/// lookup changed.
struct PeerSet {
    targets: Vec<String>,
    /// This workload's pair, presented over https.
    tls: Option<TlsFiles>,
    /// The pair's files as last read: a change re-dials every address.
    tls_stamp: Option<FileStamp>,
    connect_timeout: Duration,
    lookup_timeout: Duration,
    by_target: BTreeMap<String, BTreeSet<String>>,
    inserted: BTreeSet<String>,
    /// A connection per address for its health probes, apart from the calls'.
    probes: BTreeMap<String, Channel>,
    /// Addresses out of the balance, and until when.
    ejected: BTreeMap<String, Ejection>,
}

/// An address out of the balance until `until`; `period` is how long it was put
/// out for, doubled at each failed probe back.
#[derive(Clone, Copy, Debug)]
struct Ejection {
    until: Instant,
    period: Duration,
}

impl PeerSet {
    /// Every address the targets resolve to.
    fn resolved(&self) -> BTreeSet<String> {
        self.by_target.values().flatten().cloned().collect()
    }

    /// The target an address came from (the host its certificate must name).
    fn target_of<'a>(&'a self, address: &'a str) -> &'a str {
        self.by_target
            .iter()
            .find(|(_, addresses)| addresses.contains(address))
            .map_or(address, |(target, _)| target.as_str())
    }

    /// An endpoint for `address`, with this workload's TLS pair where it speaks https.
    fn endpoint(&self, address: &str) -> Option<Endpoint> {
        let tls = match &self.tls {
            Some(files) => match crate::tls::client_config(files, host_of(self.target_of(address)))
            {
                Ok(tls) => Some(tls),
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "client certificate unreadable; peer not dialled");
                    return None;
                }
            },
            None => None,
        };
        peer_endpoint(address, self.connect_timeout, tls).ok()
    }

    /// Asks every address that is not resting in its ejection whether it serves;
    /// ejects those that do not answer SERVING and takes back those that do.
    async fn probe(&mut self) {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let now = Instant::now();
        let due: Vec<String> = self
            .resolved()
            .into_iter()
            .filter(|address| self.ejected.get(address).is_none_or(|e| e.until <= now))
            .collect();
        let mut asked = Vec::new();
        for address in due {
            if !self.probes.contains_key(&address) {
                let Some(endpoint) = self.endpoint(&address) else {
                    continue;
                };
                self.probes.insert(address.clone(), endpoint.connect_lazy());
            }
            let channel = self.probes[&address].clone();
            asked.push(async move {
                let mut client = HealthClient::new(channel);
                let check = client.check(HealthCheckRequest {
                    service: String::new(),
                });
                let serving = tokio::time::timeout(PROBE_TIMEOUT, check)
                    .await
                    .is_ok_and(|reply| reply.is_ok_and(|r| r.get_ref().status == 1));
                (address, serving)
            });
        }
        for (address, serving) in futures::future::join_all(asked).await {
            if serving {
                if self.ejected.remove(&address).is_some() {
                    tracing::info!(peer = %address, "peer answers again; back in the balance");
                }
                continue;
            }
            let period = self
                .ejected
                .get(&address)
                .map_or(FIRST_EJECTION, |e| (e.period * 2).min(MAX_EJECTION));
            if !self.ejected.contains_key(&address) {
                tracing::warn!(peer = %address, "peer failed its health probe; ejected from the balance");
                crate::metrics::metrics().peer_ejections.inc();
            }
            self.ejected.insert(
                address,
                Ejection {
                    until: Instant::now() + period,
                    period,
                },
            );
        }
    }

    /// Looks every target up again.
    async fn resolve<R, F>(&mut self, resolve: &R)
    where
        R: Fn(String) -> F,
        F: Future<Output = std::io::Result<Vec<SocketAddr>>>,
    {
        for uri in &self.targets {
            let authority = uri
                .strip_prefix("http://")
                .or_else(|| uri.strip_prefix("https://"))
                .unwrap_or(uri);
            let looked_up =
                tokio::time::timeout(self.lookup_timeout, resolve(authority.to_owned())).await;
            let scheme = if uri.starts_with("https://") {
                "https"
            } else {
                "http"
            };
            let usable = |addrs: Vec<SocketAddr>| -> BTreeSet<String> {
                addrs
                    .iter()
                    .map(|a| format!("{scheme}://{a}"))
                    .filter(|a| peer_endpoint(a, self.connect_timeout, None).is_ok())
                    .collect()
            };
            let found = match looked_up {
                Ok(Ok(addrs)) => usable(addrs),
                // A failed or hung lookup says nothing about where the peer is.
                _ if self.by_target.contains_key(uri) => continue,
                _ => BTreeSet::new(),
            };
            let found = if found.is_empty() {
                BTreeSet::from([uri.clone()])
            } else {
                found
            };
            self.by_target.insert(uri.clone(), found);
        }
        let resolved = self.resolved();
        self.ejected.retain(|address, _| resolved.contains(address));
        self.probes.retain(|address, _| resolved.contains(address));
    }

    /// Brings the balance to the resolved addresses that are not ejected (all of
    /// them if every one is), adding new addresses before removing gone ones so
    /// that the channel is never left with none. False once the channel has been
    /// dropped.
    async fn apply(
        &mut self,
        changes: &tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
    ) -> bool {
        let resolved = self.resolved();
        let healthy: BTreeSet<String> = resolved
            .iter()
            .filter(|address| !self.ejected.contains_key(*address))
            .cloned()
            .collect();
        let now = if healthy.is_empty() {
            resolved
        } else {
            healthy
        };
        let stamp = self.tls.as_ref().and_then(TlsFiles::stamp);
        // A new pair on disk: every address is dialled again with it.
        let rotated = stamp != self.tls_stamp;
        if now == self.inserted && !rotated {
            return true;
        }
        let redial: BTreeSet<String> = if rotated {
            now.clone()
        } else {
            now.difference(&self.inserted).cloned().collect()
        };
        if rotated {
            // Probes dial again with the new pair too.
            self.probes.clear();
        }
        for address in &redial {
            let Some(endpoint) = self.endpoint(address) else {
                continue;
            };
            if changes
                .send(Change::Insert(address.clone(), endpoint))
                .await
                .is_err()
            {
                return false;
            }
        }
        for address in self.inserted.difference(&now) {
            if changes.send(Change::Remove(address.clone())).await.is_err() {
                return false;
            }
        }
        if !self.inserted.is_empty() && now != self.inserted {
            tracing::info!(was = ?self.inserted, now = ?now, "peer addresses changed");
        }
        self.inserted = now;
        self.tls_stamp = stamp;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::server::bind;
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic::transport::Server;

    type Stop = (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    );

    /// A health server on a free port, and what stops it.
    async fn peer() -> (SocketAddr, Stop) {
        peer_named("peer").await
    }

    /// A health server that also reports `name` as serving: a call asking for
    /// `name` succeeds on this copy alone, which tells the copies apart.
    async fn peer_named(name: &'static str) -> (SocketAddr, Stop) {
        let (listener, addr) = bind("127.0.0.1", 0).await.expect("bind");
        let (health, service) = crate::health::Health::new(name).await;
        health.set(true).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            );
        let task = tokio::spawn(async move {
            server.await.expect("peer serves");
        });
        (addr, (stop, task))
    }

    async fn alive(channel: &Channel) -> bool {
        answered_by(channel, crate::health::LIVENESS).await
    }

    /// Whether a call through `channel` reached a copy that reports `name` serving.
    async fn answered_by(channel: &Channel, name: &str) -> bool {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let request = tonic_health::pb::HealthCheckRequest {
            service: name.into(),
        };
        tokio::time::timeout(Duration::from_millis(500), client.check(request))
            .await
            .is_ok_and(|reply| reply.is_ok())
    }

    #[tokio::test]
    async fn a_channel_follows_its_peer_to_a_new_address() {
        let (old, stop_old) = peer().await;
        let (new, _keep_new) = peer().await;
        let current = std::sync::Arc::new(std::sync::Mutex::new(old));
        let lookup = current.clone();
        let channel = channel_resolved_by(
            "http://peer.test:50051",
            Duration::from_millis(200),
            Duration::from_millis(100),
            None,
            move |authority| {
                let now = (authority == "peer.test:50051").then(|| *lookup.lock().expect("lock"));
                async move { Ok(now.into_iter().collect()) }
            },
        )
        .await
        .expect("channel");
        assert!(alive(&channel).await, "the first address answers");

        // The peer moves: the old address goes away and the name points elsewhere.
        let (stop, stopped) = stop_old;
        drop(stop);
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("old peer stops")
            .expect("old peer task");
        assert!(
            tokio::net::TcpStream::connect(old).await.is_err(),
            "nothing listens at the old address"
        );
        *current.lock().expect("lock") = new;
        // Every call succeeds once the old address is gone from the channel.
        let mut in_a_row = 0;
        for _ in 0..100 {
            in_a_row = if alive(&channel).await {
                in_a_row + 1
            } else {
                0
            };
            if in_a_row == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            in_a_row, 10,
            "the channel reaches the peer at its new address"
        );
    }

    #[tokio::test]
    async fn a_copy_that_joins_the_name_gets_calls_within_the_lookup_period() {
        // How often the channel looks the name up again.
        const EVERY: Duration = Duration::from_millis(200);
        let (first, _keep_first) = peer_named("first").await;
        let addresses = Arc::new(std::sync::Mutex::new(vec![first]));
        let lookup = addresses.clone();
        let channel = channel_resolved_by(
            "http://peer.test:50051",
            Duration::from_millis(200),
            EVERY,
            None,
            move |_| {
                let now = lookup.lock().expect("lock").clone();
                async move { Ok(now) }
            },
        )
        .await
        .expect("channel");
        // A client already connected, with its connection to the first copy open.
        for _ in 0..5 {
            assert!(
                answered_by(&channel, "first").await,
                "the only copy answers"
            );
        }

        let (joined, _keep_joined) = peer_named("joined").await;
        addresses.lock().expect("lock").push(joined);
        let started = Instant::now();
        let mut calls = 0;
        while !answered_by(&channel, "joined").await {
            calls += 1;
            assert!(
                started.elapsed() < EVERY * 2 + Duration::from_secs(1),
                "the new copy got none of {calls} calls in {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("the new copy answered after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_addresses_a_name_had() {
        let (addr, _keep) = peer().await;
        let lookups = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = lookups.clone();
        let channel = channel_resolved_by(
            "http://peer.test:50051",
            Duration::from_millis(200),
            Duration::from_millis(50),
            None,
            move |_| {
                let first = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                async move {
                    if first {
                        Ok(vec![addr])
                    } else {
                        Err(std::io::Error::other("resolver unreachable"))
                    }
                }
            },
        )
        .await
        .expect("channel");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            lookups.load(std::sync::atomic::Ordering::SeqCst) > 2,
            "looked up again"
        );
        for _ in 0..5 {
            assert!(alive(&channel).await, "still reaches the address it had");
        }
    }

    /// A TCP proxy in front of `upstream` that stops passing bytes on once the
    /// returned flag is set: a copy frozen mid-flight (SIGSTOP), with its
    /// connections still open.
    async fn freezable(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn pump(
            mut from: tokio::net::tcp::OwnedReadHalf,
            mut to: tokio::net::tcp::OwnedWriteHalf,
            frozen: Arc<AtomicBool>,
        ) {
            let mut buf = vec![0; 16 * 1024];
            while let Ok(n) = from.read(&mut buf).await {
                while frozen.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, flag.clone()));
                tokio::spawn(pump(server_read, client_write, flag.clone()));
            }
        });
        (addr, frozen)
    }

    #[tokio::test]
    async fn a_copy_that_freezes_is_ejected_and_the_other_carries_every_call() {
        let (healthy, _keep) = peer().await;
        let (behind_proxy, _keep_too) = peer().await;
        let (freezing, frozen) = freezable(behind_proxy).await;
        let channel = channel_resolved_by(
            "http://peer.test:50051",
            Duration::from_millis(200),
            Duration::from_secs(60),
            None,
            move |_| async move { Ok(vec![healthy, freezing]) },
        )
        .await
        .expect("channel");
        for _ in 0..10 {
            assert!(alive(&channel).await, "both copies answer at first");
        }
        frozen.store(true, Ordering::SeqCst);
        // One probe round (PROBE_EVERY) and its timeout, and the frozen copy is out.
        tokio::time::sleep(PROBE_EVERY + PROBE_TIMEOUT + Duration::from_millis(300)).await;
        for call in 0..20 {
            let started = Instant::now();
            assert!(alive(&channel).await, "call {call} answered");
            assert!(
                started.elapsed() < Duration::from_millis(300),
                "call {call} took {:?}",
                started.elapsed()
            );
        }
        assert!(
            crate::metrics::metrics().peer_ejections.get() >= 1,
            "the ejection is counted"
        );
    }

    #[tokio::test]
    async fn with_every_copy_failing_its_probes_none_is_ejected() {
        // A health server that says NOT_SERVING still answers calls: with no
        // better copy, the balance keeps it.
        let (listener, addr) = bind("127.0.0.1", 0).await.expect("bind");
        let (_health, service) = crate::health::Health::new("peer").await;
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = channel_resolved_by(
            "http://peer.test:50051",
            Duration::from_millis(200),
            Duration::from_secs(60),
            None,
            move |_| async move { Ok(vec![addr]) },
        )
        .await
        .expect("channel");
        tokio::time::sleep(PROBE_EVERY * 2).await;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: crate::health::LIVENESS.into(),
            })
            .await;
        assert!(reply.is_ok(), "the only copy still gets calls: {reply:?}");
    }

    #[tokio::test]
    async fn bad_addresses_are_named() {
        let err = channel_every(
            "http://bad host:1",
            Duration::from_secs(1),
            RESOLVE_EVERY,
            None,
        )
        .await
        .expect_err("refused");
        assert!(err.to_string().contains("http://bad host:1"), "{err}");
        let err = channel_every(" , ", Duration::from_secs(1), RESOLVE_EVERY, None)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("no gRPC address"), "{err}");
    }
}
