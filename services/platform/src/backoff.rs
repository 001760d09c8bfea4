//! Exponential back-off for loops that retry until something comes back (the
//! database, the broker, a handler): each wait doubles the last, up to a ceiling,
//! and a wait ends early when the process is shutting down.

use std::time::Duration;

use crate::Shutdown;

/// The ceiling the platform's retry loops use.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The wait the next `wait` or `sleep` takes.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// Back to the first wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The wait to take now, doubling the one after it (for a loop that sleeps
    /// on its own terms, beside other wake-ups).
    pub fn next_wait(&mut self) -> Duration {
        let now = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        now
    }

    /// Waits the current delay and doubles it; false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        let delay = self.next_wait();
        tokio::select! {
            () = shutdown.wait() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Waits the current delay and doubles it.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_double_up_to_the_ceiling_and_end_at_shutdown() {
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(4));
        let shutdown = Shutdown::new();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(backoff.current());
            assert!(backoff.wait(&shutdown).await);
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(seen, [ms(1), ms(2), ms(4), ms(4)]);
        backoff.reset();
        assert_eq!(backoff.current(), ms(1));

        let mut long = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        shutdown.trigger();
        assert!(!long.wait(&shutdown).await, "shutdown ends the wait");
    }
}
