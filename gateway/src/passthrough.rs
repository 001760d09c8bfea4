//! Which headers cross between HTTP and the backends' gRPC metadata, each way
//! through an allow-list the deployment sets (`FORWARD_REQUEST_HEADERS`,
//! `FORWARD_RESPONSE_HEADERS`), so that a backend can read a client's header or
//! set one on the answer without a gateway change, and nothing else crosses.

use axum::http::{HeaderMap, HeaderName};
use shop_platform::config::ConfigError;
use tonic::metadata::MetadataMap;

/// Forwarded to every backend call whatever the list says: the caller's token,
/// which the services verify again, and the request id, which every log carries.
pub const ALWAYS_FORWARDED: [&str; 2] = ["authorization", "x-request-id"];

/// `FORWARD_REQUEST_HEADERS` unless set.
pub const DEFAULT_REQUEST_HEADERS: &str = "idempotency-key,accept-language";

/// `FORWARD_RESPONSE_HEADERS` unless set: what a backend may say about its
/// answer's caching, location, retry and language. A backend's `etag` replaces
/// the tag the gateway would make from the body (see `conditional`).
pub const DEFAULT_RESPONSE_HEADERS: &str =
    "cache-control,etag,location,retry-after,content-language";

/// Names no list may hold: ones the gateway sets itself from what it verified
/// (the client's address, the trace it decided to continue), the services'
/// own credential, and HTTP's or gRPC's framing.
const NEVER: [&str; 12] = [
    "x-service-authorization",
    "x-forwarded-for",
    "traceparent",
    "tracestate",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "host",
    "te",
    "upgrade",
];

/// An allow-list of header names, lowercase.
#[derive(Clone, Debug, Default)]
pub struct HeaderList(Vec<HeaderName>);

impl HeaderList {
    /// The comma-separated `list` of setting `key`; a name that is not a header
    /// name, or one that may not cross, is refused by name.
    pub fn parse(key: &str, list: &str) -> Result<Self, ConfigError> {
        let mut names = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let lower = name.to_ascii_lowercase();
            if NEVER.contains(&lower.as_str()) || lower.starts_with("grpc-") {
                return Err(ConfigError::missing(
                    key,
                    &format!("{name} may not be forwarded: the gateway or the transport sets it"),
                ));
            }
            if ALWAYS_FORWARDED.contains(&lower.as_str()) {
                // Forwarded anyway; listed twice it would reach the backend twice.
                continue;
            }
            let header = HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| ConfigError::missing(key, &format!("{name} is not a header name")))?;
            if !names.contains(&header) {
                names.push(header);
            }
        }
        Ok(Self(names))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|h| h.as_str() == name)
    }

    /// The client's headers this list (and `ALWAYS_FORWARDED`) names, as the
    /// backend call's metadata. A value that is not visible ASCII is dropped.
    pub fn to_metadata(&self, headers: &HeaderMap, metadata: &mut MetadataMap) {
        let always = ALWAYS_FORWARDED.iter().copied();
        for name in always.chain(self.0.iter().map(HeaderName::as_str)) {
            for value in headers.get_all(name) {
                if let Some(value) = value.to_str().ok().and_then(|v| v.parse().ok())
                    && let Ok(key) = name.parse::<tonic::metadata::MetadataKey<_>>()
                {
                    metadata.append(key, value);
                }
            }
        }
    }

    /// The backend's metadata this list names, as headers of the HTTP answer.
    pub fn to_headers(&self, metadata: &MetadataMap) -> HeaderMap {
        let answered: &HeaderMap = metadata.as_ref();
        let mut headers = HeaderMap::new();
        for name in &self.0 {
            for value in answered.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_lowercased_and_refuse_what_may_not_cross_by_name() {
        let list = HeaderList::parse("K", " X-Tenant , accept-language,,x-tenant,Authorization")
            .expect("list");
        assert!(list.contains("x-tenant") && list.contains("accept-language"));
        assert_eq!(
            list.0.len(),
            2,
            "authorization is always forwarded, not listed"
        );
        for bad in [
            "x-service-authorization",
            "Grpc-Timeout",
            "traceparent",
            "host",
        ] {
            let err = HeaderList::parse("FORWARD_REQUEST_HEADERS", bad).expect_err(bad);
            assert!(err.to_string().contains("FORWARD_REQUEST_HEADERS"), "{err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let err = HeaderList::parse("K", "not a name").expect_err("space");
        assert!(err.to_string().contains("not a header name"), "{err}");
        for default in [DEFAULT_REQUEST_HEADERS, DEFAULT_RESPONSE_HEADERS] {
            HeaderList::parse("K", default).expect("the defaults parse");
        }
    }

    #[test]
    fn only_listed_headers_cross_each_way() {
        let list = HeaderList::parse("K", "x-tenant").expect("list");
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer t"),
            ("x-tenant", "acme"),
            ("x-secret", "no"),
            ("x-service-authorization", "forged"),
        ] {
            headers.insert(k, v.parse().expect("value"));
        }
        let mut metadata = MetadataMap::new();
        list.to_metadata(&headers, &mut metadata);
        assert_eq!(
            metadata.get("authorization").map(|v| v.to_str().ok()),
            Some(Some("Bearer t"))
        );
        assert_eq!(
            metadata.get("x-tenant").map(|v| v.to_str().ok()),
            Some(Some("acme"))
        );
        assert!(metadata.get("x-secret").is_none());
        assert!(metadata.get("x-service-authorization").is_none());

        let mut answered = MetadataMap::new();
        answered.insert("x-tenant", "acme".parse().expect("value"));
        answered.insert("x-internal", "no".parse().expect("value"));
        let out = list.to_headers(&answered);
        assert_eq!(
            out.get("x-tenant").map(|v| v.as_bytes()),
            Some(&b"acme"[..])
        );
        assert!(out.get("x-internal").is_none());
    }
}
