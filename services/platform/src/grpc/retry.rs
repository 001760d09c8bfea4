//! Calls to peers: a request with a deadline and the trace context, and bounded
//! retries of the calls that are safe to repeat, within a retry budget.

use std::future::Future;
use std::time::Duration;

use tower::retry::budget::{Budget as _, TpsBudget};

use tonic::{Code, Request, Status};

use crate::backoff::Backoff;
use crate::telemetry;

/// Bounded retries with exponential backoff for calls that are safe to repeat.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    /// The deadline of each attempt, sent as `grpc-timeout`.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            first_backoff: Duration::from_millis(50),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// A cap on retries as a share of calls (tower's `TpsBudget`): every call
/// deposits, every retry withdraws; retries may add 20 % to the calls of the last
/// 10 s, plus 10 a second for a caller that calls little. When a peer's copies
/// all fail, retries stop multiplying the load on them.
#[derive(Debug)]
pub struct RetryBudget(TpsBudget);

impl RetryBudget {
    pub fn new() -> Self {
        Self(TpsBudget::new(Duration::from_secs(10), 10, 0.2))
    }

    /// Counts a call (the first attempt).
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes one retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let granted = self.0.withdraw();
        if !granted {
            crate::metrics::metrics().retries_refused.inc();
        }
        granted
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a failed call may be retried (the server did not act, or may safely act twice).
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted
    )
}

/// Calls `call` with a fresh request built by `make` each attempt (which sets its
/// deadline and headers, e.g. with `outgoing`); retries only `retryable` codes, a
/// bounded number of times and while `budget` allows. Use for idempotent RPCs only.
pub async fn call_idempotent<Req, Resp, Fut>(
    policy: RetryPolicy,
    budget: &RetryBudget,
    mut make: impl FnMut() -> Result<Request<Req>, Status>,
    mut call: impl FnMut(Request<Req>) -> Fut,
) -> Result<Resp, Status>
where
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let mut backoff = Backoff::new(policy.first_backoff, Duration::MAX);
    let mut attempt = 1;
    budget.deposit();
    loop {
        let request = make()?;
        match call(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if attempt < policy.max_attempts
                    && retryable(status.code())
                    && budget.withdraw() =>
            {
                tracing::debug!(attempt, code = ?status.code(), "retrying idempotent call");
                backoff.sleep().await;
                attempt += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

/// A request with a deadline and the current trace context.
pub fn outgoing<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    telemetry::inject_into_metadata(request.metadata_mut());
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_codes_are_retried() {
        assert!(retryable(Code::Unavailable));
        assert!(!retryable(Code::DeadlineExceeded));
        assert!(!retryable(Code::FailedPrecondition));
        assert!(!retryable(Code::InvalidArgument));
    }

    #[tokio::test]
    async fn idempotent_calls_retry_unavailable_a_bounded_number_of_times() {
        let policy = RetryPolicy {
            max_attempts: 3,
            first_backoff: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(1),
        };
        let budget = RetryBudget::new();
        let mut calls = 0;
        let result: Result<(), Status> = call_idempotent(
            policy,
            &budget,
            || Ok(outgoing((), policy.attempt_timeout)),
            |_req| {
                calls += 1;
                async { Err(Status::unavailable("down")) }
            },
        )
        .await;
        assert_eq!(result.expect_err("fails").code(), Code::Unavailable);
        assert_eq!(calls, 3);

        let mut calls = 0;
        let result: Result<u8, Status> = call_idempotent(
            policy,
            &budget,
            || Ok(outgoing((), policy.attempt_timeout)),
            |_req| {
                calls += 1;
                let outcome = if calls < 2 {
                    Err(Status::unavailable("blip"))
                } else {
                    Ok(tonic::Response::new(7))
                };
                async move { outcome }
            },
        )
        .await;
        assert_eq!(result.expect("second attempt"), 7);
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn retries_stop_when_the_budget_is_spent() {
        let policy = RetryPolicy {
            max_attempts: 3,
            first_backoff: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(1),
        };
        let budget = RetryBudget::new();
        let mut calls = 0;
        // 100 calls that all fail: 100 first attempts, and retries only up to
        // 20 % of them plus the reserve of 10 a second over the 10 s window.
        for _ in 0..100 {
            let _: Result<(), Status> = call_idempotent(
                policy,
                &budget,
                || Ok(outgoing((), policy.attempt_timeout)),
                |_req| {
                    calls += 1;
                    async { Err(Status::unavailable("down")) }
                },
            )
            .await;
        }
        let retries = calls - 100;
        assert!(retries > 0, "some retries are allowed");
        assert!(
            retries <= 20 + 100 + 2,
            "{retries} retries for 100 calls: the budget did not hold"
        );
        assert!(retries < 200, "without a budget there would be 200");
    }
}
