//! What the integrations look like across every replica, read from the state the client
//! stack shares in Redis (`culm_jobs::http`): each endpoint's limit (from the config) and
//! the adaptive rate in force (`…:rate`), the breaker (`…:breaker`), and the last hour's
//! per-minute call statistics (`…:stats:<hour>`). Key names come from
//! `culm_jobs::http::keys`, which owns them. Reads only: two hour hashes and the breaker
//! per integration (one slot, one pipeline) and one `HMGET` per listed endpoint.
use super::{Store, StoreError};
use culm_jobs::http::{config::IntegrationSettings, keys::IntegrationKeys, limiter, stats};
use serde::Serialize;
use std::collections::BTreeMap;

/// A configured limit: `rate` sends per `per`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LimitView {
    /// Sends allowed per window.
    pub rate: u32,
    /// The window, e.g. `1s`, `1m`, `1h`.
    pub per: String,
    /// The window in seconds.
    pub per_seconds: f64,
    /// The limit this endpoint falls under: its own, or `*` (the integration-wide one).
    pub endpoint: String,
}

/// One endpoint of an integration: its limit, the rate in force and the last hour.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct EndpointStatus {
    /// The endpoint's name, as the job types call it.
    pub endpoint: String,
    /// The configured limit (absent: none).
    pub limit: Option<LimitView>,
    /// The rate in force, sends per the limit's window: the limit's rate unless a 429
    /// lowered the shared adaptive rate (absent without a limit).
    pub effective_rate: Option<u32>,
    /// Requests sent in the last hour, by every replica (transport retries included).
    pub requests: u64,
    /// Of those, answered 429.
    pub rate_limited: u64,
    /// Of those, failed: 5xx, 408, timeouts, transport errors.
    pub failed: u64,
    /// Calls deferred by the shared rate limiter (next slot beyond `max_wait`).
    pub deferred_limiter: u64,
    /// Calls deferred because the breaker was open.
    pub deferred_breaker: u64,
    /// Mean latency of the last hour's requests, ms (absent without requests).
    pub mean_latency_ms: Option<f64>,
}

/// An integration's shared circuit breaker.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BreakerView {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Consecutive failures counted while closed.
    pub failures: u32,
    /// While open: when calls go through again, ms (RFC 3339 in JSON).
    #[serde(serialize_with = "opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<i64>,
}

/// One integration, across every replica.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct IntegrationStatus {
    /// The `<name>` of `[integrations.<name>]`.
    pub name: String,
    /// The breaker, shared by every replica.
    pub breaker: BreakerView,
    /// Endpoints with a limit of their own, and every endpoint called in the last hour.
    pub endpoints: Vec<EndpointStatus>,
}

fn opt_rfc3339<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(ms) => culm_core::time::serialize_rfc3339(ms, s),
        None => s.serialize_none(),
    }
}

fn per_text(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Store {
    /// The state of every integration in `settings`, in name order.
    pub async fn integrations(&self, settings: &[IntegrationSettings]) -> Result<Vec<IntegrationStatus>, StoreError> {
        let mut conn = self.inner.conn.clone();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        // Redis's clock for the adaptive rate (written on it); the statistics' minutes
        // are the writers' clocks, which this reads with the same rule.
        let redis_now = secs * 1000 + micros / 1000;
        let now = culm_core::now_ms();
        let (hour, _) = stats::hour_minute(now);
        let mut out = Vec::with_capacity(settings.len());
        for s in settings {
            let keys = IntegrationKeys::new(&self.inner.prefix, &s.name);
            let (this, prev, breaker): (BTreeMap<String, u64>, BTreeMap<String, u64>, BTreeMap<String, String>) =
                redis::pipe()
                    .cmd("HGETALL")
                    .arg(keys.stats(hour))
                    .cmd("HGETALL")
                    .arg(keys.stats(hour - 1))
                    .cmd("HGETALL")
                    .arg(keys.breaker())
                    .query_async(&mut conn)
                    .await?;
            let tallies = stats::last_hour(&[(hour - 1, prev), (hour, this)], now);
            let mut names: Vec<String> = s.limits.keys().filter(|e| *e != "*").cloned().collect();
            names.extend(tallies.keys().cloned());
            names.sort();
            names.dedup();
            let mut endpoints = Vec::with_capacity(names.len());
            for e in names {
                let limit = s.limit(&e);
                let effective_rate = match limit {
                    Some(l) => {
                        let (rate, at): (Option<u32>, Option<i64>) = redis::cmd("HMGET")
                            .arg(keys.rate(&e))
                            .arg("rate")
                            .arg("at")
                            .query_async(&mut conn)
                            .await?;
                        let stored = rate.map(|r| (r, at.unwrap_or(redis_now)));
                        Some(limiter::effective_at(l, s.recover_after, stored, redis_now))
                    }
                    None => None,
                };
                let t = tallies.get(&e).copied().unwrap_or_default();
                endpoints.push(EndpointStatus {
                    limit: limit.map(|l| LimitView {
                        rate: l.rate,
                        per: per_text(l.per),
                        per_seconds: l.per.as_secs_f64(),
                        endpoint: l.endpoint.clone(),
                    }),
                    effective_rate,
                    requests: u64::from(t.requests),
                    rate_limited: u64::from(t.too_many),
                    failed: u64::from(t.failed),
                    deferred_limiter: u64::from(t.deferred),
                    deferred_breaker: u64::from(t.breaker),
                    mean_latency_ms: t.mean_latency_ms().map(|m| (m * 10.0).round() / 10.0),
                    endpoint: e,
                });
            }
            let field = |k: &str| breaker.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            let state = breaker.get("state").cloned().unwrap_or_else(|| "closed".to_owned());
            // An open breaker past its `until` is half-open for the next call (the
            // script moves it then); show what a call would meet.
            let until = field("until");
            let state = if state == "open" && until <= redis_now {
                "half_open".to_owned()
            } else {
                state
            };
            out.push(IntegrationStatus {
                name: s.name.clone(),
                breaker: BreakerView {
                    failures: u32::try_from(field("failures")).unwrap_or(0),
                    until: (state == "open").then_some(until),
                    state,
                },
                endpoints,
            });
        }
        Ok(out)
    }
}
