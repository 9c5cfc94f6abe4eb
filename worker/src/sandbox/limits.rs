//! Sliding-window rate limits, counted the way the real APIs count: every accepted
//! request in the trailing window, on the sandbox's millisecond clock (the same clock the
//! request log's `at` is written with, so the log can be checked against the limit).

use std::collections::VecDeque;

/// A limit of `limit` accepted requests per `window_ms`.
///
/// Strict: a request is accepted only when fewer than `limit` accepted requests lie in
/// the closed window `[now - window_ms, now]`, so no window of `window_ms`, open or
/// closed, ever holds more than `limit` accepted requests. Rejected requests are not
/// counted (a client that is told to wait is not locked out for longer).
#[derive(Debug)]
pub struct SlidingWindow {
    limit: usize,
    window_ms: i64,
    accepted: VecDeque<i64>,
}

/// What a limit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Accepted; `remaining` more fit in the current window.
    Allow {
        /// Requests still allowed in the window.
        remaining: usize,
    },
    /// Over the limit: retry after this many whole seconds (at least 1).
    Reject {
        /// `Retry-After`, rounded up.
        retry_after_secs: u64,
    },
}

impl SlidingWindow {
    /// `limit` requests per `window_ms` milliseconds.
    pub fn new(limit: usize, window_ms: i64) -> Self {
        Self {
            limit,
            window_ms,
            accepted: VecDeque::with_capacity(limit + 1),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Decides a request arriving at `now_ms` and counts it when accepted.
    pub fn check(&mut self, now_ms: i64) -> Decision {
        while self.accepted.front().is_some_and(|&t| t < now_ms - self.window_ms) {
            self.accepted.pop_front();
        }
        if self.accepted.len() < self.limit {
            self.accepted.push_back(now_ms);
            return Decision::Allow {
                remaining: self.limit - self.accepted.len(),
            };
        }
        // Whole seconds until the oldest counted request is `window_ms` old. The closed
        // window admits the next request 1 ms after that; rounding that millisecond up
        // would turn 2/s's "wait 1 s" into "wait 2 s" and make clients under-use the limit.
        let oldest = self.accepted.front().copied().unwrap_or(now_ms);
        let wait_ms = (oldest + self.window_ms - now_ms).max(1);
        Decision::Reject {
            retry_after_secs: (wait_ms as u64).div_ceil(1000).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_three_in_any_closed_second() {
        let mut w = SlidingWindow::new(2, 1000);
        assert!(matches!(w.check(0), Decision::Allow { remaining: 1 }));
        assert!(matches!(w.check(10), Decision::Allow { remaining: 0 }));
        assert_eq!(w.check(500), Decision::Reject { retry_after_secs: 1 });
        // Exactly one second after the first is still inside the closed window.
        assert!(matches!(w.check(1000), Decision::Reject { .. }));
        assert!(matches!(w.check(1001), Decision::Allow { .. }));
        assert!(matches!(w.check(1010), Decision::Reject { .. }));
        assert!(matches!(w.check(1011), Decision::Allow { .. }));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let mut w = SlidingWindow::new(2, 3_600_000);
        w.check(0);
        w.check(1);
        assert_eq!(w.check(1_000), Decision::Reject { retry_after_secs: 3599 });
        assert_eq!(w.check(3_599_999), Decision::Reject { retry_after_secs: 1 });
        assert!(matches!(w.check(3_600_001), Decision::Allow { .. }));
    }
}
