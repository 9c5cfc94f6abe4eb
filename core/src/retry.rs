//! Retry policies: how many attempts a job gets and how long it waits between them.
//!
//! Three shapes of backoff: exponential with full jitter and a cap (the default), a fixed
//! delay ("3 retries, 30 s apart"), and an explicit list of delays. A queue has a policy
//! and a job type may override it, in code ([`Job::RETRY`](crate::Job::RETRY)) or in the
//! worker's configuration.
use rand::Rng;
use std::{borrow::Cow, time::Duration};

/// How long a job waits after a failed attempt before the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backoff {
    /// `min(cap, base · 2^(n-1))` after the n-th failure, with full jitter: uniform in
    /// `[0, that]`, so a burst of failures (an upstream outage) is spread out instead of
    /// retried in lockstep.
    Exponential {
        /// The ceiling after the first failure.
        base: Duration,
        /// The doubling stops here.
        cap: Duration,
    },
    /// The same delay after every failure, exactly.
    Fixed(Duration),
    /// `delays[n-1]` after the n-th failure, exactly; the last one repeats if the policy
    /// allows more attempts than the list has entries.
    Delays(Cow<'static, [Duration]>),
}

/// How a job is retried: its attempts in all and the backoff between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first; after the last one the job is dead-lettered.
    pub max_attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// Exponential backoff with full jitter, from `base` after the first failure, doubling
    /// up to `cap`.
    pub const fn exponential(max_attempts: u32, base: Duration, cap: Duration) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::Exponential { base, cap },
        }
    }

    /// `delay` after every failure: `fixed(4, 30 s)` is "3 retries, 30 s apart".
    pub const fn fixed(max_attempts: u32, delay: Duration) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::Fixed(delay),
        }
    }

    /// One retry after each delay in turn: `delays(&[1 s, 30 s, 5 min])` makes four
    /// attempts in all.
    pub const fn delays(delays: &'static [Duration]) -> Self {
        Self {
            max_attempts: delays.len() as u32 + 1,
            backoff: Backoff::Delays(Cow::Borrowed(delays)),
        }
    }

    /// The longest wait after `attempt` failed (the exact wait for fixed and listed
    /// delays; the jitter's upper bound for exponential).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        match &self.backoff {
            Backoff::Exponential { base, cap } => {
                let exp = attempt.saturating_sub(1).min(30);
                base.saturating_mul(1u32 << exp).min(*cap)
            }
            Backoff::Fixed(delay) => *delay,
            Backoff::Delays(list) => {
                let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
                list.get(i).or(list.last()).copied().unwrap_or_default()
            }
        }
    }

    /// The wait after `attempt` failed: uniform in `[0, ceiling(attempt)]` for
    /// exponential backoff, exactly the delay otherwise.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        match self.backoff {
            Backoff::Exponential { .. } => {
                let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rand::rng().random_range(0..=ms))
            }
            Backoff::Fixed(_) | Backoff::Delays(_) => ceiling,
        }
    }

    /// Whether another attempt is allowed after `attempt` failed.
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The backoff's name as written in configuration: `exponential`, `fixed` or `delays`.
    pub fn kind(&self) -> &'static str {
        match self.backoff {
            Backoff::Exponential { .. } => "exponential",
            Backoff::Fixed(_) => "fixed",
            Backoff::Delays(_) => "delays",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_grows_and_is_capped() {
        let p = RetryPolicy::exponential(10, Duration::from_millis(100), Duration::from_secs(1));
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

    #[test]
    fn fixed_backoff_waits_the_same_every_time() {
        let p = RetryPolicy::fixed(4, Duration::from_secs(30));
        for attempt in 1..4 {
            assert_eq!(p.backoff(attempt), Duration::from_secs(30));
        }
        assert!(p.allows_retry_after(3));
        assert!(!p.allows_retry_after(4), "3 retries: 4 attempts in all");
    }

    #[test]
    fn listed_delays_are_taken_in_turn_and_the_last_repeats() {
        const DELAYS: &[Duration] = &[
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(300),
        ];
        let p = RetryPolicy::delays(DELAYS);
        assert_eq!(p.max_attempts, 4);
        assert_eq!(p.backoff(1), Duration::from_secs(1));
        assert_eq!(p.backoff(2), Duration::from_secs(30));
        assert_eq!(p.backoff(3), Duration::from_secs(300));
        let longer = RetryPolicy { max_attempts: 6, ..p };
        assert_eq!(longer.backoff(5), Duration::from_secs(300));
        assert_eq!(longer.kind(), "delays");
    }
}
