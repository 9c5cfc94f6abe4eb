//! Layered configuration: `config/default.toml`, `config/<env>.toml`, then environment
//! variables. Owns the typed config structs and the errors that name file and key.
use culm_core::{RetryPolicy, Tier};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

/// The built-in defaults, used when no `config/default.toml` is found on disk.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

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
    /// The admin HTTP API and metrics endpoint.
    pub admin: AdminConfig,
    /// The scheduler (issue 4).
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Settings every integration client inherits (issue 5).
    pub integration_defaults: culm_jobs::http::config::IntegrationDefaults,
    /// Third-party integrations by name (issue 5).
    #[serde(default)]
    pub integrations: BTreeMap<String, culm_jobs::http::config::IntegrationConfig>,
    /// The local integration sandbox (`culm sandbox`, `culm run --sandbox`).
    #[serde(default)]
    pub sandbox: SandboxConfig,
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
            listen: "127.0.0.1:8900".to_owned(),
            latency_ms: 20,
            fail_rate: 0.0,
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
    /// What the token may do.
    pub scopes: Vec<Scope>,
}

/// What a bearer token may do. `admin` includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Enqueue jobs.
    Enqueue,
    /// Read jobs, queues, dead letters and schedules.
    Read,
    /// Steer: pause and resume queues, retry and purge dead letters, trigger schedules.
    Admin,
}

/// `[scheduler]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Directory of `*.toml` schedule files; empty: the catalog embedded in the binary.
    #[serde(default)]
    pub dir: String,
    /// How long a tick's claim is kept (replicas whose clocks or timers lag by more than
    /// this are still stopped by the per-schedule last-tick guard).
    #[serde(with = "humantime_serde", default = "default_claim_ttl")]
    pub claim_ttl: Duration,
}

fn default_claim_ttl() -> Duration {
    Duration::from_secs(6 * 3600)
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            claim_ttl: default_claim_ttl(),
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
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Topology: one server, a Redis Cluster, or a Sentinel-managed master.
    #[serde(default)]
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

/// `redis.mode`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a managed endpoint that hides failover).
    #[default]
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

/// `[database]` (issue 6): PostgreSQL for the ledger, the dead-letter archive and the outbox.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL; empty when PostgreSQL is not used.
    pub url: String,
    /// Connections per process.
    #[serde(default = "db_defaults::pool_size")]
    pub pool_size: u32,
    /// Server-side `statement_timeout` of every culm connection.
    #[serde(with = "humantime_serde", default = "db_defaults::statement_timeout")]
    pub statement_timeout: Duration,
    /// How long connecting (or waiting for a pooled connection) may take.
    #[serde(with = "humantime_serde", default = "db_defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// `culm run` applies pending migrations at start (otherwise it refuses to start
    /// until `culm migrate` has run).
    #[serde(default = "db_defaults::yes")]
    pub migrate_on_start: bool,
    /// The job ledger.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The outbox relay.
    #[serde(default)]
    pub outbox: OutboxConfig,
}

/// `[database.ledger]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Record every attempt (when a database is configured).
    #[serde(default = "db_defaults::yes")]
    pub enabled: bool,
    /// Rows buffered in memory between the workers and the writer.
    #[serde(default = "db_defaults::buffer")]
    pub buffer_size: usize,
    /// Flush at least this often.
    #[serde(with = "humantime_serde", default = "db_defaults::flush_interval")]
    pub flush_interval: Duration,
    /// Flush as soon as this many rows are buffered (also the largest insert).
    #[serde(default = "db_defaults::flush_batch")]
    pub flush_batch: usize,
    /// What happens to rows PostgreSQL cannot take: `redis` (spill to a Redis stream and
    /// replay on recovery) or `memory` (keep up to `buffer_size`, then drop and count).
    #[serde(default)]
    pub spill: SpillPolicy,
    /// Ledger rows older than this are deleted (in batches); `0s` keeps them forever.
    #[serde(with = "humantime_serde", default = "db_defaults::retention")]
    pub retention: Duration,
    /// Archived dead jobs older than this are deleted; `0s` keeps them forever.
    #[serde(with = "humantime_serde", default = "db_defaults::dead_retention")]
    pub dead_retention: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde", default = "db_defaults::housekeeping_interval")]
    pub housekeeping_interval: Duration,
}

/// Where ledger rows go while PostgreSQL is down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpillPolicy {
    /// A Redis stream, replayed into PostgreSQL on recovery.
    #[default]
    Redis,
    /// Memory only, up to `buffer_size`; beyond that rows are dropped and counted.
    Memory,
}

/// `[database.outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Relay committed outbox rows to Redis from this process (`culm run`).
    #[serde(default = "db_defaults::yes")]
    pub enabled: bool,
    /// Rows moved per transaction.
    #[serde(default = "db_defaults::outbox_batch")]
    pub batch: usize,
    /// Poll this often when no NOTIFY arrives (the fallback).
    #[serde(with = "humantime_serde", default = "db_defaults::outbox_poll")]
    pub poll_interval: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            buffer_size: db_defaults::buffer(),
            flush_interval: db_defaults::flush_interval(),
            flush_batch: db_defaults::flush_batch(),
            spill: SpillPolicy::Redis,
            retention: db_defaults::retention(),
            dead_retention: db_defaults::dead_retention(),
            housekeeping_interval: db_defaults::housekeeping_interval(),
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch: db_defaults::outbox_batch(),
            poll_interval: db_defaults::outbox_poll(),
        }
    }
}

mod db_defaults {
    use std::time::Duration;
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn pool_size() -> u32 {
        8
    }
    pub(super) fn statement_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub(super) fn buffer() -> usize {
        65_536
    }
    pub(super) fn flush_interval() -> Duration {
        Duration::from_millis(200)
    }
    pub(super) fn flush_batch() -> usize {
        1000
    }
    pub(super) fn retention() -> Duration {
        Duration::from_secs(90 * 86_400)
    }
    pub(super) fn dead_retention() -> Duration {
        Duration::from_secs(400 * 86_400)
    }
    pub(super) fn housekeeping_interval() -> Duration {
        Duration::from_secs(3600)
    }
    pub(super) fn outbox_batch() -> usize {
        500
    }
    pub(super) fn outbox_poll() -> Duration {
        Duration::from_secs(1)
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
    /// Idempotency key lifetime.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// Finished job ids remembered per queue.
    pub done_retention: u64,
    /// Maximum acknowledgements per round trip.
    pub ack_batch_max: usize,
}

/// A retry policy as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total attempts.
    pub max_attempts: u32,
    /// First backoff.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Largest backoff.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
}

impl From<RetryConfig> for RetryPolicy {
    fn from(r: RetryConfig) -> Self {
        RetryPolicy {
            max_attempts: r.max_attempts,
            backoff_base: r.backoff_base,
            backoff_cap: r.backoff_cap,
        }
    }
}

/// `[queue_defaults]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDefaults {
    /// Job timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retry policy.
    pub retry: RetryConfig,
}

/// `[queues.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Priority tier.
    pub tier: Tier,
    /// Worker pool size (jobs run at once per process).
    pub concurrency: u32,
    /// Job timeout (default: `queue_defaults.timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Retry policy (default: `queue_defaults.retry`).
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// What the queue carries.
    #[serde(default)]
    pub description: String,
}

/// A queue with every default resolved.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Queue name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// Pool size.
    pub concurrency: u32,
    /// Job timeout.
    pub timeout: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Description.
    pub description: String,
}

impl Config {
    /// Every declared queue with defaults applied, by name.
    pub fn queue_settings(&self) -> BTreeMap<String, QueueSettings> {
        self.queues
            .iter()
            .map(|(name, q)| {
                let s = QueueSettings {
                    name: name.clone(),
                    tier: q.tier,
                    concurrency: q.concurrency,
                    timeout: q.timeout.unwrap_or(self.queue_defaults.timeout),
                    retry: q.retry.unwrap_or(self.queue_defaults.retry).into(),
                    description: q.description.clone(),
                };
                (name.clone(), s)
            })
            .collect()
    }

    /// The built-in defaults alone (tests start from these and adjust).
    pub fn defaults() -> Result<Config, ConfigError> {
        Loader::new(None, None).load_from(std::iter::empty())
    }
}

/// A configuration problem, naming where the value came from and its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("{path}: invalid TOML: {message}")]
    Syntax {
        /// File.
        path: String,
        /// Parser message, with line and column.
        message: String,
    },
    /// A key has a wrong, unknown or impossible value.
    #[error("{origin}: key `{key}`: {message}")]
    Key {
        /// File or environment variable that set the key.
        origin: String,
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The environment file asked for does not exist.
    #[error("environment `{env}` selected but {path} does not exist")]
    MissingEnv {
        /// Environment name.
        env: String,
        /// Expected file.
        path: String,
    },
}

/// Loads and validates configuration from a directory, an environment name and env vars.
#[derive(Debug, Clone)]
pub struct Loader {
    dir: Option<PathBuf>,
    env: Option<String>,
}

/// Merged TOML plus, for each leaf key, the layer that set it.
struct Layered {
    root: toml::Table,
    origins: BTreeMap<String, String>,
}

impl Layered {
    fn merge(&mut self, table: toml::Table, origin: &str) {
        merge_into(&mut self.root, table, "", origin, &mut self.origins);
    }

    /// The layer that set `key` or, failing that, its nearest ancestor.
    fn origin_of(&self, key: &str) -> String {
        let mut k = key;
        loop {
            if let Some(o) = self.origins.get(k) {
                return o.clone();
            }
            // A table set by a layer is recorded under its child keys; use any of them.
            if let Some((_, o)) = self
                .origins
                .range(format!("{k}.")..)
                .next()
                .filter(|(p, _)| p.starts_with(&format!("{k}.")))
            {
                return o.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return "configuration".to_owned(),
            }
        }
    }
}

fn merge_into(
    dst: &mut toml::Table,
    src: toml::Table,
    prefix: &str,
    origin: &str,
    origins: &mut BTreeMap<String, String>,
) {
    for (k, v) in src {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge_into(d, s, &path, origin, origins),
            (_, v) => {
                record_origins(&v, &path, origin, origins);
                dst.insert(k, v);
            }
        }
    }
}

fn record_origins(v: &toml::Value, path: &str, origin: &str, origins: &mut BTreeMap<String, String>) {
    origins.insert(path.to_owned(), origin.to_owned());
    if let toml::Value::Table(t) = v {
        for (k, child) in t {
            record_origins(child, &format!("{path}.{k}"), origin, origins);
        }
    }
}

/// Parses an environment variable's value as a TOML value (numbers, booleans, inline
/// tables), falling back to a plain string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn nest(path: &[String], value: toml::Value) -> toml::Table {
    let mut table = toml::Table::new();
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            table.insert(first.clone(), toml::Value::Table(nest(rest, value)));
        }
    }
    table
}

impl Loader {
    /// `dir`: the config directory (default `./config` when it exists); `env`: the
    /// environment file to layer on top of the defaults.
    pub fn new(dir: Option<PathBuf>, env: Option<String>) -> Self {
        Self { dir, env }
    }

    fn read(path: &Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, name: &str) -> Result<toml::Table, ConfigError> {
        toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::Syntax {
            path: name.to_owned(),
            message: e.to_string().trim().to_owned(),
        })
    }

    /// Loads from the process environment.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.load_from(std::env::vars())
    }

    /// Loads with `vars` as the environment (tests pass their own).
    pub fn load_from(&self, vars: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut layered = Layered {
            root: toml::Table::new(),
            origins: BTreeMap::new(),
        };
        let dir = self.dir.clone().or_else(|| {
            let d = PathBuf::from("config");
            d.join("default.toml").exists().then_some(d)
        });
        match dir.as_ref().map(|d| d.join("default.toml")).filter(|p| p.exists()) {
            Some(p) => layered.merge(Self::read(&p)?, &p.display().to_string()),
            None => layered.merge(
                Self::parse(DEFAULT_TOML, "config/default.toml (built in)")?,
                "config/default.toml (built in)",
            ),
        }
        if let Some(env) = self.env.as_deref().filter(|e| !e.is_empty()) {
            let d = dir.clone().unwrap_or_else(|| PathBuf::from("config"));
            let p = d.join(format!("{env}.toml"));
            if !p.exists() {
                return Err(ConfigError::MissingEnv {
                    env: env.to_owned(),
                    path: p.display().to_string(),
                });
            }
            layered.merge(Self::read(&p)?, &p.display().to_string());
        }
        let mut vars: Vec<(String, String)> = vars.into_iter().collect();
        vars.sort();
        for (name, value) in vars {
            let path: Vec<String> = match name.as_str() {
                "CULM_REDIS_URL" => vec!["redis".into(), "url".into()],
                "CULM_DATABASE_URL" => vec!["database".into(), "url".into()],
                n => match n.strip_prefix("CULM__") {
                    Some(rest) if !rest.is_empty() => rest.split("__").map(|s| s.to_ascii_lowercase()).collect(),
                    _ => continue,
                },
            };
            // URLs are always strings, even if they happen to parse as something else.
            let v = if name.ends_with("_URL") || path.last().is_some_and(|l| l == "url") {
                toml::Value::String(value)
            } else {
                env_value(&value)
            };
            layered.merge(nest(&path, v), &format!("environment variable {name}"));
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(layered.root.clone())).map_err(|e| {
                let mut key = e.path().to_string();
                let message = e.inner().message().trim().to_owned();
                if let Some(field) = message
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    key = if key == "." {
                        field.to_owned()
                    } else {
                        format!("{key}.{field}")
                    };
                } else if let Some(field) = message
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    key = if key == "." {
                        field.to_owned()
                    } else {
                        format!("{key}.{field}")
                    };
                }
                ConfigError::Key {
                    origin: layered.origin_of(&key),
                    key,
                    message,
                }
            })?;
        validate(&config).map_err(|(key, message)| ConfigError::Key {
            origin: layered.origin_of(&key),
            key,
            message,
        })?;
        Ok(config)
    }
}

/// Rejects impossible values; returns the offending key and why.
fn validate(c: &Config) -> Result<(), (String, String)> {
    let w = &c.worker;
    if w.lease_ttl < Duration::from_secs(1) {
        return Err(("worker.lease_ttl".into(), "must be at least 1s".into()));
    }
    if w.lease_extend_interval.is_zero() || w.lease_extend_interval >= w.lease_ttl {
        return Err((
            "worker.lease_extend_interval".into(),
            "must be above zero and below worker.lease_ttl".into(),
        ));
    }
    for (key, d) in [
        ("worker.reap_interval", w.reap_interval),
        ("worker.idle_poll_interval", w.idle_poll_interval),
    ] {
        if d.is_zero() {
            return Err((key.into(), "must be above zero".into()));
        }
    }
    if w.ack_batch_max == 0 {
        return Err(("worker.ack_batch_max".into(), "must be at least 1".into()));
    }
    if c.redis.key_prefix.is_empty() || c.redis.key_prefix.contains(['{', '}', ' ']) {
        return Err((
            "redis.key_prefix".into(),
            "must be non-empty without braces or spaces".into(),
        ));
    }
    if c.redis.mode == RedisMode::Sentinel && (c.redis.sentinel_master.is_empty() || c.redis.sentinel_nodes.is_empty())
    {
        return Err((
            "redis.sentinel_master".into(),
            "mode = \"sentinel\" needs redis.sentinel_master and at least one redis.sentinel_nodes entry".into(),
        ));
    }
    if c.admin.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(("admin.listen".into(), "must be an address like 127.0.0.1:8080".into()));
    }
    if !c.admin.metrics_listen.is_empty() && c.admin.metrics_listen.parse::<std::net::SocketAddr>().is_err() {
        return Err((
            "admin.metrics_listen".into(),
            "must be empty or an address like 127.0.0.1:9090".into(),
        ));
    }
    if c.admin.batch_max == 0 || c.admin.max_body_bytes < 1024 {
        return Err((
            "admin.batch_max".into(),
            "batch_max must be at least 1 and max_body_bytes at least 1024".into(),
        ));
    }
    if c.admin.gauge_interval.is_zero() {
        return Err(("admin.gauge_interval".into(), "must be above zero".into()));
    }
    for (i, t) in c.admin.tokens.iter().enumerate() {
        if t.env.is_empty() || t.scopes.is_empty() {
            return Err((
                format!("admin.tokens[{i}]"),
                "needs `env` (the variable holding the secret) and at least one scope".into(),
            ));
        }
    }
    if c.queues.is_empty() {
        return Err(("queues".into(), "declare at least one queue".into()));
    }
    validate_database(&c.database)?;
    check_retry("queue_defaults.retry", &c.queue_defaults.retry)?;
    culm_jobs::http::config::validate(&c.integration_defaults, &c.integrations)?;
    if c.scheduler.claim_ttl < Duration::from_secs(60) {
        return Err(("scheduler.claim_ttl".into(), "must be at least 1m".into()));
    }
    for (name, q) in &c.queues {
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        {
            return Err((format!("queues.{name}"), "queue names use only a-z, 0-9 and _".into()));
        }
        if q.concurrency == 0 || q.concurrency > 10_000 {
            return Err((
                format!("queues.{name}.concurrency"),
                "must be between 1 and 10000".into(),
            ));
        }
        if q.timeout.is_some_and(|t| t.is_zero()) {
            return Err((format!("queues.{name}.timeout"), "must be above zero".into()));
        }
        if let Some(r) = &q.retry {
            check_retry(&format!("queues.{name}.retry"), r)?;
        }
    }
    Ok(())
}

/// `[database]` (issue 6).
fn validate_database(d: &DatabaseConfig) -> Result<(), (String, String)> {
    if d.enabled() && !(d.url.starts_with("postgres://") || d.url.starts_with("postgresql://")) {
        return Err(("database.url".into(), "must be a postgres:// URL or empty".into()));
    }
    // Retention holds one connection for its advisory lock while deleting on another.
    if d.pool_size < 2 {
        return Err(("database.pool_size".into(), "must be at least 2".into()));
    }
    for (key, v) in [
        ("database.statement_timeout", d.statement_timeout),
        ("database.connect_timeout", d.connect_timeout),
        ("database.ledger.flush_interval", d.ledger.flush_interval),
        ("database.ledger.housekeeping_interval", d.ledger.housekeeping_interval),
        ("database.outbox.poll_interval", d.outbox.poll_interval),
    ] {
        if v.is_zero() {
            return Err((key.into(), "must be above zero".into()));
        }
    }
    if d.ledger.flush_batch == 0 || d.ledger.buffer_size < d.ledger.flush_batch {
        return Err((
            "database.ledger.buffer_size".into(),
            "flush_batch must be at least 1 and buffer_size at least flush_batch".into(),
        ));
    }
    if d.outbox.batch == 0 {
        return Err(("database.outbox.batch".into(), "must be at least 1".into()));
    }
    Ok(())
}

fn check_retry(key: &str, r: &RetryConfig) -> Result<(), (String, String)> {
    if r.max_attempts == 0 {
        return Err((format!("{key}.max_attempts"), "must be at least 1".into()));
    }
    if r.backoff_cap < r.backoff_base {
        return Err((format!("{key}.backoff_cap"), "must not be below backoff_base".into()));
    }
    Ok(())
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
            } else {
                format!("{}***{}", &url[..s + 3], &url[at..])
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_load_and_env_overrides_apply() {
        let c = Loader::new(None, None)
            .load_from(vars(&[
                ("CULM__QUEUES__GALILEO__CONCURRENCY", "3"),
                ("CULM_REDIS_URL", "redis://x:1"),
            ]))
            .expect("defaults load");
        assert_eq!(c.queues["galileo"].concurrency, 3);
        assert_eq!(c.redis.url, "redis://x:1");
        assert_eq!(c.queues["galileo"].tier, Tier::Critical);
    }

    #[test]
    fn bad_values_name_origin_and_key() {
        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__WORKER__LEASE_TTL", "soon")]))
            .expect_err("bad duration");
        let s = e.to_string();
        assert!(
            s.contains("CULM__WORKER__LEASE_TTL") && s.contains("worker.lease_ttl"),
            "{s}"
        );

        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__WORKER__NOPE", "1")]))
            .expect_err("unknown key");
        assert!(e.to_string().contains("worker.nope"), "{e}");

        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__QUEUES__DING__CONCURRENCY", "0")]))
            .expect_err("impossible value");
        assert!(e.to_string().contains("queues.ding.concurrency"), "{e}");
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("culm-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("default.toml"), DEFAULT_TOML).expect("write");
        std::fs::write(dir.join("staging.toml"), "[queues.galileo]\ntier = \"platinum\"\n").expect("write");
        let e = Loader::new(Some(dir.clone()), Some("staging".into()))
            .load_from(vec![])
            .expect_err("bad tier");
        let s = e.to_string();
        assert!(s.contains("staging.toml") && s.contains("queues.galileo.tier"), "{s}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://:hunter2@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("postgres://app:pw@db/culm"), "postgres://app:***@db/culm");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
