//! Pagination as every List call does it: `page_size` bounded, and opaque page
//! tokens that carry the last key seen (so pages stay stable under inserts).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::ApiError;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;

/// The checked page size: 0 means the default.
pub fn page_size(raw: i32) -> Result<i64, ApiError> {
    match i64::from(raw) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid("page_size", "must be between 0 and 1000")),
    }
}

/// A token for the page after `last_key`.
pub fn encode_token(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("k:{last_key}"))
}

/// The last key a token carries; empty means the first page.
pub fn decode_token(token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| s.strip_prefix("k:").map(str::to_owned))
        .map(Some)
        .ok_or_else(|| ApiError::invalid("page_token", "is not a token this service issued"))
}

/// A protobuf timestamp for a database time.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tokens() {
        assert_eq!(page_size(0).expect("default"), 50);
        assert_eq!(page_size(1000).expect("max"), 1000);
        assert!(page_size(1001).is_err());
        assert!(page_size(-1).is_err());
        let token = encode_token("0190-abc");
        assert_eq!(
            decode_token(&token).expect("ok").as_deref(),
            Some("0190-abc")
        );
        assert!(decode_token("not base64!").is_err());
        assert_eq!(decode_token("").expect("empty"), None);
    }
}
