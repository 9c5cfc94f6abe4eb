//! Per-minute call statistics of every integration, shared by every process through
//! Redis, so an operator sees the last hour across all replicas (one process's metrics
//! see only its own calls).
//!
//! Layout: one hash per integration and hour, `<prefix>:integration:{<integration>}:stats:<hour>`
//! ([`IntegrationKeys::stats`], hours since the Unix epoch), with counters
//! `<minute>:<endpoint>:<what>` (`minute` 0–59 of that hour), expiring two hours after
//! it was last written. So the statistics are bounded: at most two hours of
//! minutes × endpoints × six counters per integration.
//!
//! Cost: a call that did something (sent, or was deferred) adds its counters with one
//! pipelined round trip (`HINCRBY`s and an `EXPIRE`, one slot), sent on the limiter's
//! connection from a spawned task, so the call's result never waits on it and an error
//! is only logged. Nothing is written when nothing happened. Minutes are the process's
//! clock: replicas' clocks differ by far less than a minute.
use super::{conn::Conn, keys::IntegrationKeys};
use std::collections::BTreeMap;

/// How long an hour's hash is kept after its last write: the reader looks back one hour,
/// which spans the current and the previous hour's hash.
pub const TTL_SECS: i64 = 2 * 3600;

/// What one call did, added to its minute's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests sent (transport retries included).
    pub requests: u32,
    /// Of those, answered 429.
    pub too_many: u32,
    /// Of those, failed for the breaker: 5xx, 408, timeouts and transport errors.
    pub failed: u32,
    /// Total latency of the requests sent, ms.
    pub latency_ms: u64,
    /// Deferred by the shared rate limiter (next slot beyond `max_wait`).
    pub deferred: u32,
    /// Deferred because the breaker was open.
    pub breaker: u32,
}

impl Tally {
    fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("requests", u64::from(self.requests)),
            ("429", u64::from(self.too_many)),
            ("failed", u64::from(self.failed)),
            ("latency_ms", self.latency_ms),
            ("deferred", u64::from(self.deferred)),
            ("breaker", u64::from(self.breaker)),
        ]
    }

    fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| *v == 0)
    }

    fn add(&mut self, what: &str, n: u64) {
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        match what {
            "requests" => self.requests = self.requests.saturating_add(n32),
            "429" => self.too_many = self.too_many.saturating_add(n32),
            "failed" => self.failed = self.failed.saturating_add(n32),
            "latency_ms" => self.latency_ms = self.latency_ms.saturating_add(n),
            "deferred" => self.deferred = self.deferred.saturating_add(n32),
            "breaker" => self.breaker = self.breaker.saturating_add(n32),
            _ => {}
        }
    }

    /// Mean latency of the requests, ms (`None` without requests).
    pub fn mean_latency_ms(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.latency_ms as f64 / f64::from(self.requests))
    }
}

/// Writes one integration's counters.
#[derive(Clone)]
pub(crate) struct Recorder {
    redis: Conn,
    keys: IntegrationKeys,
}

/// The hour (since the epoch) and minute of that hour of `unix_ms`.
pub fn hour_minute(unix_ms: i64) -> (i64, i64) {
    let minute = unix_ms.div_euclid(60_000);
    (minute.div_euclid(60), minute.rem_euclid(60))
}

impl Recorder {
    pub(crate) fn new(redis: Conn, keys: IntegrationKeys) -> Self {
        Self { redis, keys }
    }

    /// Adds `tally` to `endpoint`'s current minute, without waiting for Redis.
    pub(crate) fn record(&self, endpoint: &str, tally: Tally) {
        if tally.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (hour, minute) = hour_minute(chrono::Utc::now().timestamp_millis());
        let key = self.keys.stats(hour);
        let mut pipe = redis::pipe();
        for (what, n) in tally.fields() {
            if n > 0 {
                pipe.cmd("HINCRBY")
                    .arg(&key)
                    .arg(format!("{minute}:{endpoint}:{what}"))
                    .arg(n)
                    .ignore();
            }
        }
        pipe.cmd("EXPIRE").arg(&key).arg(TTL_SECS).ignore();
        let mut conn = self.redis.clone();
        rt.spawn(async move {
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(key = %key, "could not record integration call statistics: {e}");
            }
        });
    }
}

/// Sums the counters of the hashes of `hours` (each `(hour, hash)`) over the 60 minutes
/// that end with `now_ms`'s minute, per endpoint.
pub fn last_hour(hours: &[(i64, BTreeMap<String, u64>)], now_ms: i64) -> BTreeMap<String, Tally> {
    let (h, m) = hour_minute(now_ms);
    let now_minute = h * 60 + m;
    let mut out: BTreeMap<String, Tally> = BTreeMap::new();
    for (hour, fields) in hours {
        for (field, n) in fields {
            // `<minute>:<endpoint>:<what>`: the endpoint may itself hold a colon.
            let Some((minute, rest)) = field.split_once(':') else {
                continue;
            };
            let Some((endpoint, what)) = rest.rsplit_once(':') else {
                continue;
            };
            let Ok(minute) = minute.parse::<i64>() else {
                continue;
            };
            let at = hour * 60 + minute;
            if at > now_minute || now_minute - at >= 60 {
                continue;
            }
            out.entry(endpoint.to_owned()).or_default().add(what, *n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_hour_spans_two_hashes_and_drops_older_minutes() {
        // 10:05 on some day: the window is 09:06 to 10:05.
        let now = (10 * 60 + 5) * 60_000 + 30_000;
        let f = |pairs: &[(&str, u64)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        let hours = vec![
            (9, f(&[("5:a:requests", 7), ("6:a:requests", 1), ("59:a:429", 2)])),
            (
                10,
                f(&[
                    ("5:a:requests", 3),
                    ("5:a:latency_ms", 40),
                    ("5:x:y:deferred", 1),
                    ("bad", 9),
                ]),
            ),
        ];
        let t = last_hour(&hours, now);
        assert_eq!(t["a"].requests, 4, "09:05 is more than an hour old");
        assert_eq!(t["a"].too_many, 2);
        assert_eq!(t["a"].mean_latency_ms(), Some(10.0));
        assert_eq!(t["x:y"].deferred, 1);
        assert_eq!(hour_minute(now), (10, 5));
    }
}
