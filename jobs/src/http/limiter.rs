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
//! which an upstream push-back (429/503 `Retry-After`) lets nothing through; and `…:rate`,
//! the adaptive rate: a 429 halves the endpoint's effective rate for every process, and
//! each `recover_after` without a 429 adds a tenth of the configured rate back.
use super::config::LimitConfig;
use super::conn::Conn;
use super::keys::IntegrationKeys;
use redis::Script;
use std::{sync::LazyLock, time::Duration};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limiter.lua")));

/// What the limiter decided, and the endpoint's effective rate (sends per `per`; 0 when
/// it has no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The slot.
    pub slot: Slot,
    /// The adaptive rate in force: the configured rate unless a 429 lowered it.
    pub rate: u32,
}

/// A slot, or how far away the next one is.
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
    keys: IntegrationKeys,
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

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// The quiet period per recovery step: `recover_after`, at least the limit's `per`.
fn recover(limit: Option<&LimitConfig>, recover_after: Duration) -> Duration {
    limit.map_or(recover_after, |l| recover_after.max(l.per))
}

/// The adaptive rate's recovery step: a tenth of the configured rate, at least 1.
pub fn step(rate: u32) -> u32 {
    rate.div_ceil(10).max(1)
}

/// The effective rate at `now` (ms, Redis clock) of `limit`, given the stored adaptive
/// rate `stored` last changed at `at` (the `…:rate` hash; `None`: absent, so the limit
/// applies): the recovery steps due since then are added, as `limiter.lua` would on the
/// next call, so a reader sees the rate in force without writing anything.
pub fn effective_at(limit: &LimitConfig, recover_after: Duration, stored: Option<(u32, i64)>, now: i64) -> u32 {
    let rate = limit.rate.max(1);
    let Some((eff, at)) = stored else {
        return rate;
    };
    let recover = i64::try_from(recover(Some(limit), recover_after).as_millis()).unwrap_or(i64::MAX);
    let mut eff = eff.min(rate);
    if eff < rate && recover > 0 && now - at >= recover {
        let steps = u32::try_from((now - at) / recover).unwrap_or(u32::MAX);
        eff = eff.saturating_add(steps.saturating_mul(step(rate))).min(rate);
    }
    eff
}

impl Limiter {
    /// A limiter writing keys under `prefix`.
    pub fn new(redis: Conn, prefix: &str, integration: &str) -> Self {
        Self {
            redis,
            keys: IntegrationKeys::new(prefix, integration),
        }
    }

    /// The Redis key of `endpoint`'s reserved send instants.
    pub fn key(&self, endpoint: &str) -> String {
        self.keys.slots(endpoint)
    }

    /// The Redis key of `endpoint`'s adaptive rate.
    pub fn rate_key(&self, endpoint: &str) -> String {
        self.keys.rate(endpoint)
    }

    /// The Redis key of `endpoint`'s push-back ("no send before").
    pub fn hold_key(&self, endpoint: &str) -> String {
        self.keys.hold(endpoint)
    }

    /// Asks for one send's slot on `endpoint`. Without a limit only an upstream push-back applies.
    pub async fn acquire(
        &self,
        endpoint: &str,
        limit: Option<&LimitConfig>,
        guard: Duration,
        max_wait: Duration,
        recover_after: Duration,
    ) -> Result<Decision, redis::RedisError> {
        let (rate, window, burst, burst_window) = limit.map(|l| windows(l, guard)).unwrap_or((0, 0, 0, 0));
        let (ok, wait, rate): (i64, i64, i64) = SCRIPT
            .key(self.key(endpoint))
            .key(self.hold_key(endpoint))
            .key(self.rate_key(endpoint))
            .arg("acquire")
            .arg(rate)
            .arg(window)
            .arg(burst)
            .arg(burst_window)
            .arg(ms(max_wait))
            .arg(ms(recover(limit, recover_after)))
            .arg(step(rate))
            .invoke_async(&mut self.redis.clone())
            .await?;
        let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
        Ok(Decision {
            slot: if ok == 1 {
                Slot::Reserved(wait)
            } else {
                Slot::Busy(wait)
            },
            rate: u32::try_from(rate).unwrap_or(0),
        })
    }

    /// The upstream pushed back: hand out no slot on `endpoint` before `delay` from now.
    /// A 429 (`lower`) also halves the endpoint's effective rate for every process (at
    /// most once per window), which then recovers step by step. Returns the effective rate.
    pub async fn push_back(
        &self,
        endpoint: &str,
        delay: Duration,
        lower: bool,
        limit: Option<&LimitConfig>,
        guard: Duration,
        recover_after: Duration,
    ) -> Result<u32, redis::RedisError> {
        let (rate, window, _, _) = limit.map(|l| windows(l, guard)).unwrap_or((0, 0, 0, 0));
        let (_, _, rate): (i64, i64, i64) = SCRIPT
            .key(self.key(endpoint))
            .key(self.hold_key(endpoint))
            .key(self.rate_key(endpoint))
            .arg("push")
            .arg(ms(delay))
            .arg(u8::from(lower))
            .arg(rate)
            .arg(window)
            .arg(ms(recover(limit, recover_after)))
            .arg(step(rate))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(u32::try_from(rate).unwrap_or(0))
    }
}
