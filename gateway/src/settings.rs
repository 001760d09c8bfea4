//! The gateway's settings: defaults, then `CONFIG_FILE`, then the environment.

use serde::{Deserialize, Serialize};
use shop_platform::client_address::{ForwardedHeader, Networks};
use shop_platform::config::{self, ConfigError, Secret};

pub const HTTP_PORT: u16 = 8080;

/// The RPCs anyone may call without a token (the authorization table in docs/design.md); every other
/// annotated RPC needs one, including ones added later.
pub const DEFAULT_PUBLIC_METHODS: &str = "shop.user.v1.UserService/Register,shop.user.v1.UserService/Login,\
shop.user.v1.UserService/ListAccessTokenKeys,\
shop.inventory.v1.InventoryService/GetProduct,shop.inventory.v1.InventoryService/ListProducts";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// `BIND_HOST` / `HTTP_PORT` (0 picks a free port).
    pub bind_host: String,
    pub http_port: u16,
    /// `USER_SERVICE_ADDR`, `INVENTORY_SERVICE_ADDR`, `ORDER_SERVICE_ADDR`: the backends
    /// of the `shop.user`, `shop.inventory` and `shop.order` packages.
    pub user_service_addr: String,
    pub inventory_service_addr: String,
    pub order_service_addr: String,
    /// `AUTH_KEYS_ADDR`: the user service's gRPC address, whose published keys
    /// (`ListAccessTokenKeys`) verify access tokens, fetched again every
    /// `AUTH_KEYS_REFRESH_SECS`; or `AUTH_PUBLIC_KEY` to pin keys (PEM blocks)
    /// instead. `AUTH_ISSUER`, `AUTH_AUDIENCE`: what tokens must say.
    pub auth_keys_addr: String,
    pub auth_keys_refresh_secs: u64,
    pub auth_public_key: Secret,
    pub auth_issuer: String,
    pub auth_audience: String,
    /// `PUBLIC_METHODS`: comma-separated `package.Service/Method` open without a token.
    pub public_methods: String,
    /// `MAX_BODY_BYTES`: larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `MAX_STREAM_MESSAGES`: the most messages one client stream may carry (an
    /// NDJSON body's lines, or gRPC messages); more are refused with 400 before
    /// anything is sent, since each costs more memory than its bytes.
    pub max_stream_messages: usize,
    /// `UNKNOWN_QUERY_PARAMETERS`: `ignore` (the default: a cache-buster or a
    /// tracking tag costs nothing) or `reject` (400 naming the parameter).
    pub unknown_query_parameters: crate::transcode::UnknownQuery,
    /// `FORWARD_REQUEST_HEADERS`: comma-separated request headers passed to the
    /// backend as metadata, beside `authorization` and `x-request-id`, which
    /// always are.
    pub forward_request_headers: String,
    /// `FORWARD_RESPONSE_HEADERS`: comma-separated metadata of a backend's answer
    /// passed to the client as headers.
    pub forward_response_headers: String,
    /// `REQUEST_TIMEOUT_MS`: the deadline when the client sends no `grpc-timeout` (504 past it).
    pub request_timeout_ms: u64,
    /// `RATE_LIMIT_PER_SEC` / `RATE_LIMIT_BURST`: per client address and per user.
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    /// `CORS_ALLOWED_ORIGINS`: comma-separated origins, `*` for any, empty for none.
    pub cors_allowed_origins: String,
    /// `TRUSTED_PROXIES`: comma-separated networks (CIDR) of the proxies in front of
    /// the gateway; only their `Forwarded` / `X-Forwarded-For` names the client.
    /// Empty (the default) trusts no one: the client is the TCP peer.
    pub trusted_proxies: String,
    /// `FORWARDED_HEADER`: the header those proxies write, `x-forwarded-for` or
    /// `forwarded`; only that one is read.
    pub forwarded_header: ForwardedHeader,
    /// `PROBE_NETWORKS`: sources whose `/healthz`, `/readyz` and `/metrics` are not
    /// rate limited (kubelet, Prometheus); every other request is.
    pub probe_networks: String,
    /// `TRUSTED_TRACE_SOURCES`: clients whose `traceparent` is continued as sent
    /// (its sampled flag included); anyone else's starts a new trace linked to it.
    pub trusted_trace_sources: String,
    /// `HEADER_READ_TIMEOUT_MS`: a connection that has not sent a request's headers
    /// within this long is closed, an idle keep-alive connection too (hyper counts
    /// the wait for the next request); a proxy in front should keep its idle
    /// upstream connections for less.
    pub header_read_timeout_ms: u64,
    /// `BODY_READ_TIMEOUT_MS`: a request body not received within this long gets 408
    /// and the connection is closed.
    pub body_read_timeout_ms: u64,
    /// `TLS_CERT_FILE` / `TLS_KEY_FILE` / `TLS_CA_FILE`: the gateway's own
    /// certificate (`spiffe://shopmesh/gateway`), key and the mesh's CA, for
    /// `https://` backend addresses (mutual TLS); unset, backends are plaintext.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_ca_file: String,
    /// `EDGE_TLS_CERT_FILE` / `EDGE_TLS_KEY_FILE`: a certificate chain and key
    /// for the HTTP port itself (HTTPS, HTTP/2 by ALPN); unset, the port is plain
    /// HTTP (HTTP/1.1, and HTTP/2 with prior knowledge), for a proxy or load
    /// balancer in front that terminates TLS. Reloaded when the files change.
    pub edge_tls_cert_file: String,
    pub edge_tls_key_file: String,
    /// `SHUTDOWN_TIMEOUT_MS`: on SIGTERM, how long open connections (watch streams
    /// included) may stay before the gateway stops without them; keep it below the
    /// supervisor's kill grace (30 s in Kubernetes by default).
    pub shutdown_timeout_ms: u64,
    /// `MAX_CONNECTIONS` / `MAX_CONNECTIONS_PER_CLIENT`: open connections in all and
    /// from one client address; more are answered 503 and closed.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// `MAX_INFLIGHT_BODY_BYTES` / `MAX_INFLIGHT_BODY_BYTES_PER_CLIENT`: request body
    /// bytes held at once in all (503 past it) and for one client (429 past it).
    pub max_inflight_body_bytes: usize,
    pub max_inflight_body_bytes_per_client: usize,
    /// `MAX_INFLIGHT_REQUESTS` / `MAX_INFLIGHT_REQUESTS_PER_CLIENT`: requests being
    /// answered at once (a stream until it ends) in all (503 past it) and for one
    /// client (429 past it), however many connections and HTTP/2 streams carry them.
    pub max_inflight_requests: usize,
    pub max_inflight_requests_per_client: usize,
    /// `PEER_RESOLVE_EVERY_MS`: how often the backends' names are looked up again.
    pub peer_resolve_every_ms: u64,
    /// `REDIS_URL`: the Redis that every gateway copy shares its rate limits and the
    /// revoked tokens through; empty keeps both in this copy alone (one copy).
    pub redis_url: Secret,
    /// `DRAIN_DELAY_MS`: on SIGTERM, how long the gateway keeps serving while
    /// `/readyz` says it is draining, so that load balancers stop sending it new
    /// connections before it closes its listener.
    pub drain_delay_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind_host: "0.0.0.0".into(),
            http_port: HTTP_PORT,
            user_service_addr: "http://127.0.0.1:50051".into(),
            inventory_service_addr: "http://127.0.0.1:50052".into(),
            order_service_addr: "http://127.0.0.1:50053".into(),
            auth_keys_addr: String::new(),
            auth_keys_refresh_secs: shop_platform::access_keys::DEFAULT_REFRESH_SECS,
            auth_public_key: Secret::default(),
            auth_issuer: "shopmesh-user-service".into(),
            auth_audience: "shopmesh".into(),
            public_methods: DEFAULT_PUBLIC_METHODS.into(),
            max_body_bytes: 1024 * 1024,
            max_stream_messages: 1000,
            unknown_query_parameters: crate::transcode::UnknownQuery::default(),
            forward_request_headers: crate::passthrough::DEFAULT_REQUEST_HEADERS.into(),
            forward_response_headers: crate::passthrough::DEFAULT_RESPONSE_HEADERS.into(),
            request_timeout_ms: 10_000,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            cors_allowed_origins: String::new(),
            trusted_proxies: String::new(),
            forwarded_header: ForwardedHeader::default(),
            probe_networks: "127.0.0.0/8,::1".into(),
            trusted_trace_sources: String::new(),
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 5_000,
            shutdown_timeout_ms: 20_000,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            edge_tls_cert_file: String::new(),
            edge_tls_key_file: String::new(),
            max_connections: 4_096,
            max_connections_per_client: 128,
            max_inflight_body_bytes: 32 * 1024 * 1024,
            max_inflight_body_bytes_per_client: 4 * 1024 * 1024,
            max_inflight_requests: 8_192,
            max_inflight_requests_per_client: 256,
            peer_resolve_every_ms: shop_platform::grpc::RESOLVE_EVERY.as_millis() as u64,
            redis_url: Secret::default(),
            drain_delay_ms: 0,
        }
    }
}

impl Settings {
    pub fn load() -> Result<Self, ConfigError> {
        let settings: Self = config::load(&Self::default())?;
        if settings.edge_tls_cert_file.is_empty() != settings.edge_tls_key_file.is_empty() {
            return Err(ConfigError::missing(
                "EDGE_TLS_KEY_FILE",
                "EDGE_TLS_CERT_FILE and EDGE_TLS_KEY_FILE are set together or not at all",
            ));
        }
        if settings.max_body_bytes == 0 {
            return Err(ConfigError::missing("MAX_BODY_BYTES", "must be at least 1"));
        }
        if settings.max_stream_messages == 0 {
            return Err(ConfigError::missing(
                "MAX_STREAM_MESSAGES",
                "must be at least 1",
            ));
        }
        for (key, list) in [
            ("TRUSTED_PROXIES", &settings.trusted_proxies),
            ("PROBE_NETWORKS", &settings.probe_networks),
            ("TRUSTED_TRACE_SOURCES", &settings.trusted_trace_sources),
        ] {
            Networks::parse(list).map_err(|e| ConfigError::missing(key, &e))?;
        }
        for (key, list) in [
            ("FORWARD_REQUEST_HEADERS", &settings.forward_request_headers),
            (
                "FORWARD_RESPONSE_HEADERS",
                &settings.forward_response_headers,
            ),
        ] {
            crate::passthrough::HeaderList::parse(key, list)?;
        }
        for (key, ms) in [
            ("HEADER_READ_TIMEOUT_MS", settings.header_read_timeout_ms),
            ("BODY_READ_TIMEOUT_MS", settings.body_read_timeout_ms),
            ("REQUEST_TIMEOUT_MS", settings.request_timeout_ms),
            ("PEER_RESOLVE_EVERY_MS", settings.peer_resolve_every_ms),
            ("SHUTDOWN_TIMEOUT_MS", settings.shutdown_timeout_ms),
        ] {
            if ms < 100 {
                return Err(ConfigError::missing(key, "must be at least 100"));
            }
        }
        let per_client = settings.max_inflight_body_bytes_per_client;
        if per_client < settings.max_body_bytes || settings.max_inflight_body_bytes < per_client {
            return Err(ConfigError::missing(
                "MAX_INFLIGHT_BODY_BYTES_PER_CLIENT",
                "must lie between MAX_BODY_BYTES and MAX_INFLIGHT_BODY_BYTES",
            ));
        }
        if settings.max_inflight_requests_per_client == 0
            || settings.max_inflight_requests < settings.max_inflight_requests_per_client
        {
            return Err(ConfigError::missing(
                "MAX_INFLIGHT_REQUESTS_PER_CLIENT",
                "must lie between 1 and MAX_INFLIGHT_REQUESTS",
            ));
        }
        if settings.max_connections_per_client == 0
            || settings.max_connections < settings.max_connections_per_client
        {
            return Err(ConfigError::missing(
                "MAX_CONNECTIONS_PER_CLIENT",
                "must lie between 1 and MAX_CONNECTIONS",
            ));
        }
        Ok(settings)
    }
}
