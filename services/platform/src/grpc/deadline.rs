//! Deadlines: the `grpc-timeout` a caller sends, parsed once here, and the time
//! a call has left for its own calls.

use std::time::Duration;

use tonic::Status;

/// The time left for a call: the caller's `grpc-timeout` when it sent one,
/// otherwise a default, so every downstream call carries a deadline.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(tokio::time::Instant);

impl Deadline {
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap, default: Duration) -> Self {
        let sent = metadata.get("grpc-timeout").and_then(|v| v.to_str().ok());
        Self(tokio::time::Instant::now() + requested_budget(sent, default))
    }

    pub fn after(budget: Duration) -> Self {
        Self(tokio::time::Instant::now() + budget)
    }

    /// Time left, or DEADLINE_EXCEEDED when none is.
    pub fn remaining(&self) -> Result<Duration, Status> {
        let left = self
            .0
            .saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            Err(Status::deadline_exceeded(
                "deadline exceeded before the call to a dependency",
            ))
        } else {
            Ok(left)
        }
    }
}

/// The time a caller asked for with a `grpc-timeout` value, capped at `default`;
/// `default` when it sent none or one that does not parse.
pub fn requested_budget(grpc_timeout: Option<&str>, default: Duration) -> Duration {
    grpc_timeout
        .and_then(parse_grpc_timeout)
        .map_or(default, |t| t.min(default))
}

/// Parses the gRPC wire format of a timeout: digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }
}
