//! Retry policy: exponential backoff with full jitter and a cap.
use rand::Rng;
use std::time::Duration;

/// How a queue retries failed jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first; after the last one the job is dead-lettered.
    pub max_attempts: u32,
    /// Backoff before the second attempt (before jitter).
    pub backoff_base: Duration,
    /// Upper bound of any one backoff.
    pub backoff_cap: Duration,
}

impl RetryPolicy {
    /// The ceiling of the backoff after `attempt` failed: `min(cap, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.backoff_base.saturating_mul(1u32 << exp).min(self.backoff_cap)
    }

    /// Full-jitter backoff after `attempt` failed: uniform in `[0, ceiling(attempt)]`.
    /// Full jitter spreads a burst of failures (an upstream outage) instead of
    /// retrying them in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// Whether another attempt is allowed after `attempt` failed.
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(5), Duration::from_secs(1));
        assert_eq!(p.ceiling(60), Duration::from_secs(1));
        for attempt in 1..12 {
            assert!(p.backoff(attempt) <= p.ceiling(attempt));
        }
        assert!(p.allows_retry_after(9));
        assert!(!p.allows_retry_after(10));
    }
}
