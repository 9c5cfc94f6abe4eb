//! Integration configuration: `[integration_defaults]` and `[integrations.<name>]` as
//! written in TOML, resolved into [`IntegrationSettings`]. The worker embeds these types
//! in its `Config` (culm-jobs cannot depend on culm-worker) and validates them with
//! [`validate`], which names the offending key.
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

/// Every integration culm knows, by its config/metrics/sandbox name.
pub const INTEGRATIONS: [&str; 13] = [
    "galileo",
    "crossborder",
    "ding",
    "bamboo",
    "salesforce",
    "appsflyer",
    "unit21",
    "veriff",
    "persona",
    "kard",
    "avalara",
    "mailer",
    "sftp",
];

/// The largest `guard` accepted: it covers jitter, not a slower rate (lower `rate` for that).
pub const MAX_GUARD: Duration = Duration::from_secs(1);

/// `[integration_defaults]`: applied to every integration that does not set its own value.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationDefaults {
    /// Whole-request timeout of one HTTP attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TCP/TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest a job waits in-process for a rate-limit slot; beyond it the job is deferred.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Added to every limit's window (`per`), so that arrivals at the upstream (not only
    /// departures) respect its limit despite network and scheduling jitter: an absolute
    /// guard sized from measured jitter, not a fraction of the period.
    #[serde(with = "humantime_serde")]
    pub guard: Duration,
    /// Extra attempts for transient transport errors inside one call (backon, jittered).
    pub transport_retries: usize,
    /// After a 429 halved an endpoint's shared rate, each `recover_after` without a 429
    /// (at least the limit's `per`) adds a tenth of the configured rate back.
    #[serde(with = "humantime_serde")]
    pub recover_after: Duration,
    /// Deferral after a 429/503 that carries no usable `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub default_retry_after: Duration,
    /// When the integration's circuit breaker opens and how long it stays open.
    pub breaker: BreakerConfig,
}

/// Circuit breaker settings of one integration.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures (transport errors, timeouts, 5xx, 408) that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before letting probes through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Calls let through while half-open; that many successes close the breaker.
    pub half_open_probes: u32,
}

/// One `limits = [{ endpoint, rate, per, burst }]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The endpoint name the client uses (e.g. `place_order`); `"*"` applies to every
    /// endpoint of the integration that has no limit of its own.
    pub endpoint: String,
    /// Requests allowed per `per`.
    pub rate: u32,
    /// The period of `rate`.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Most requests sent back to back (default `rate`: the window alone applies, as the
    /// upstream counts). Lower values spread requests: any `burst + 1` consecutive
    /// requests span at least `burst * per / rate` plus the guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// `[integrations.<name>]`: unset values come from `[integration_defaults]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    /// Base URL; clients append endpoint paths (`http://127.0.0.1:8900/<name>` is the sandbox).
    pub base_url: String,
    /// Name of the environment variable holding the API key (sent as a bearer token);
    /// empty: no credentials. The secret itself is never in a file or a log.
    #[serde(default)]
    pub api_key_env: String,
    /// Overrides `integration_defaults.timeout`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Overrides `integration_defaults.connect_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Overrides `integration_defaults.max_wait`.
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
    /// Overrides `integration_defaults.guard`.
    #[serde(default, with = "humantime_serde")]
    pub guard: Option<Duration>,
    /// Overrides `integration_defaults.transport_retries`.
    #[serde(default)]
    pub transport_retries: Option<usize>,
    /// Overrides `integration_defaults.recover_after`.
    #[serde(default, with = "humantime_serde")]
    pub recover_after: Option<Duration>,
    /// Overrides `integration_defaults.default_retry_after`.
    #[serde(default, with = "humantime_serde")]
    pub default_retry_after: Option<Duration>,
    /// Overrides `integration_defaults.breaker`.
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    /// Rate limits per endpoint, shared by every process using the same Redis.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
}

/// One integration with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationSettings {
    /// The `<name>` of `[integrations.<name>]`.
    pub name: String,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// Environment variable of the API key (empty: none).
    pub api_key_env: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// The connect phase of one attempt, within `timeout`.
    pub connect_timeout: Duration,
    /// Longest in-process wait for a rate-limit slot.
    pub max_wait: Duration,
    /// Added to every limit's window against arrival jitter.
    pub guard: Duration,
    /// Extra attempts for transient transport errors.
    pub transport_retries: usize,
    /// Quiet period per recovery step of the adaptive rate.
    pub recover_after: Duration,
    /// Deferral for a 429/503 without `Retry-After`.
    pub default_retry_after: Duration,
    /// When the integration's circuit breaker opens and how long it stays open.
    pub breaker: BreakerConfig,
    /// Limits by endpoint (`"*"` for the integration-wide default).
    pub limits: BTreeMap<String, LimitConfig>,
}

impl IntegrationSettings {
    /// Resolves `[integrations.<name>]` over the defaults.
    pub fn resolve(name: &str, c: &IntegrationConfig, d: &IntegrationDefaults) -> Self {
        Self {
            name: name.to_owned(),
            base_url: c.base_url.trim_end_matches('/').to_owned(),
            api_key_env: c.api_key_env.clone(),
            timeout: c.timeout.unwrap_or(d.timeout),
            connect_timeout: c.connect_timeout.unwrap_or(d.connect_timeout),
            max_wait: c.max_wait.unwrap_or(d.max_wait),
            guard: c.guard.unwrap_or(d.guard),
            transport_retries: c.transport_retries.unwrap_or(d.transport_retries),
            recover_after: c.recover_after.unwrap_or(d.recover_after),
            default_retry_after: c.default_retry_after.unwrap_or(d.default_retry_after),
            breaker: c.breaker.unwrap_or(d.breaker),
            limits: c.limits.iter().map(|l| (l.endpoint.clone(), l.clone())).collect(),
        }
    }

    /// Every configured integration, resolved.
    pub fn all(configs: &BTreeMap<String, IntegrationConfig>, d: &IntegrationDefaults) -> Vec<Self> {
        configs.iter().map(|(n, c)| Self::resolve(n, c, d)).collect()
    }

    /// The limit that applies to `endpoint`: its own, else the `"*"` one.
    pub fn limit(&self, endpoint: &str) -> Option<&LimitConfig> {
        self.limits.get(endpoint).or_else(|| self.limits.get("*"))
    }
}

/// Rejects impossible integration settings; returns the offending key and why.
pub fn validate(
    d: &IntegrationDefaults,
    configs: &BTreeMap<String, IntegrationConfig>,
) -> Result<(), (String, String)> {
    check_common(
        "integration_defaults",
        d.timeout,
        d.connect_timeout,
        d.guard,
        &d.breaker,
    )?;
    for (name, c) in configs {
        let key = format!("integrations.{name}");
        if !name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        {
            return Err((key, "integration names use only a-z, 0-9 and _".into()));
        }
        if !(c.base_url.starts_with("http://") || c.base_url.starts_with("https://")) {
            return Err((
                format!("{key}.base_url"),
                format!("must be an http(s) URL, e.g. http://127.0.0.1:8900/{name}"),
            ));
        }
        if c.api_key_env
            .chars()
            .any(|ch| !(ch.is_ascii_alphanumeric() || ch == '_'))
        {
            return Err((
                format!("{key}.api_key_env"),
                "must be an environment variable name (the secret itself belongs in the environment)".into(),
            ));
        }
        let s = IntegrationSettings::resolve(name, c, d);
        check_common(&key, s.timeout, s.connect_timeout, s.guard, &s.breaker)?;
        for (i, l) in c.limits.iter().enumerate() {
            if l.endpoint.is_empty() || l.rate == 0 || l.per.is_zero() || l.burst.is_some_and(|b| b == 0 || b > l.rate)
            {
                return Err((
                    format!("{key}.limits[{i}]"),
                    "needs a non-empty endpoint, rate >= 1, per > 0 and burst between 1 and rate".into(),
                ));
            }
            if c.limits[..i].iter().any(|o| o.endpoint == l.endpoint) {
                return Err((
                    format!("{key}.limits[{i}].endpoint"),
                    format!("endpoint `{}` is limited twice", l.endpoint),
                ));
            }
        }
    }
    Ok(())
}

fn check_common(
    key: &str,
    timeout: Duration,
    connect: Duration,
    guard: Duration,
    b: &BreakerConfig,
) -> Result<(), (String, String)> {
    if timeout.is_zero() || connect.is_zero() {
        return Err((format!("{key}.timeout"), "timeouts must be above zero".into()));
    }
    if guard > MAX_GUARD {
        return Err((
            format!("{key}.guard"),
            format!("must be at most {MAX_GUARD:?} (it covers network jitter, e.g. \"25ms\")"),
        ));
    }
    if b.failure_threshold == 0 || b.half_open_probes == 0 || b.open_for.is_zero() {
        return Err((
            format!("{key}.breaker"),
            "failure_threshold and half_open_probes must be at least 1, open_for above zero".into(),
        ));
    }
    Ok(())
}
