//! The typed configuration: one struct per TOML table, each rejecting unknown keys.
//!
//! Every default value is written once, in `config/default.toml`. A key this file lets
//! an operator's own `default.toml` omit (one written for an older culm) takes its value
//! from the built-in copy through `defaults::builtin`, never from a literal here.
use super::{
    defaults::{builtin, builtin_duration},
    redact_url,
};
use culm_core::{Backoff, Registry, RetryPolicy, Tier};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Redis connection and key namespace.
    pub redis: RedisConfig,
    /// PostgreSQL connection (optional).
    pub database: DatabaseConfig,
    /// Worker-process settings shared by every pool.
    pub worker: WorkerConfig,
    /// Defaults applied to queues that do not set their own.
    pub queue_defaults: QueueDefaults,
    /// Declared queues, by name.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Job type → queue overrides.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    /// Per job type retry policy and timeout, over the job type's own and its queue's.
    #[serde(default)]
    pub job_types: BTreeMap<String, JobTypeConfig>,
    /// The admin HTTP API and metrics endpoint.
    pub admin: AdminConfig,
    /// Where schedule files come from and how long a tick's claim lasts.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Settings every integration client inherits.
    pub integration_defaults: culm_jobs::http::config::IntegrationDefaults,
    /// Third-party integrations by name; each may override any key of
    /// `integration_defaults`.
    #[serde(default)]
    pub integrations: BTreeMap<String, culm_jobs::http::config::IntegrationConfig>,
    /// The local integration sandbox (`culm sandbox`, `culm run --sandbox`).
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Trace export (OTLP) and its sampling.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// The samplers `telemetry.sampler` and `OTEL_TRACES_SAMPLER` may name.
pub const TRACE_SAMPLERS: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// `[telemetry]`: span export over OTLP/HTTP. The standard `OTEL_*` variables override
/// these keys (`otel::TraceSettings::resolve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export spans.
    pub traces: bool,
    /// OTLP/HTTP base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// Sampler, named as `OTEL_TRACES_SAMPLER` names them.
    pub sampler: String,
    /// The ratio of the `traceidratio` samplers, 0.0 to 1.0.
    pub sampler_ratio: f64,
    /// Finished spans waiting for export; more are dropped (and counted).
    pub queue_size: usize,
    /// Spans per export request.
    pub batch_size: usize,
    /// Longest a finished span waits before its batch is sent.
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
    /// Longest one export request may take.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            traces: builtin("telemetry.traces"),
            endpoint: builtin("telemetry.endpoint"),
            service_name: builtin("telemetry.service_name"),
            sampler: builtin("telemetry.sampler"),
            sampler_ratio: builtin("telemetry.sampler_ratio"),
            queue_size: builtin("telemetry.queue_size"),
            batch_size: builtin("telemetry.batch_size"),
            export_interval: builtin_duration("telemetry.export_interval"),
            export_timeout: builtin_duration("telemetry.export_timeout"),
        }
    }
}

/// `[sandbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Listen address; the default integration base URLs point here.
    pub listen: String,
    /// Typical answer latency in milliseconds (each answer takes 0.5x to 1.5x this).
    pub latency_ms: u64,
    /// Fraction of requests answered 503 with `Retry-After: 1`, from 0.0 to 1.0.
    pub fail_rate: f64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: builtin("sandbox.listen"),
            latency_ms: builtin("sandbox.latency_ms"),
            fail_rate: builtin("sandbox.fail_rate"),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether `culm run` serves the admin API.
    pub enabled: bool,
    /// Listen address of the admin API.
    pub listen: String,
    /// Separate listen address for `/metrics`; empty serves it on `listen`.
    pub metrics_listen: String,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Most jobs accepted by one `POST /v1/jobs/batch`.
    pub batch_max: usize,
    /// How often queue-depth gauges are refreshed (never computed during a scrape).
    #[serde(with = "humantime_serde")]
    pub gauge_interval: Duration,
    /// How long a dashboard login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Bearer tokens; each secret is read from the environment variable `env`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One `[[admin.tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and audits (never the secret).
    pub name: String,
    /// Environment variable holding the secret.
    pub env: String,
    /// The operations the token unlocks; `admin` includes `read`.
    pub scopes: Vec<Scope>,
}

/// What a bearer token may do. `admin` includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /v1/jobs` and `/v1/jobs/batch`.
    Enqueue,
    /// Read jobs, queues, dead letters and schedules.
    Read,
    /// Steer: pause and resume queues, retry and purge dead letters, trigger schedules.
    Admin,
}

/// `[scheduler]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Directory of `*.toml` schedule files; empty: the catalog embedded in the binary.
    pub dir: String,
    /// How long a tick's claim is kept (replicas whose clocks or timers lag by more than
    /// this are still stopped by the per-schedule last-tick guard).
    #[serde(with = "humantime_serde")]
    pub claim_ttl: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            dir: builtin("scheduler.dir"),
            claim_ttl: builtin_duration("scheduler.claim_ttl"),
        }
    }
}

/// `[redis]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Connection URL; may carry a password, so it is never printed whole.
    pub url: String,
    /// Prefix of every key culm writes.
    pub key_prefix: String,
    /// How long connecting to Redis may take before start-up fails.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Topology: one server, a Redis Cluster, or a Sentinel-managed master.
    #[serde(default = "redis_mode")]
    pub mode: RedisMode,
    /// Cluster seed nodes (`redis://host:port`); empty: `url` is the only seed. Credentials
    /// in `url` apply to every node.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Sentinel: the monitored master's name.
    #[serde(default)]
    pub sentinel_master: String,
    /// Sentinel: the sentinels (`redis://host:26379`). Credentials and db in `url` apply
    /// to the master.
    #[serde(default)]
    pub sentinel_nodes: Vec<String>,
}

fn redis_mode() -> RedisMode {
    builtin("redis.mode")
}

/// `redis.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a managed endpoint that hides failover).
    Standalone,
    /// Redis Cluster: every queue's keys share one hash slot.
    Cluster,
    /// A master found through Redis Sentinel, re-resolved after a failover.
    Sentinel,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("mode", &self.mode)
            .field(
                "cluster_nodes",
                &self.cluster_nodes.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("sentinel_master", &self.sentinel_master)
            .field(
                "sentinel_nodes",
                &self.sentinel_nodes.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// `[database]`: PostgreSQL for the ledger, the dead-letter archive and the outbox.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL; empty when PostgreSQL is not used.
    pub url: String,
    /// Connections per process.
    #[serde(default = "database::pool_size")]
    pub pool_size: u32,
    /// Server-side `statement_timeout` of every culm connection.
    #[serde(with = "humantime_serde", default = "database::statement_timeout")]
    pub statement_timeout: Duration,
    /// How long connecting (or waiting for a pooled connection) may take.
    #[serde(with = "humantime_serde", default = "database::connect_timeout")]
    pub connect_timeout: Duration,
    /// `culm run` applies pending migrations at start (otherwise it refuses to start
    /// until `culm migrate` has run).
    #[serde(default = "database::migrate_on_start")]
    pub migrate_on_start: bool,
    /// The job ledger: one row per attempt.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The relay of committed `culm_outbox` rows to Redis.
    #[serde(default)]
    pub outbox: OutboxConfig,
}

/// The `[database]` keys an older `default.toml` may lack (`url` is required).
mod database {
    use super::{builtin, builtin_duration};
    use std::time::Duration;

    pub(super) fn pool_size() -> u32 {
        builtin("database.pool_size")
    }
    pub(super) fn statement_timeout() -> Duration {
        builtin_duration("database.statement_timeout")
    }
    pub(super) fn connect_timeout() -> Duration {
        builtin_duration("database.connect_timeout")
    }
    pub(super) fn migrate_on_start() -> bool {
        builtin("database.migrate_on_start")
    }
}

/// `[database.ledger]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Record every attempt (when a database is configured).
    pub enabled: bool,
    /// Rows buffered in memory between the workers and the writer.
    pub buffer_size: usize,
    /// The writer takes the rows handed over and writes them at least this often.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Write as soon as this many rows are handed over (also the largest insert).
    pub flush_batch: usize,
    /// What happens to rows PostgreSQL cannot take: `redis` (spill to a Redis stream and
    /// replay on recovery) or `memory` (keep up to `buffer_size`, then drop and count).
    pub spill: SpillPolicy,
    /// Most rows the spill stream holds (and most entries its `:unreadable` stream holds);
    /// beyond it the oldest are trimmed, counted and logged. Bounds Redis memory in an outage.
    pub spill_max_rows: u64,
    /// Ledger rows older than this are deleted (in batches); `0s` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Archived dead jobs older than this are deleted; `0s` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub dead_retention: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub housekeeping_interval: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: builtin("database.ledger.enabled"),
            buffer_size: builtin("database.ledger.buffer_size"),
            flush_interval: builtin_duration("database.ledger.flush_interval"),
            flush_batch: builtin("database.ledger.flush_batch"),
            spill: builtin("database.ledger.spill"),
            spill_max_rows: builtin("database.ledger.spill_max_rows"),
            retention: builtin_duration("database.ledger.retention"),
            dead_retention: builtin_duration("database.ledger.dead_retention"),
            housekeeping_interval: builtin_duration("database.ledger.housekeeping_interval"),
        }
    }
}

/// Where ledger rows go while PostgreSQL is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpillPolicy {
    /// A Redis stream, replayed into PostgreSQL on recovery.
    Redis,
    /// Memory only, up to `buffer_size`; beyond that rows are dropped and counted.
    Memory,
}

/// `[database.outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Relay committed outbox rows to Redis from this process (`culm run`).
    pub enabled: bool,
    /// Rows moved per transaction.
    pub batch: usize,
    /// Poll this often when no NOTIFY arrives (the fallback).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            enabled: builtin("database.outbox.enabled"),
            batch: builtin("database.outbox.batch"),
            poll_interval: builtin_duration("database.outbox.poll_interval"),
        }
    }
}

impl DatabaseConfig {
    /// Whether PostgreSQL is configured.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// How long a fetched job is leased before another worker may take it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often running jobs' leases are extended.
    #[serde(with = "humantime_serde")]
    pub lease_extend_interval: Duration,
    /// How often expired leases are returned to their queue.
    #[serde(with = "humantime_serde")]
    pub reap_interval: Duration,
    /// Fallback poll of an idle queue (pushes wake workers directly).
    #[serde(with = "humantime_serde")]
    pub idle_poll_interval: Duration,
    /// How long in-flight jobs may run after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a repeated idempotency key returns the first job instead of a new one.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// Finished job ids remembered per queue.
    pub done_retention: u64,
    /// How long Redis keeps a dead-lettered job; older ones are trimmed by the reaper.
    #[serde(with = "humantime_serde")]
    pub dead_retention: Duration,
    /// How long a completed tracked batch's keys (counters, members) stay in Redis.
    #[serde(with = "humantime_serde")]
    pub batch_retention: Duration,
    /// Maximum acknowledgements per round trip.
    pub ack_batch_max: usize,
    /// Largest handler result kept, in bytes of JSON; a larger one is dropped and logged.
    pub result_max_bytes: usize,
    /// Payloads and results larger than this (bytes of JSON) are stored zstd-compressed;
    /// 0 stores everything as is.
    pub compress_above: usize,
}

/// A retry policy as written in TOML, checked as it is read (the error names the key):
/// `{ max_attempts = 5, backoff_base = "1s", backoff_cap = "10m" }` (exponential, the
/// default `backoff`), `{ backoff = "fixed", max_attempts = 4, delay = "30s" }`, or
/// `{ backoff = "delays", delays = ["1m", "5m", "30m"] }` (`max_attempts` defaults to one
/// more than the delays; a larger one repeats the last delay).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRetry")]
pub struct RetryConfig(pub RetryPolicy);

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BackoffKind {
    #[default]
    Exponential,
    Fixed,
    Delays,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    backoff: BackoffKind,
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    backoff_base: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_cap: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    delay: Option<Duration>,
    delays: Option<Vec<humantime_serde::Serde<Duration>>>,
}

impl TryFrom<RawRetry> for RetryConfig {
    type Error = String;

    fn try_from(r: RawRetry) -> Result<Self, String> {
        let kind = match r.backoff {
            BackoffKind::Exponential => "exponential",
            BackoffKind::Fixed => "fixed",
            BackoffKind::Delays => "delays",
        };
        let unused = |field: &str, set: bool| -> Result<(), String> {
            if set {
                return Err(format!("`{field}` does not apply to backoff = \"{kind}\""));
            }
            Ok(())
        };
        let required = |field: &str| format!("`{field}` is required with backoff = \"{kind}\"");
        let policy = match r.backoff {
            BackoffKind::Exponential => {
                unused("delay", r.delay.is_some())?;
                unused("delays", r.delays.is_some())?;
                let base = r.backoff_base.ok_or_else(|| required("backoff_base"))?;
                let cap = r.backoff_cap.ok_or_else(|| required("backoff_cap"))?;
                if cap < base {
                    return Err("`backoff_cap` must not be below `backoff_base`".into());
                }
                RetryPolicy::exponential(r.max_attempts.ok_or_else(|| required("max_attempts"))?, base, cap)
            }
            BackoffKind::Fixed => {
                unused("backoff_base", r.backoff_base.is_some())?;
                unused("backoff_cap", r.backoff_cap.is_some())?;
                unused("delays", r.delays.is_some())?;
                RetryPolicy::fixed(
                    r.max_attempts.ok_or_else(|| required("max_attempts"))?,
                    r.delay.ok_or_else(|| required("delay"))?,
                )
            }
            BackoffKind::Delays => {
                unused("backoff_base", r.backoff_base.is_some())?;
                unused("backoff_cap", r.backoff_cap.is_some())?;
                unused("delay", r.delay.is_some())?;
                let delays: Vec<Duration> = r
                    .delays
                    .ok_or_else(|| required("delays"))?
                    .into_iter()
                    .map(humantime_serde::Serde::into_inner)
                    .collect();
                if delays.is_empty() {
                    return Err("`delays` must list at least one delay".into());
                }
                let listed = u32::try_from(delays.len()).unwrap_or(u32::MAX).saturating_add(1);
                let max_attempts = r.max_attempts.unwrap_or(listed);
                if max_attempts < listed {
                    return Err(format!(
                        "`delays` lists {} retries but `max_attempts` = {max_attempts} allows {}",
                        delays.len(),
                        max_attempts.saturating_sub(1)
                    ));
                }
                RetryPolicy {
                    max_attempts,
                    backoff: Backoff::Delays(delays.into()),
                }
            }
        };
        if policy.max_attempts == 0 {
            return Err("`max_attempts` must be at least 1".into());
        }
        Ok(RetryConfig(policy))
    }
}

/// `[job_types.<name>]`: what the configuration says about one job type, over what the
/// job type says in code (`Job::RETRY`, `Job::TIMEOUT`) and over its queue's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobTypeConfig {
    /// How long one attempt may run.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How the job type is retried.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
}

/// Where a job type's retry policy or timeout came from, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    /// `[job_types.<name>]` in the configuration.
    JobTypeConfig,
    /// The job type's code (`Job::RETRY`, `Job::TIMEOUT`).
    JobType,
    /// `[queues.<name>]`.
    Queue,
    /// `[queue_defaults]`.
    QueueDefaults,
}

/// The retry policy and timeout one job type runs under in one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPolicy {
    pub retry: RetryPolicy,
    pub retry_source: PolicySource,
    pub timeout: Duration,
    pub timeout_source: PolicySource,
}

/// `[queue_defaults]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDefaults {
    /// How long one attempt may run before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How jobs are retried where neither the queue nor the job type says.
    pub retry: RetryConfig,
    /// How long a done job's type, attempts, enqueue time and result stay readable.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
}

/// `[queues.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Also bounds which job types may run here (`Job::TIERS`).
    pub tier: Tier,
    /// Worker pool size (jobs run at once per process).
    pub concurrency: u32,
    /// Jobs of this queue running at once across every process (none: only each
    /// process's `concurrency` bounds it). Every replica must set the same value.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// How long one attempt may run (default: `queue_defaults.timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Default: `queue_defaults.retry`.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Default: `queue_defaults.result_ttl`.
    #[serde(default, with = "humantime_serde")]
    pub result_ttl: Option<Duration>,
    /// What the queue carries.
    #[serde(default)]
    pub description: String,
}

/// A queue with every default resolved.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub name: String,
    pub tier: Tier,
    /// Jobs run at once per process.
    pub concurrency: u32,
    /// Jobs run at once across every process (the leases in Redis), if capped.
    pub max_in_flight: Option<u32>,
    /// The queue's own retry policy and timeout (for job types that set neither).
    pub policy: JobPolicy,
    /// Job types with a retry policy or timeout of their own (in code or in
    /// `[job_types]`), resolved against this queue; most queues have none.
    pub job_policies: BTreeMap<String, JobPolicy>,
    /// How long a done job's summary and result stay in Redis.
    pub result_ttl: Duration,
    /// Largest result kept, bytes (`worker.result_max_bytes`).
    pub result_max_bytes: usize,
    /// Results larger than this are stored compressed (`worker.compress_above`).
    pub compress_above: usize,
    /// What the queue carries, for `culm queues` and the admin API.
    pub description: String,
}

impl QueueSettings {
    /// The retry policy and timeout of `job` in this queue.
    pub fn policy(&self, job: &str) -> &JobPolicy {
        if self.job_policies.is_empty() {
            return &self.policy;
        }
        self.job_policies.get(job).unwrap_or(&self.policy)
    }
}

impl Config {
    /// Every declared queue with defaults applied, by name, with the retry policies and
    /// timeouts of `registry`'s job types. Most specific first: `[job_types.<name>]`,
    /// then the job type's code, then `[queues.<name>]`, then `[queue_defaults]`.
    pub fn queue_settings(&self, registry: &Registry) -> BTreeMap<String, QueueSettings> {
        self.queues
            .iter()
            .map(|(name, q)| {
                let policy = JobPolicy {
                    retry: q.retry.as_ref().unwrap_or(&self.queue_defaults.retry).0.clone(),
                    retry_source: if q.retry.is_some() {
                        PolicySource::Queue
                    } else {
                        PolicySource::QueueDefaults
                    },
                    timeout: q.timeout.unwrap_or(self.queue_defaults.timeout),
                    timeout_source: if q.timeout.is_some() {
                        PolicySource::Queue
                    } else {
                        PolicySource::QueueDefaults
                    },
                };
                let s = QueueSettings {
                    name: name.clone(),
                    tier: q.tier,
                    concurrency: q.concurrency,
                    max_in_flight: q.max_in_flight,
                    job_policies: self.job_policies(registry, &policy),
                    policy,
                    result_ttl: q.result_ttl.unwrap_or(self.queue_defaults.result_ttl),
                    result_max_bytes: self.worker.result_max_bytes,
                    compress_above: self.worker.compress_above,
                    description: q.description.clone(),
                };
                (name.clone(), s)
            })
            .collect()
    }

    /// The job types that override `queue`'s policy or timeout, resolved against it.
    fn job_policies(&self, registry: &Registry, queue: &JobPolicy) -> BTreeMap<String, JobPolicy> {
        registry
            .iter()
            .filter_map(|spec| {
                let config = self.job_types.get(spec.name);
                let (retry, retry_source) = match (config.and_then(|c| c.retry.as_ref()), &spec.retry) {
                    (Some(r), _) => (r.0.clone(), PolicySource::JobTypeConfig),
                    (None, Some(r)) => (r.clone(), PolicySource::JobType),
                    (None, None) => (queue.retry.clone(), queue.retry_source),
                };
                let (timeout, timeout_source) = match (config.and_then(|c| c.timeout), spec.timeout) {
                    (Some(t), _) => (t, PolicySource::JobTypeConfig),
                    (None, Some(t)) => (t, PolicySource::JobType),
                    (None, None) => (queue.timeout, queue.timeout_source),
                };
                let policy = JobPolicy {
                    retry,
                    retry_source,
                    timeout,
                    timeout_source,
                };
                (policy != *queue).then(|| (spec.name.to_owned(), policy))
            })
            .collect()
    }
}
