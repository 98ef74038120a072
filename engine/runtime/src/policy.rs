//! Retry policy for connector actions: the one place that decides, from the error kind and
//! the attempt number, whether to try again and after how long. Start at
//! [`RetryPolicy::next_delay`].

use std::time::Duration;

use firebreak_connector::ErrorKind;

/// Exponential backoff for transient failures; everything else fails at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Wait after the first failure; doubles after each further one.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// After attempt number `attempt` (1-based) failed with `kind`: how long to wait before
    /// the next attempt, or `None` to give up.
    pub fn next_delay(&self, kind: ErrorKind, attempt: u32) -> Option<Duration> {
        if !kind.is_retryable() || attempt >= self.max_attempts {
            return None;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        Some(
            self.initial_backoff
                .saturating_mul(factor)
                .min(self.max_backoff),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_back_off_exponentially_up_to_the_cap_and_the_attempt_limit() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        let delays: Vec<_> = (1..=5)
            .map(|a| policy.next_delay(ErrorKind::Transient, a))
            .collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_millis(100)),
                Some(Duration::from_millis(200)),
                Some(Duration::from_millis(300)),
                Some(Duration::from_millis(300)),
                None
            ]
        );
    }

    #[test]
    fn other_kinds_are_never_retried() {
        let policy = RetryPolicy::default();
        for kind in [
            ErrorKind::Permanent,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Denied,
            ErrorKind::Timeout,
        ] {
            assert_eq!(policy.next_delay(kind, 1), None, "{kind:?}");
        }
    }
}
