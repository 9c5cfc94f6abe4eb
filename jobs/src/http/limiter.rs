//! The distributed rate limiter: a sliding window of reserved send instants in one Lua
//! script per call (`limiter.lua`), keyed by integration and endpoint, shared by every
//! process on the same Redis. It counts the way upstreams count: no window of `per`
//! holds more than `rate` sends, so the whole allowance is usable; an absolute `guard`
//! (measured arrival jitter) is added to the window so arrivals, not only departures,
//! stay within it.
//!
//! Keys (one hash tag, so one cluster slot): `<prefix>:integration:{<integration>:<endpoint>}:slots`,
//! a list of the last `rate` reserved send instants in ms (Redis server time), newest
//! first, which expires a minute after its window ends; and `…:hold`, the instant before
//! which an upstream push-back (429/503 `Retry-After`) lets nothing through.
use super::config::LimitConfig;
use super::conn::Conn;
use redis::Script;
use std::{sync::LazyLock, time::Duration};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limiter.lua")));

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot is reserved: send this long after the limiter was asked (zero: now).
    Reserved(Duration),
    /// The next slot is further away than the allowed wait: defer by about this long.
    Busy(Duration),
}

/// Limiter for one integration.
#[derive(Clone)]
pub struct Limiter {
    redis: Conn,
    prefix: String,
    integration: String,
}

/// The windows `limit` is enforced with, in whole ms: `(rate, per + guard, burst,
/// burst * per / rate + guard)`. `burst` is `rate` unless the limit spreads its sends.
pub fn windows(limit: &LimitConfig, guard: Duration) -> (u32, u64, u32, u64) {
    let per = u64::try_from(limit.per.as_millis()).unwrap_or(u64::MAX / 4);
    let guard = u64::try_from(guard.as_millis()).unwrap_or(0);
    let rate = limit.rate.max(1);
    let burst = limit.burst.unwrap_or(rate).clamp(1, rate);
    let burst_window = (per * u64::from(burst)).div_ceil(u64::from(rate)) + guard;
    (rate, per + guard, burst, burst_window)
}

impl Limiter {
    /// A limiter writing keys under `prefix`.
    pub fn new(redis: Conn, prefix: &str, integration: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            integration: integration.to_owned(),
        }
    }

    /// The Redis key of `endpoint`'s reserved send instants.
    pub fn key(&self, endpoint: &str) -> String {
        format!("{}:integration:{{{}:{endpoint}}}:slots", self.prefix, self.integration)
    }

    /// The Redis key of `endpoint`'s push-back ("no send before").
    pub fn hold_key(&self, endpoint: &str) -> String {
        format!("{}:integration:{{{}:{endpoint}}}:hold", self.prefix, self.integration)
    }

    /// Asks for one send's slot on `endpoint`. Without a limit only an upstream push-back applies.
    pub async fn acquire(
        &self,
        endpoint: &str,
        limit: Option<&LimitConfig>,
        guard: Duration,
        max_wait: Duration,
    ) -> Result<Slot, redis::RedisError> {
        let (rate, window, burst, burst_window) = limit.map(|l| windows(l, guard)).unwrap_or((0, 0, 0, 0));
        let max_wait_ms = u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX / 2);
        let (ok, wait): (i64, i64) = SCRIPT
            .key(self.key(endpoint))
            .key(self.hold_key(endpoint))
            .arg("acquire")
            .arg(rate)
            .arg(window)
            .arg(burst)
            .arg(burst_window)
            .arg(max_wait_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
        Ok(if ok == 1 {
            Slot::Reserved(wait)
        } else {
            Slot::Busy(wait)
        })
    }

    /// The upstream pushed back: hand out no slot on `endpoint` before `delay` from now.
    pub async fn push_back(&self, endpoint: &str, delay: Duration) -> Result<(), redis::RedisError> {
        let _: (i64, i64) = SCRIPT
            .key(self.key(endpoint))
            .key(self.hold_key(endpoint))
            .arg("push")
            .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX / 2))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}
