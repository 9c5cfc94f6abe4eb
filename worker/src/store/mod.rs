//! culm's Redis storage layer. `Store` owns the connection and the queue settings; the
//! hot path (push, fetch, acknowledge, lease upkeep) is in `queue`, the queries and
//! controls SREs use (stats, dead letters, job status, pause) in `inspect`, the key
//! layout and scripts in `keys`, and the routing check in `routing`.
//!
//! Every operation on a queue is one Lua script over that queue's keys, which share the
//! hash tag `{<prefix>:<queue>}`; [`keys`] names them all, and every script declares
//! every key it touches (see `lua/common.lua`). Scripts are
//! O(batch), never O(queue length). apalis-redis is not used: its fetch overflows Lua's
//! `unpack` past ~8,000 due jobs, its idle workers wait for a 30 s heartbeat, and it
//! acknowledges one task per round trip (ARCHITECTURE.md has the details).
use crate::config::{Config, QueueSettings, RedisMode, redact_url};
use culm_core::{EnqueueError, EnqueueRequest, Enqueued, Enqueuer, Registry, Tier};
use futures::future::BoxFuture;
use redis::Value;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

mod batch;
mod browse;
mod compress;
pub mod conn;
mod history;
pub(crate) use compress::compress;
mod inspect;
mod integrations;
pub mod keys;
mod queue;
mod routing;
mod schedules;
mod workers;
pub use batch::{
    BatchCallback, BatchCallbacks, BatchCreated, BatchError, BatchMember, BatchPage, BatchStatus, MEMBER_PAGE_MAX,
    NewBatch, REFIRE_AFTER_MS, valid_batch_id,
};
pub use browse::{Cursor, JobBody, JobPage, ListJobs, SCAN_BUDGET};
pub use conn::{PubSubSource, RedisConn};
pub use history::{MAX_HISTORY_MINUTES, MinuteStats};
pub use inspect::{Cancelled, DeadFilter, DeadWindow, queue_gauges};
pub use integrations::{BreakerView, EndpointStatus, IntegrationStatus, LimitView};
pub use keys::{ProcessKeys, QueueKeys, SchedulerKeys};
pub(crate) use queue::NewEnvelope;
pub use queue::{
    Ack, AckBatch, AckKind, AckResult, Corrupt, Delivery, Envelope, Expired, Extended, Fetched, Finished,
    RESERVED_KEY_PREFIXES, Reaped, Waited, reserved_idempotency_key,
};
pub use routing::{JobType, RetryView, Routing};
pub use schedules::{FireTick, Fired, ScheduleRecord, ScheduleState, TICK_HISTORY, TickRecord};
pub use workers::{QueueLoad, WorkerInfo};

/// A storage failure. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached at start-up.
    #[error(
        "cannot reach Redis at {url}: {cause}. Start Redis there, or point culm elsewhere with CULM_REDIS_URL (or redis.url in config/<env>.toml)"
    )]
    Unreachable {
        /// Redacted URL.
        url: String,
        /// Why.
        cause: String,
    },
    /// A command failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Stored data did not have the expected shape.
    #[error("corrupt data in {key}: {message}")]
    Corrupt {
        /// Key or id.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// The queue is not declared.
    #[error("unknown queue `{0}`")]
    UnknownQueue(String),
}

impl StoreError {
    /// Whether trying the same command again may work: the connection failed, or the reply
    /// did not arrive in time. A script error, or data of the wrong shape, will fail again.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_cluster_error()
            }
            StoreError::Unreachable { .. } => true,
            StoreError::Corrupt { .. } | StoreError::UnknownQueue(_) => false,
        }
    }
}

/// Counts for one queue.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueueStats {
    /// Queue name.
    pub name: String,
    /// Tier.
    #[schema(value_type = String, example = "critical")]
    pub tier: Tier,
    /// Pool size per process.
    pub concurrency: u32,
    /// Jobs running at once across every process (`max_in_flight`), if capped.
    pub max_in_flight: Option<u32>,
    /// Due, waiting for a worker (every priority).
    pub pending: u64,
    /// `pending` by priority: a fetch takes high, then normal, then low.
    pub pending_by_priority: PendingByPriority,
    /// Waiting for their time (delayed, retry backoff, deferred).
    pub scheduled: u64,
    /// Leased by a worker.
    pub running: u64,
    /// In the dead-letter set.
    pub dead: u64,
    /// Paused by an operator.
    pub paused: bool,
    /// Age of the oldest due job, ms.
    pub oldest_pending_age_ms: Option<i64>,
}

/// A queue's due jobs per priority level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingByPriority {
    pub high: u64,
    pub normal: u64,
    pub low: u64,
}

/// One error in a job's history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorRecord {
    /// Attempt that failed.
    pub attempt: u32,
    /// When, ms (RFC 3339 in JSON).
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: i64,
    /// What happened.
    pub error: String,
}

/// A dead-lettered job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadJob {
    /// Job id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Job type.
    pub job: String,
    /// Payload.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Attempts made.
    pub attempts: u32,
    /// When it died, ms (RFC 3339 in JSON).
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub died_at: i64,
    /// When it was enqueued, ms (RFC 3339 in JSON).
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub enqueued_at: i64,
    /// The last error.
    pub last_error: Option<String>,
    /// Recent errors, oldest first.
    pub errors: Vec<ErrorRecord>,
}

/// Where a job is. These are the states `status.lua` reports; the ledger's outcomes map
/// onto them when Redis no longer holds the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Due and waiting for a worker.
    Pending,
    /// Waiting for its time: delayed, deferred, or backing off before a retry (then
    /// `errors` is not empty).
    Scheduled,
    /// Leased by a worker.
    Running,
    /// Finished successfully.
    Done,
    /// Dead-lettered: failed for good or out of attempts.
    Dead,
    /// Cancelled before it ran (`POST /v1/jobs/{id}/cancel`).
    Cancelled,
    /// Not run: its `expires_at` passed before an attempt could start.
    Expired,
}

impl JobState {
    /// The state's name, as `status.lua` returns it and the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }

    /// Final: done, dead, cancelled or expired (what a long-poll waits for).
    pub fn is_final(self) -> bool {
        !self.is_live()
    }

    /// Still to run or running: pending, scheduled or running.
    pub fn is_live(self) -> bool {
        matches!(self, JobState::Pending | JobState::Scheduled | JobState::Running)
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            JobState::Pending,
            JobState::Scheduled,
            JobState::Running,
            JobState::Done,
            JobState::Dead,
            JobState::Cancelled,
            JobState::Expired,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's state as Redis knows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    /// Job id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// pending | scheduled | running | done | dead | cancelled | expired
    pub state: JobState,
    /// Job type (absent for a done job once its `result_ttl` passed).
    pub job: Option<String>,
    /// Attempts started.
    pub attempts: u32,
    /// Enqueue time, ms (RFC 3339 in JSON, as are the times below).
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub enqueued_at: Option<i64>,
    /// Scheduled jobs (delayed, deferred or waiting to retry): when the next attempt is due, ms.
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_at: Option<i64>,
    /// Running jobs: when the current lease expires unless extended, ms.
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lease_expires_at: Option<i64>,
    /// Done and dead jobs: when that happened, ms.
    #[serde(serialize_with = "culm_core::time::serialize_rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// The last error.
    pub last_error: Option<String>,
    /// Recent errors.
    pub errors: Vec<ErrorRecord>,
    /// Done jobs: the handler's JSON result, if it returned one (kept for the queue's
    /// `result_ttl`).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Its priority within the queue, while its body is stored (not once done).
    #[schema(value_type = Option<String>, example = "normal")]
    pub priority: Option<culm_core::Priority>,
}

struct Inner {
    conn: RedisConn,
    /// Handlers' own connection (their Redis commands and the integration limiter), once
    /// `open_handler_connection` ran: a slow or failed handler command then never delays
    /// or breaks a fetch or an acknowledgement on the store's connection.
    handler_conn: std::sync::OnceLock<RedisConn>,
    pubsub: PubSubSource,
    prefix: String,
    routing: Routing,
    registry: Arc<Registry>,
    idempotency_ttl_s: u64,
    /// Payloads and results larger than this (bytes of JSON) are stored compressed.
    compress_above: usize,
    done_retention: u64,
    dead_retention: std::time::Duration,
    /// How long a completed tracked batch's keys stay.
    batch_retention: std::time::Duration,
}

/// Handle to culm's Redis store. Cheap to clone; one multiplexed connection underneath.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// HMGET results.
type Fields = Vec<Option<String>>;

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Okay => "OK".to_owned(),
        _ => String::new(),
    }
}

fn parse_errors(raw: &str) -> Vec<ErrorRecord> {
    serde_json::from_str(raw).unwrap_or_default()
}

impl Store {
    /// Connects and checks Redis answers, failing with a one-line message naming the URL.
    pub async fn connect(config: &Config, registry: Arc<Registry>) -> Result<Store, StoreError> {
        let r = &config.redis;
        // Name what culm actually dialled: the seeds or the sentinels outside standalone.
        let url = match r.mode {
            RedisMode::Cluster if !r.cluster_nodes.is_empty() => r
                .cluster_nodes
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(", "),
            RedisMode::Sentinel => format!(
                "master `{}` via sentinels {}",
                r.sentinel_master,
                r.sentinel_nodes
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => redact_url(&r.url),
        };
        let unreachable = |cause: String| StoreError::Unreachable {
            url: url.clone(),
            cause,
        };
        let (mut conn, pubsub) = conn::connect(&config.redis)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Store {
            inner: Arc::new(Inner {
                conn,
                handler_conn: std::sync::OnceLock::new(),
                pubsub,
                prefix: config.redis.key_prefix.clone(),
                routing: Routing::from_config(config, &registry),
                registry,
                idempotency_ttl_s: config.worker.idempotency_ttl.as_secs().max(1),
                compress_above: config.worker.compress_above,
                done_retention: config.worker.done_retention,
                dead_retention: config.worker.dead_retention,
                batch_retention: config.worker.batch_retention,
            }),
        })
    }

    /// Where to open dedicated pub/sub connections (any node in Cluster mode, the
    /// current master in Sentinel mode).
    pub fn pubsub(&self) -> &PubSubSource {
        &self.inner.pubsub
    }

    /// A clone of the multiplexed connection.
    pub fn connection(&self) -> RedisConn {
        self.inner.conn.clone()
    }

    /// Opens the connection handlers use (see `handler_connection`). Processes that run
    /// jobs call this once before building their handlers' dependencies.
    pub async fn open_handler_connection(&self, config: &Config) -> Result<(), StoreError> {
        if self.inner.handler_conn.get().is_some() {
            return Ok(());
        }
        let (conn, _) = conn::connect(&config.redis)
            .await
            .map_err(|e| StoreError::Unreachable {
                url: redact_url(&config.redis.url),
                cause: e.to_string(),
            })?;
        let _ = self.inner.handler_conn.set(conn);
        Ok(())
    }

    /// The connection handlers use: their own once `open_handler_connection` ran, else
    /// the store's.
    pub fn handler_connection(&self) -> RedisConn {
        self.inner.handler_conn.get().unwrap_or(&self.inner.conn).clone()
    }

    /// Handler dependencies with the handlers' Redis connection in the shape `culm-jobs`
    /// looks up: the `ConnectionManager` (standalone, sentinel) or the cluster connection.
    pub fn handler_deps(&self) -> culm_core::Deps {
        let deps = culm_core::Deps::default();
        match &self.handler_connection() {
            RedisConn::Standalone(c) => deps.with(c.clone()),
            RedisConn::Cluster(c) => deps.with(c.clone()),
            RedisConn::Sentinel(s) => deps.with(s.current()),
        }
    }

    /// Payloads and results larger than this (bytes of JSON) are stored compressed.
    pub(crate) fn compress_above(&self) -> usize {
        self.inner.compress_above
    }

    /// The key names of `queue`.
    pub fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.inner.prefix, queue)
    }

    /// The key names of the scheduler.
    pub fn scheduler_keys(&self) -> SchedulerKeys {
        SchedulerKeys::new(&self.inner.prefix)
    }

    /// The key names of the replica registry.
    pub fn process_keys(&self) -> ProcessKeys {
        ProcessKeys::new(&self.inner.prefix)
    }

    /// The queue's base key, `{prefix:queue}`.
    pub fn base_key(&self, queue: &str) -> String {
        self.keys(queue).base().to_owned()
    }

    /// The pub/sub channel that wakes a queue's idle workers.
    pub fn wake_channel(&self, queue: &str) -> String {
        self.keys(queue).wake()
    }

    /// Routing and queue settings.
    pub fn routing(&self) -> &Routing {
        &self.inner.routing
    }

    /// The job registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    pub(crate) fn settings(&self, queue: &str) -> Result<&QueueSettings, StoreError> {
        self.inner
            .routing
            .queues
            .get(queue)
            .ok_or_else(|| StoreError::UnknownQueue(queue.to_owned()))
    }
}

impl Enqueuer for Store {
    fn enqueue_batch(&self, jobs: Vec<EnqueueRequest>) -> BoxFuture<'_, Result<Vec<Enqueued>, EnqueueError>> {
        Box::pin(self.enqueue(jobs))
    }

    fn create_batch(&self, b: culm_core::BatchSpec) -> BoxFuture<'_, Result<culm_core::CreatedBatch, EnqueueError>> {
        Box::pin(async move {
            let created = self
                .create_batch(NewBatch {
                    id: Some(b.id),
                    queue: None,
                    jobs: b.jobs,
                    on_complete: b.on_complete,
                    on_success: b.on_success,
                    description: b.description,
                    open: false,
                    member_keys: Some(b.member_keys),
                })
                .await
                .map_err(batch_error)?;
            Ok(culm_core::CreatedBatch {
                id: created.id,
                jobs: created.jobs,
            })
        })
    }

    fn add_to_batch(
        &self,
        batch: String,
        jobs: Vec<EnqueueRequest>,
        member_keys: String,
    ) -> BoxFuture<'_, Result<culm_core::CreatedBatch, EnqueueError>> {
        Box::pin(async move {
            let added = Store::add_to_batch(self, &batch, jobs, Some(&member_keys))
                .await
                .map_err(batch_error)?;
            Ok(culm_core::CreatedBatch {
                id: added.id,
                jobs: added.jobs,
            })
        })
    }
}

/// A batch error as a handler sees it: the field path kept in the message.
fn batch_error(e: BatchError) -> EnqueueError {
    match e {
        BatchError::Invalid { at, error } => match error {
            EnqueueError::Storage(m) => EnqueueError::Storage(m),
            other => EnqueueError::InvalidRequest {
                field: at,
                message: other.to_string(),
            },
        },
        BatchError::Storage(m) => EnqueueError::Storage(m),
        e @ (BatchError::NotFound(_) | BatchError::Complete(_)) => EnqueueError::InvalidRequest {
            field: "batch".into(),
            message: e.to_string(),
        },
    }
}
