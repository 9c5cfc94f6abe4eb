//! The distributed rate limiter: GCRA in one Lua script per call (`limiter.lua`), keyed
//! by integration and endpoint, shared by every process on the same Redis.
//!
//! Key: `<prefix>:integration:<integration>:<endpoint>:tat`, a string holding the
//! endpoint's theoretical arrival time in ms (Redis server time). It expires a minute
//! after the last reserved slot, so idle endpoints leave nothing behind.
use super::config::LimitConfig;
use super::conn::Conn;
use redis::Script;
use std::{sync::LazyLock, time::Duration};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limiter.lua")));

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot is reserved: send after this wait (zero: now).
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

/// The spacing of `limit` with `headroom`: `per / rate * (1 + headroom)`, and the burst
/// tolerance `(burst - 1) * interval`, both in whole ms.
pub fn interval_ms(limit: &LimitConfig, headroom: f64) -> (u64, u64) {
    let per = limit.per.as_secs_f64() * 1000.0;
    let interval = (per / f64::from(limit.rate.max(1)) * (1.0 + headroom)).ceil() as u64;
    (interval, interval * u64::from(limit.burst.saturating_sub(1)))
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

    /// The Redis key of `endpoint`.
    pub fn key(&self, endpoint: &str) -> String {
        format!("{}:integration:{}:{endpoint}:tat", self.prefix, self.integration)
    }

    /// Asks for a slot on `endpoint`. Without a limit only an upstream push-back applies.
    pub async fn acquire(
        &self,
        endpoint: &str,
        limit: Option<&LimitConfig>,
        headroom: f64,
        max_wait: Duration,
    ) -> Result<Slot, redis::RedisError> {
        let (interval, tau) = limit.map(|l| interval_ms(l, headroom)).unwrap_or((0, 0));
        let max_wait_ms = u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX / 2);
        let (ok, wait): (i64, i64) = SCRIPT
            .key(self.key(endpoint))
            .arg("acquire")
            .arg(interval)
            .arg(tau)
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
    pub async fn push_back(
        &self,
        endpoint: &str,
        limit: Option<&LimitConfig>,
        headroom: f64,
        delay: Duration,
    ) -> Result<(), redis::RedisError> {
        let tau = limit.map(|l| interval_ms(l, headroom).1).unwrap_or(0);
        let _: (i64, i64) = SCRIPT
            .key(self.key(endpoint))
            .arg("push")
            .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX / 2))
            .arg(tau)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}
