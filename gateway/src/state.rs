//! What every request's steps share: the routes, the backends' channels, the
//! authenticator and the limits, built once by `Application::build`.

use std::collections::{BTreeMap, BTreeSet};

use shop_platform::auth::Authenticator;
use shop_platform::budget::SharedBudget;
use shop_platform::client_address::Networks;
use shop_platform::rate_limit::SharedRateLimiter;
use shop_platform::shared_store::SharedStore;
use tonic::transport::Channel;

use crate::passthrough::HeaderList;
use crate::routes::Route;
use crate::settings::Settings;

/// The channels to one backend: unary calls and server streams apart. Streams
/// are spread over `grpc::STREAM_CONNECTIONS_PER_PEER` channels (each with a
/// connection per backend copy), so that one connection's stream limit does
/// not bound the watches a copy can carry.
pub(crate) struct Backend {
    pub(crate) unary: Channel,
    pub(crate) streams: Vec<Channel>,
    /// Which of `streams` the next stream opens on (round robin).
    pub(crate) next_stream: std::sync::atomic::AtomicUsize,
}

/// The state of `layers.rs` and `forward.rs`.
pub struct Gateway {
    pub(crate) routes: Vec<Route>,
    /// The annotated RPCs by gRPC path, for gRPC and gRPC-Web at the edge.
    pub(crate) grpc_methods: BTreeMap<String, Route>,
    /// Package prefix (`shop.user`) → its channels.
    pub(crate) backends: BTreeMap<String, Backend>,
    pub(crate) auth: Authenticator,
    /// `package.Service/Method` of the RPCs open without a token.
    pub(crate) public: BTreeSet<String>,
    /// Requests per client address and per user, shared by every gateway copy.
    pub(crate) limiter: SharedRateLimiter,
    /// The Redis every copy shares, when `REDIS_URL` names one (reported by /readyz).
    pub(crate) shared_store: Option<std::sync::Arc<SharedStore>>,
    /// Retries of calls that found a backend copy unavailable, as a share of calls.
    pub(crate) retries: shop_platform::grpc::RetryBudget,
    /// Set on SIGTERM: /readyz answers 503 while the listener still serves.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Request headers passed to backends, and answer metadata passed back.
    pub(crate) request_headers: HeaderList,
    pub(crate) response_headers: HeaderList,
    pub(crate) trusted_proxies: Networks,
    pub(crate) probe_networks: Networks,
    pub(crate) trusted_trace_sources: Networks,
    /// Request body bytes held in memory, in all and per client.
    pub(crate) body_bytes: SharedBudget,
    /// Requests being answered, in all and per client (one unit each).
    pub(crate) requests_in_flight: SharedBudget,
    pub(crate) openapi: serde_json::Value,
    pub(crate) settings: Settings,
}

impl Gateway {
    /// The channel for `package`'s unary calls or its server streams.
    pub(crate) fn channel(&self, package: &str, streaming: bool) -> Option<Channel> {
        let backend = self.backends.get(package)?;
        if !streaming {
            return Some(backend.unary.clone());
        }
        let turn = backend
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        backend.streams.get(turn % backend.streams.len()).cloned()
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}
