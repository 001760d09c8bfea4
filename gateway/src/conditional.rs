//! Conditional GETs: a successful unary GET carries a weak `ETag` made from its
//! JSON body, and a request whose `If-None-Match` names that tag is answered
//! 304 with no body. The backend is still asked every time (the tag is only
//! known from its answer), so what this saves is the body on the wire, never
//! freshness: a 304 means the resource is what the client holds right now.
//!
//! The tag is weak (`W/"…"`) because compression changes the bytes sent while
//! the resource stays the same, which is what a weak validator promises.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The weak entity tag of a JSON body: 128 bits of its SHA-256, in hex. The
/// same body gives the same tag on every copy of the gateway.
pub fn entity_tag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("W/\"{hex}\"")
}

/// Whether `If-None-Match` (a list of tags, or `*`) names `tag`, by the weak
/// comparison RFC 9110 prescribes for this header: `W/` is ignored on both sides.
pub fn none_match_names(if_none_match: &str, tag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let tag = opaque(tag);
    if_none_match
        .split(',')
        .any(|candidate| candidate.trim() == "*" || opaque(candidate) == tag)
}

/// `"…"` or `W/"…"`, as RFC 9110 writes an entity tag.
fn is_entity_tag(tag: &str) -> bool {
    let opaque = tag.strip_prefix("W/").unwrap_or(tag);
    opaque.len() >= 2
        && opaque.starts_with('"')
        && opaque.ends_with('"')
        && !opaque[1..opaque.len() - 1].contains('"')
}

/// The answer to a GET whose backend replied `body`: 304 when the client
/// already holds it, else 200 with the body, both with the tag: the backend's
/// own (`backend_tag`, an `etag` in its metadata) when it set a well-formed
/// one, else one made from the body.
pub fn respond(request: &HeaderMap, body: String, backend_tag: Option<&HeaderValue>) -> Response {
    let own = backend_tag.and_then(|v| Some((v.to_str().ok()?.to_owned(), v.clone())));
    let (tag, etag) = match own {
        Some((tag, value)) if is_entity_tag(&tag) => (tag, value),
        _ => {
            let tag = entity_tag(body.as_bytes());
            let value = HeaderValue::from_str(&tag).expect("hex in quotes is a header value");
            (tag, value)
        }
    };
    let held = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|names| none_match_names(names, &tag));
    if held {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::ETAG, etag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_body_has_the_same_weak_tag_and_another_body_another() {
        let a = entity_tag(br#"{"product":{"sku":"MUG-001"}}"#);
        assert_eq!(a, entity_tag(br#"{"product":{"sku":"MUG-001"}}"#));
        assert_ne!(a, entity_tag(br#"{"product":{"sku":"MUG-002"}}"#));
        assert!(a.starts_with("W/\"") && a.ends_with('"') && a.len() == 3 + 32 + 1);
    }

    #[test]
    fn if_none_match_is_compared_weakly_in_a_list_or_as_a_star() {
        let tag = "W/\"abc\"";
        assert!(none_match_names("W/\"abc\"", tag));
        assert!(none_match_names("\"abc\"", tag), "W/ ignored");
        assert!(none_match_names("\"x\", W/\"abc\"", tag));
        assert!(none_match_names("*", tag));
        assert!(!none_match_names("\"abcd\"", tag));
        assert!(!none_match_names("", tag));
    }

    #[test]
    fn a_held_tag_is_answered_304_without_a_body() {
        let body = r#"{"a":1}"#.to_owned();
        let mut request = HeaderMap::new();
        let fresh = respond(&request, body.clone(), None);
        assert_eq!(fresh.status(), StatusCode::OK);
        let tag = fresh.headers()[header::ETAG].clone();
        request.insert(header::IF_NONE_MATCH, tag.clone());
        let held = respond(&request, body.clone(), None);
        assert_eq!(held.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(held.headers()[header::ETAG], tag);
    }

    #[test]
    fn a_backend_tag_replaces_the_body_tag_unless_it_is_malformed() {
        let body = r#"{"a":1}"#.to_owned();
        let own = HeaderValue::from_static("\"v7\"");
        let answer = respond(&HeaderMap::new(), body.clone(), Some(&own));
        assert_eq!(answer.headers()[header::ETAG], own);
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("W/\"v7\""));
        let held = respond(&request, body.clone(), Some(&own));
        assert_eq!(held.status(), StatusCode::NOT_MODIFIED);
        let junk = HeaderValue::from_static("v7");
        let answer = respond(&HeaderMap::new(), body.clone(), Some(&junk));
        assert_eq!(
            answer.headers()[header::ETAG],
            entity_tag(body.as_bytes()).as_str()
        );
    }
}
