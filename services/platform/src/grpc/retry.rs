//! Calls to peers: a request with a deadline and the trace context, and bounded
//! retries of the calls that are safe to repeat, within a retry budget.

use std::future::Future;
use std::time::Duration;

use tower::retry::budget::{Budget as _, TpsBudget};

use tonic::{Code, Request, Status};

use crate::backoff::Backoff;
use crate::telemetry;

/// Bounded retries with exponential backoff for calls that are safe to repeat,
/// and hedging: an attempt without an answer after `hedge_after` is sent once
/// more (to another copy: the balancer prefers the one with fewer calls pending)
/// and the first answer wins, so a copy that froze mid-call costs `hedge_after`,
/// not the whole deadline ("The Tail at Scale", Dean and Barroso).
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    /// The deadline of each attempt, sent as `grpc-timeout`.
    pub attempt_timeout: Duration,
    /// When an attempt still has no answer, send a second one alongside.
    pub hedge_after: Option<Duration>,
    /// Which failures are worth another attempt (the server did not act, or may act twice).
    pub retry_when: fn(&Status) -> bool,
}

/// Codes after which an idempotent call may be repeated.
const RETRYABLE_CODES: &[Code] = &[Code::Unavailable, Code::ResourceExhausted, Code::Aborted];

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            first_backoff: Duration::from_millis(50),
            attempt_timeout: Duration::from_secs(2),
            hedge_after: None,
            retry_when: |status| retryable(status.code()) || broken_connection(status),
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

/// A failure of the connection to the peer rather than an answer from it: refused,
/// reset, broken mid-call, or cancelled because the balancer dropped the
/// connection (an ejected copy's calls end so). tonic gives these a source
/// error; a status the peer sent has none. For a call that is safe to repeat,
/// another copy may answer.
pub fn broken_connection(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        && matches!(
            status.code(),
            Code::Internal | Code::Unknown | Code::Unavailable | Code::Cancelled
        )
}

/// Whether a failed call may be retried (the server did not act, or may safely act twice).
pub fn retryable(code: Code) -> bool {
    RETRYABLE_CODES.contains(&code)
}

/// Calls `call` with a fresh request built by `make` each attempt (which sets its
/// deadline and headers, e.g. with `outgoing`), at most `policy.max_attempts`
/// attempts in all, each beyond the first drawn from `budget`:
/// - a failure that `policy.retry_when` accepts is tried again after a back-off;
/// - with `policy.hedge_after`, every such interval without an answer sends one
///   more attempt alongside those still running (the balancer prefers copies
///   with fewer calls pending, and ejects a copy that stopped answering, so a
///   later attempt reaches a copy that answers); the first answer wins and the
///   others are cancelled.
///
/// Returns the winning attempt's answer, its metadata included. Use for
/// idempotent RPCs only.
pub async fn call_idempotent<Req, Resp, Fut>(
    policy: RetryPolicy,
    budget: &RetryBudget,
    mut make: impl FnMut() -> Result<Request<Req>, Status>,
    mut call: impl FnMut(Request<Req>) -> Fut,
) -> Result<tonic::Response<Resp>, Status>
where
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    use futures::StreamExt as _;
    let mut backoff = Backoff::new(policy.first_backoff, Duration::MAX);
    budget.deposit();
    let mut running = futures::stream::FuturesUnordered::new();
    running.push(call(make()?));
    let mut launched = 1;
    let mut hedging = policy.hedge_after;
    loop {
        let hedge_due = async {
            match hedging {
                Some(after) if launched < policy.max_attempts => tokio::time::sleep(after).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            answer = running.next() => {
                let Some(answer) = answer else {
                    unreachable!("an attempt is always running here");
                };
                let status = match answer {
                    Ok(response) => return Ok(response),
                    Err(status) => status,
                };
                let again = (policy.retry_when)(&status);
                if again && launched < policy.max_attempts && budget.withdraw() {
                    tracing::debug!(attempt = launched, code = ?status.code(), "retrying idempotent call");
                    backoff.sleep().await;
                    running.push(call(make()?));
                    launched += 1;
                } else if !again || running.is_empty() {
                    // A definite answer, or nothing left that could still give one.
                    return Err(status);
                }
            }
            () = hedge_due => {
                if budget.withdraw() {
                    crate::metrics::metrics().hedged_calls.inc();
                    running.push(call(make()?));
                    launched += 1;
                } else {
                    hedging = None;
                }
            }
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

    /// Calls `call_idempotent` with a call that always fails UNAVAILABLE; returns
    /// how many attempts were made.
    async fn attempts_when_down(policy: RetryPolicy, budget: &RetryBudget) -> u32 {
        let mut calls = 0;
        let result: Result<tonic::Response<()>, Status> = call_idempotent(
            policy,
            budget,
            || Ok(outgoing((), policy.attempt_timeout)),
            |_req| {
                calls += 1;
                async { Err(Status::unavailable("down")) }
            },
        )
        .await;
        assert_eq!(result.expect_err("fails").code(), Code::Unavailable);
        calls
    }

    #[tokio::test]
    async fn idempotent_calls_retry_unavailable_a_bounded_number_of_times() {
        let policy = RetryPolicy {
            max_attempts: 3,
            first_backoff: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let budget = RetryBudget::new();
        assert_eq!(attempts_when_down(policy, &budget).await, 3);

        let mut calls = 0;
        let result: Result<tonic::Response<u8>, Status> = call_idempotent(
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
        assert_eq!(result.expect("second attempt").into_inner(), 7);
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn retries_stop_when_the_budget_is_spent() {
        let policy = RetryPolicy {
            max_attempts: 3,
            first_backoff: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let budget = RetryBudget::new();
        let mut calls = 0;
        // 100 calls that all fail: 100 first attempts, and retries only up to
        // 20 % of them plus the reserve of 10 a second over the 10 s window.
        for _ in 0..100 {
            calls += attempts_when_down(policy, &budget).await;
        }
        let retries = calls - 100;
        assert!(retries > 0, "some retries are allowed");
        assert!(
            retries <= 20 + 100 + 2,
            "{retries} retries for 100 calls: the budget did not hold"
        );
        assert!(retries < 200, "without a budget there would be 200");
    }

    #[tokio::test]
    async fn a_slow_attempt_is_hedged_and_the_first_answer_wins() {
        let policy = RetryPolicy {
            max_attempts: 2,
            hedge_after: Some(Duration::from_millis(50)),
            ..RetryPolicy::default()
        };
        let budget = RetryBudget::new();
        let started = std::time::Instant::now();
        // The first attempt hangs (a frozen copy); the hedge answers at once.
        assert_eq!(answered_by(policy, &budget, 2).await, (2, 2));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // A fast answer sends no hedge.
        assert_eq!(answered_by(policy, &budget, 1).await, (1, 1));
        // Hedges go on while nothing answers, up to the attempts allowed.
        let policy = RetryPolicy {
            max_attempts: 3,
            ..policy
        };
        assert_eq!(answered_by(policy, &budget, 3).await, (3, 3));
    }

    /// Calls `call_idempotent` with attempts that hang (frozen copies) until the
    /// `answering`-th, which answers with its number; returns (the answer, how
    /// many attempts were made).
    async fn answered_by(policy: RetryPolicy, budget: &RetryBudget, answering: u32) -> (u32, u32) {
        let mut calls = 0;
        let answer: Result<tonic::Response<u32>, Status> = call_idempotent(
            policy,
            budget,
            || Ok(outgoing((), policy.attempt_timeout)),
            |_req| {
                calls += 1;
                let attempt = calls;
                async move {
                    if attempt != answering {
                        std::future::pending::<()>().await;
                    }
                    Ok(tonic::Response::new(attempt))
                }
            },
        )
        .await;
        (answer.expect("an attempt answers").into_inner(), calls)
    }
}
