//! The one HTTP client stack every integration is called through (reqwest with rustls):
//! circuit breaker → shared rate limiter → request with backon retries for transient
//! transport errors → classification of the answer into a [`Reply`] or a [`JobError`].
//!
//! - **Rate limits** ([`limiter`]): a sliding window of send instants per integration and
//!   endpoint in Redis; every send (transport retries included) takes its own slot. A slot
//!   within `max_wait` is waited for; a later one defers the job (no attempt spent).
//! - **Push-back**: 429, or 503 with `Retry-After`, defers the job by that long and
//!   moves the endpoint's shared next slot past it, so no process calls sooner; a 429 also
//!   halves the endpoint's shared rate, which recovers step by step.
//! - **Breaker** ([`breaker`]): per integration, shared by every process through Redis;
//!   while open, jobs are deferred.
//! - **Classification**: 2xx → [`Reply`]; 408, 409, 5xx, transport errors →
//!   [`JobError::Retryable`]; other 4xx → [`JobError::Permanent`] with the upstream's message.
//! - **Statistics** ([`stats`]): what each call did (requests, 429s, failures, latency,
//!   deferrals) is added to per-minute counters in Redis shared by every replica, in one
//!   pipelined write the call's result does not wait for.
//! - **Idempotency**: [`Call::idempotent`] sends `Idempotency-Key: <ctx.idempotency_key()>`.
//! - **Tracing**: every call is a client span (integration, endpoint, status, transport
//!   retries, whether the limiter made it wait or deferred it) and sends the W3C
//!   `traceparent` and `tracestate` of `culm_core::trace::current` (never `baggage`,
//!   which may carry the caller's data, to a third party).
//! - **Credentials**: read once from the environment variable named in the config and sent
//!   as a bearer token marked sensitive; never logged or printed.
pub mod breaker;
pub mod config;
pub mod conn;
pub mod keys;
pub mod limiter;
pub mod metrics;
pub mod stats;

use backon::{BackoffBuilder, ExponentialBuilder};
use breaker::Breaker;
use config::IntegrationSettings;
use conn::Conn;
use culm_core::{JobContext, JobError};
use limiter::{Limiter, Slot};
use rand::Rng;
use reqwest::{Method, header};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::Instrument;

/// Every configured integration's client, by name. Built once by the worker and handed
/// to handlers through `Deps`; cheap to clone.
#[derive(Clone, Default)]
pub struct Integrations {
    clients: Arc<BTreeMap<String, Client>>,
    prefix: Arc<str>,
    redis: Option<Conn>,
}

/// Building a client failed.
#[derive(Debug, thiserror::Error)]
#[error("integration `{integration}`: cannot build its HTTP client: {message}")]
pub struct BuildError {
    /// The integration whose client could not be built, as named under `[integrations]`.
    pub integration: String,
    /// What the HTTP client builder refused (TLS, proxy or header settings).
    pub message: String,
}

impl Integrations {
    /// Clients for `settings`, sharing limiter state in Redis under `key_prefix`.
    /// API keys are read from the environment now.
    pub fn new(
        settings: Vec<IntegrationSettings>,
        redis: impl Into<Conn>,
        key_prefix: &str,
    ) -> Result<Self, BuildError> {
        let redis: Conn = redis.into();
        let mut clients = BTreeMap::new();
        for s in settings {
            let api_key = (!s.api_key_env.is_empty())
                .then(|| std::env::var(&s.api_key_env).ok())
                .flatten()
                .filter(|k| !k.is_empty());
            if api_key.is_none() && !s.api_key_env.is_empty() {
                tracing::debug!(integration = %s.name, env = %s.api_key_env, "no API key set: calling without credentials");
            }
            clients.insert(s.name.clone(), Client::new(s, redis.clone(), key_prefix, api_key)?);
        }
        Ok(Self {
            clients: Arc::new(clients),
            prefix: key_prefix.into(),
            redis: Some(redis),
        })
    }

    /// The Redis connection the clients share (for handlers that record results).
    pub fn redis(&self) -> Option<Conn> {
        self.redis.clone()
    }

    /// A Redis key under the process's key prefix, for job results (`<prefix>:<suffix>`).
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// The client of integration `name`.
    pub fn get(&self, name: &str) -> Option<&Client> {
        self.clients.get(name)
    }

    /// Configured integration names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }
}

/// The client of integration `name` from the handler's dependencies. A missing client is
/// a deployment error, so the job is dead-lettered with the config key to fix.
pub fn client(ctx: &JobContext, name: &str) -> Result<Client, JobError> {
    ctx.dep::<Integrations>()
        .and_then(|i| i.get(name).cloned())
        .ok_or_else(|| {
            JobError::permanent(format!(
                "integration `{name}` is not configured in this process (add [integrations.{name}] to the config)"
            ))
        })
}

/// One integration's client; clones share the connection pool, breaker and limiter.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    settings: IntegrationSettings,
    http: reqwest::Client,
    limiter: Limiter,
    breaker: Breaker,
    stats: stats::Recorder,
    api_key: Option<header::HeaderValue>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("integration", &self.inner.settings.name)
            .field("base_url", &self.inner.settings.base_url)
            .field("api_key", &self.inner.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Client {
    /// A client for `settings`; `api_key` is sent as a bearer token.
    pub fn new(
        settings: IntegrationSettings,
        redis: impl Into<Conn>,
        key_prefix: &str,
        api_key: Option<String>,
    ) -> Result<Self, BuildError> {
        let redis: Conn = redis.into();
        let err = |message: String| BuildError {
            integration: settings.name.clone(),
            message,
        };
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("culm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| err(e.to_string()))?;
        let api_key = match api_key {
            Some(k) => {
                let mut v = header::HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    err(format!(
                        "the value of {} is not a valid header value",
                        settings.api_key_env
                    ))
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                breaker: Breaker::shared(&settings.name, settings.breaker, redis.clone(), key_prefix),
                stats: stats::Recorder::new(redis.clone(), keys::IntegrationKeys::new(key_prefix, &settings.name)),
                limiter: Limiter::new(redis, key_prefix, &settings.name),
                settings,
                http,
                api_key,
            }),
        })
    }

    /// The resolved settings.
    pub fn settings(&self) -> &IntegrationSettings {
        &self.inner.settings
    }

    /// The breaker (for tests and the admin view).
    pub fn breaker(&self) -> &Breaker {
        &self.inner.breaker
    }

    /// A call of `method` to `path` (appended to the base URL), rate-limited as `endpoint`.
    pub fn request(&self, method: Method, endpoint: &str, path: impl Into<String>) -> Call {
        Call {
            client: self.clone(),
            method,
            endpoint: endpoint.to_owned(),
            path: path.into(),
            body: None,
            query: Vec::new(),
            idempotency_key: None,
            accept: Vec::new(),
        }
    }

    /// `GET path`, limited as `endpoint`.
    pub fn get(&self, endpoint: &str, path: impl Into<String>) -> Call {
        self.request(Method::GET, endpoint, path)
    }

    /// `POST path`, limited as `endpoint`.
    pub fn post(&self, endpoint: &str, path: impl Into<String>) -> Call {
        self.request(Method::POST, endpoint, path)
    }

    /// `PUT path`, limited as `endpoint`.
    pub fn put(&self, endpoint: &str, path: impl Into<String>) -> Call {
        self.request(Method::PUT, endpoint, path)
    }

    /// `PATCH path`, limited as `endpoint`.
    pub fn patch(&self, endpoint: &str, path: impl Into<String>) -> Call {
        self.request(Method::PATCH, endpoint, path)
    }
}

/// A request being built; [`Call::send`] runs it through the stack.
#[must_use = "a call does nothing until sent"]
pub struct Call {
    client: Client,
    method: Method,
    endpoint: String,
    path: String,
    body: Option<serde_json::Value>,
    query: Vec<(String, String)>,
    idempotency_key: Option<String>,
    accept: Vec<u16>,
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The partner's HTTP status; every status a handler sees was classified as a success.
    pub status: u16,
    /// The JSON body (`Null` when empty, a string when not JSON).
    pub body: serde_json::Value,
}

impl Reply {
    /// A string field of the body.
    pub fn str(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(|v| v.as_str())
    }
}

/// Parses `Retry-After`: whole or fractional seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = (at.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0);
    Some(Duration::from_millis(ms.unsigned_abs()))
}

/// Records `endpoint`'s effective rate (sends per `per`) as requests per second.
fn effective_rate(name: &str, endpoint: &str, limit: Option<&config::LimitConfig>, rate: u32) {
    if let Some(l) = limit.filter(|l| !l.per.is_zero()) {
        metrics::effective_rate(name, endpoint, f64::from(rate) / l.per.as_secs_f64());
    }
}

fn jitter(d: Duration) -> Duration {
    let cap = (d.as_millis() / 10).clamp(1, 250) as u64;
    d + Duration::from_millis(rand::rng().random_range(0..=cap))
}

fn transient(e: &reqwest::Error) -> bool {
    e.is_timeout() || e.is_connect() || e.is_request()
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    if s.is_empty() { "(empty body)".to_owned() } else { s }
}

impl Call {
    /// Sends `body` as JSON.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        // Payload structs always serialise; a failure becomes a null body the upstream rejects.
        self.body = Some(serde_json::to_value(body).unwrap_or(serde_json::Value::Null));
        self
    }

    /// Adds a query parameter.
    pub fn query(mut self, key: &str, value: impl ToString) -> Self {
        self.query.push((key.to_owned(), value.to_string()));
        self
    }

    /// Sends `Idempotency-Key: <key>`.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Treats `status` (e.g. 404 on a status poll) as a [`Reply`] instead of an error.
    pub fn accept(mut self, status: u16) -> Self {
        self.accept.push(status);
        self
    }

    /// For calls that move money or buy something: sends `Idempotency-Key:
    /// <ctx.idempotency_key()>` (`culm-<job id>`, the integrations/sandbox contract). The
    /// key is the same on every retry and redelivery, and a re-drive from the archive
    /// (a new job id) keeps the original job's, so the upstream executes the call once.
    pub fn idempotent(self, ctx: &JobContext) -> Self {
        self.idempotency_key(ctx.idempotency_key())
    }

    /// Takes one send's slot and waits for it: the wait counts from when the limiter was
    /// asked (the instant it computed on Redis's clock), not from when its answer arrived.
    /// A slot beyond `max_wait` defers the job; on a transport retry (`retry`) it makes
    /// the call retryable at that slot instead, since the upstream already failed it.
    async fn reserve(&self, limit: Option<&config::LimitConfig>, retry: bool) -> Result<(), JobError> {
        let inner = &self.client.inner;
        let s = &inner.settings;
        let (name, endpoint) = (s.name.as_str(), self.endpoint.as_str());
        let asked = tokio::time::Instant::now();
        let decided = inner
            .limiter
            .acquire(endpoint, limit, s.guard, s.max_wait, s.recover_after)
            .await
            .map(|d| {
                effective_rate(name, endpoint, limit, d.rate);
                d.slot
            });
        match decided {
            Ok(Slot::Reserved(wait)) => {
                if !wait.is_zero() {
                    metrics::rate_limited(name, endpoint, "waited");
                    tracing::Span::current().record("rate_limiter", "waited");
                    tokio::time::sleep_until(asked + wait).await;
                }
                Ok(())
            }
            Ok(Slot::Busy(wait)) => {
                metrics::rate_limited(name, endpoint, "deferred");
                tracing::Span::current().record("rate_limiter", "deferred");
                if !retry {
                    tracing::Span::current().record("deferred_by", "rate_limiter");
                }
                let message = format!("{name} {endpoint}: rate limit, next slot in {}ms", wait.as_millis());
                if retry {
                    return Err(JobError::Retryable {
                        message: format!("{message} (after a transport error)"),
                        after: Some(wait),
                    });
                }
                // Come back when the slot is within reach of a short wait.
                let back = wait.saturating_sub(s.max_wait / 2).max(Duration::from_millis(10));
                Err(JobError::defer(jitter(back), message))
            }
            // Without a configured limit the shared state only carries an upstream's
            // Retry-After: losing it for a Redis outage is safer than failing every call
            // (the breaker, on this process's own state meanwhile, still guards the
            // upstream). A configured limit is never risked.
            Err(e) if limit.is_none() => {
                tracing::warn!(
                    integration = name,
                    endpoint,
                    "shared limiter unreachable; this endpoint has no configured limit, calling anyway: {e}"
                );
                Ok(())
            }
            Err(e) => Err(JobError::retryable(format!("{name}: rate limiter unavailable: {e}"))),
        }
    }

    /// Runs the call through breaker, limiter, retries and classification, in a client
    /// span (`<integration> <endpoint>` in traces) whose context goes out as `traceparent`.
    pub async fn send(self) -> Result<Reply, JobError> {
        use tracing::field::Empty;
        let name = self.client.inner.settings.name.as_str();
        let span = tracing::info_span!(
            "integration_call",
            otel.name = %format_args!("{name} {}", self.endpoint),
            otel.kind = "client",
            integration = name,
            endpoint = %self.endpoint,
            http.request.method = %self.method,
            http.response.status_code = Empty,
            retries = 0u32,
            rate_limiter = Empty,
            deferred_by = Empty,
            outcome = Empty,
            otel.status_code = Empty,
        );
        let stats = self.client.inner.stats.clone();
        let endpoint = self.endpoint.clone();
        let mut tally = stats::Tally::default();
        let result = self.send_traced(&span, &mut tally).instrument(span.clone()).await;
        stats.record(&endpoint, tally);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(JobError::Defer { .. }) => "deferred",
            Err(JobError::Retryable { .. }) => "retryable",
            Err(JobError::Permanent(_)) => "permanent",
        };
        span.record("outcome", outcome);
        if !matches!(result, Ok(_) | Err(JobError::Defer { .. })) {
            span.record("otel.status_code", "error");
        }
        result
    }

    async fn send_traced(self, span: &tracing::Span, tally: &mut stats::Tally) -> Result<Reply, JobError> {
        let inner = self.client.inner.clone();
        let s = &inner.settings;
        let name = s.name.as_str();
        let endpoint = self.endpoint.as_str();
        let permit = match inner.breaker.admit().await {
            Ok(p) => p,
            Err(wait) => {
                metrics::breaker_rejected(name);
                tally.breaker += 1;
                span.record("deferred_by", "breaker");
                return Err(JobError::defer(
                    jitter(wait),
                    format!("{name}: circuit breaker open, calls paused"),
                ));
            }
        };
        let limit = s.limit(endpoint);
        let url = format!("{}{}", s.base_url, self.path);
        // This call's span when spans are exported, else the job's stored context.
        let trace = culm_core::trace::current();
        let request = || {
            let mut rb = inner.http.request(self.method.clone(), &url);
            if !self.query.is_empty() {
                rb = rb.query(&self.query);
            }
            if let Some(b) = &self.body {
                rb = rb.json(b);
            }
            if let Some(k) = &self.idempotency_key {
                rb = rb.header("Idempotency-Key", k);
            }
            if let Some(k) = &inner.api_key {
                rb = rb.header(header::AUTHORIZATION, k.clone());
            }
            // Baggage stays inside: it is the caller's own key-value data (customer ids,
            // feature flags) and partners are third parties; the trace ids are not data.
            if let Some(t) = &trace {
                rb = rb.header("traceparent", &t.traceparent);
                if let Some(v) = &t.tracestate {
                    rb = rb.header("tracestate", v);
                }
            }
            rb
        };
        // Every send takes its own slot: a retried send (and a timed-out one, which may
        // have reached the upstream) counts against its limit like any other.
        let mut backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(s.transport_retries)
            .build();
        let mut retried = None;
        let mut retries = 0u32;
        let resp = loop {
            if let Err(e) = self.reserve(limit, retried.is_some()).await {
                if retried.is_some() {
                    permit.failure().await;
                } else if matches!(e, JobError::Defer { .. }) {
                    tally.deferred += 1;
                }
                return Err(e);
            }
            let start = Instant::now();
            let res = request().send().await;
            let status = match &res {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => "timeout".to_owned(),
                Err(_) => "transport".to_owned(),
            };
            let elapsed = start.elapsed();
            metrics::request(name, endpoint, status, elapsed.as_secs_f64());
            tally.requests += 1;
            tally.latency_ms = tally
                .latency_ms
                .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            match &res {
                Ok(r) if r.status().as_u16() == 429 => tally.too_many += 1,
                Ok(r) if r.status().as_u16() == 408 || r.status().is_server_error() => tally.failed += 1,
                Ok(_) => {}
                Err(_) => tally.failed += 1,
            }
            match res {
                Ok(r) => break r,
                Err(e) => match backoff.next().filter(|_| transient(&e)) {
                    Some(d) => {
                        tracing::debug!(integration = name, endpoint, "transient error, retrying in {d:?}: {e}");
                        retried = Some(e);
                        retries += 1;
                        span.record("retries", retries);
                        tokio::time::sleep(d).await;
                    }
                    None => {
                        permit.failure().await;
                        // reqwest's message names the URL, never headers, so no credential leaks.
                        let what = if e.is_timeout() { "timed out" } else { "transport error" };
                        return Err(JobError::retryable(format!(
                            "{name} {endpoint}: {what}: {}",
                            e.without_url()
                        )));
                    }
                },
            }
        };
        let status = resp.status();
        span.record("http.response.status_code", status.as_u16());
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                permit.failure().await;
                return Err(JobError::retryable(format!(
                    "{name} {endpoint}: reading the response failed: {}",
                    e.without_url()
                )));
            }
        };
        let code = status.as_u16();
        if status.is_success() || self.accept.contains(&status.as_u16()) {
            permit.success().await;
            let body = if body.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&body)
                    .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()))
            };
            return Ok(Reply { status: code, body });
        }
        let pushed_back = code == 429 || (code == 503 && retry_after.is_some());
        if pushed_back {
            if code == 503 {
                permit.failure().await;
            } else {
                drop(permit);
            }
            let after = retry_after.unwrap_or(s.default_retry_after);
            metrics::rate_limited(name, endpoint, "upstream");
            span.record("deferred_by", "upstream");
            match inner
                .limiter
                .push_back(endpoint, after, code == 429, limit, s.guard, s.recover_after)
                .await
            {
                Ok(rate) => effective_rate(name, endpoint, limit, rate),
                Err(e) => tracing::warn!(integration = name, endpoint, "could not slow the shared limiter: {e}"),
            }
            return Err(JobError::defer(
                after,
                format!("{name} {endpoint}: HTTP {code}, upstream asked to retry after {after:?}"),
            ));
        }
        let message = format!("{name} {endpoint}: HTTP {code}: {}", snippet(&body));
        if code == 408 || status.is_server_error() {
            permit.failure().await;
            return Err(JobError::Retryable { message, after: None });
        }
        // The upstream answered deliberately: it is healthy.
        permit.success().await;
        if code == 409 {
            return Err(JobError::Retryable { message, after: None });
        }
        Err(JobError::Permanent(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn a_reader_sees_the_adaptive_rate_with_its_due_recovery_steps() {
        let l = config::LimitConfig {
            endpoint: "get_order".into(),
            rate: 120,
            per: Duration::from_secs(60),
            burst: None,
        };
        let recover = Duration::from_secs(5);
        assert_eq!(
            limiter::effective_at(&l, recover, None, 1_000),
            120,
            "absent: the limit"
        );
        // A recovery step every 60 s (at least the limit's window), a tenth of the rate (12) each.
        assert_eq!(limiter::effective_at(&l, recover, Some((60, 0)), 59_999), 60);
        assert_eq!(limiter::effective_at(&l, recover, Some((60, 0)), 120_000), 84);
        assert_eq!(limiter::effective_at(&l, recover, Some((60, 0)), 3_600_000), 120);
    }

    #[test]
    fn limits_are_windows_widened_by_the_guard() {
        let l = config::LimitConfig {
            endpoint: "place_order".into(),
            rate: 2,
            per: Duration::from_secs(1),
            burst: None,
        };
        assert_eq!(limiter::windows(&l, Duration::ZERO), (2, 1000, 2, 1000));
        assert_eq!(limiter::windows(&l, Duration::from_millis(25)), (2, 1025, 2, 1025));
        let l = config::LimitConfig { burst: Some(1), ..l };
        assert_eq!(limiter::windows(&l, Duration::from_millis(25)), (2, 1025, 1, 525));
        let catalog = config::LimitConfig {
            endpoint: "catalog".into(),
            rate: 2,
            per: Duration::from_secs(3600),
            burst: None,
        };
        // A call every 30 minutes fits 2/hour: the window is an hour plus the guard.
        assert_eq!(limiter::windows(&catalog, Duration::from_millis(25)).1, 3_600_025);
    }
}
