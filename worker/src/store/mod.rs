//! culm's Redis storage layer: the hot path (push, fetch, acknowledge, lease upkeep) and
//! the queries SREs run (stats, dead letters, job status, pause).
//!
//! Every operation on a queue is one Lua script over that queue's keys, which share the
//! hash tag `{<prefix>:<queue>}` (see `lua/common.lua` for the layout). Scripts are
//! O(batch), never O(queue length). apalis-redis is not used: its fetch overflows Lua's
//! `unpack` past ~8,000 due jobs, its idle workers wait for a 30 s heartbeat, and it
//! acknowledges one task per round trip (ARCHITECTURE.md has the details).
use crate::config::{Config, QueueSettings, RedisMode, redact_url};
use culm_core::{EnqueueError, EnqueueRequest, Enqueued, Enqueuer, Registry, Tier, now_ms};
use futures::future::{BoxFuture, try_join_all};
use redis::{Script, Value};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{collections::BTreeMap, sync::Arc, sync::LazyLock, time::Duration};

pub mod conn;
pub use conn::{PubSubSource, RedisConn};

macro_rules! script {
    ($name:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/common.lua"),
                "\n",
                include_str!(concat!("lua/", $name))
            ))
        })
    };
}

static PUSH: LazyLock<Script> = script!("push.lua");
static FETCH: LazyLock<Script> = script!("fetch.lua");
static ACK: LazyLock<Script> = script!("ack.lua");
static EXTEND: LazyLock<Script> = script!("extend.lua");
static REAP: LazyLock<Script> = script!("reap.lua");
static RELEASE: LazyLock<Script> = script!("release.lua");
static DEAD: LazyLock<Script> = script!("dead.lua");
static STATUS: LazyLock<Script> = script!("status.lua");
static STATS: LazyLock<Script> = script!("stats.lua");

/// Jobs per push script call; keeps a single script's run time short.
const PUSH_CHUNK: usize = 1000;
/// Scheduled jobs promoted per fetch.
const PROMOTE_CHUNK: usize = 1000;
/// Expired leases returned per reap call.
const REAP_CHUNK: usize = 1000;

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

/// How a job is stored in the `jobs` hash.
#[derive(Serialize)]
struct NewEnvelope<'a> {
    job: &'a str,
    payload: &'a serde_json::Value,
    enqueued_at: i64,
    run_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

/// A stored job as read back.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// Job type name.
    pub job: String,
    /// Raw JSON payload (deserialized by the handler's registration).
    pub payload: Box<RawValue>,
    /// Enqueue time, ms.
    pub enqueued_at: i64,
    /// Earliest run time, ms.
    pub run_at: i64,
    /// Idempotency key, if one was given.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A job handed to a worker under a lease.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Job id.
    pub id: String,
    /// Queue.
    pub queue: Arc<str>,
    /// Attempt number from 1; also the lease's fencing token.
    pub attempt: u32,
    /// The stored job.
    pub envelope: Envelope,
    /// When the worker fetched it, ms.
    pub fetched_at: i64,
}

/// The result of one fetch call.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Leased jobs.
    pub jobs: Vec<Delivery>,
    /// The queue is paused.
    pub paused: bool,
    /// When the earliest scheduled job falls due, ms.
    pub next_due: Option<i64>,
}

/// What happens to a job after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKind {
    /// Finished.
    Done,
    /// Failed; run again at `at` (ms).
    Retry {
        /// When.
        at: i64,
    },
    /// Not run now; run again at `at` without spending an attempt.
    Defer {
        /// When.
        at: i64,
    },
    /// Dead-lettered.
    Dead,
}

/// One acknowledgement, fenced by the attempt the job was fetched under.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Job id.
    pub id: String,
    /// Attempt it was fetched under.
    pub attempt: u32,
    /// Outcome.
    pub kind: AckKind,
    /// Error text (retry and dead).
    pub error: String,
}

/// A job whose lease expired and which the reaper returned to its queue or dead-lettered.
#[derive(Debug, Clone)]
pub struct Reaped {
    /// Job id.
    pub id: String,
    /// The attempt whose worker stopped responding.
    pub attempt: u32,
    /// It was the last attempt: the job is now dead.
    pub dead: bool,
    /// The stored job.
    pub envelope: Option<Envelope>,
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
    /// Due, waiting for a worker.
    pub pending: u64,
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
        }
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
    /// pending | scheduled | running | done | dead
    pub state: JobState,
    /// Job type (absent for finished jobs, whose body is deleted).
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
}

/// Queue names, their settings and job routing overrides.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Declared queues.
    pub queues: BTreeMap<String, QueueSettings>,
    /// Job type → queue overrides.
    pub routes: BTreeMap<String, String>,
}

impl Routing {
    /// From configuration.
    pub fn from_config(c: &Config) -> Self {
        Self {
            queues: c.queue_settings(),
            routes: c.routes.clone(),
        }
    }

    /// Every routing problem: job types sent to undeclared queues or to queues of a tier
    /// they may not run in, and overrides naming unknown job types.
    pub fn problems(&self, registry: &Registry) -> Vec<String> {
        let mut out = Vec::new();
        for job in self.routes.keys() {
            if registry.get(job).is_none() {
                out.push(format!(
                    "[routes] names job type `{job}`, which this binary does not know"
                ));
            }
        }
        for spec in registry.iter() {
            let (queue, via) = match self.routes.get(spec.name) {
                Some(q) => (q.as_str(), "[routes] override"),
                None => (spec.queue, "its declaration"),
            };
            match self.queues.get(queue) {
                None => out.push(format!(
                    "job type `{}` is routed by {via} to queue `{queue}`, which is not declared under [queues]",
                    spec.name
                )),
                Some(q) if !spec.allows(q.tier) => out.push(format!(
                    "job type `{}` is routed by {via} to queue `{queue}` (tier {}), but it may only run in: {}",
                    spec.name,
                    q.tier,
                    spec.allowed_tiers()
                )),
                Some(_) => {}
            }
        }
        out
    }
}

struct Inner {
    conn: RedisConn,
    pubsub: PubSubSource,
    prefix: String,
    routing: Routing,
    registry: Arc<Registry>,
    idempotency_ttl_s: u64,
    done_retention: u64,
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
                pubsub,
                prefix: config.redis.key_prefix.clone(),
                routing: Routing::from_config(config),
                registry,
                idempotency_ttl_s: config.worker.idempotency_ttl.as_secs().max(1),
                done_retention: config.worker.done_retention,
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

    /// Handler dependencies with this store's Redis connection in the shape `culm-jobs`
    /// looks up: the `ConnectionManager` (standalone, sentinel) or the cluster connection.
    pub fn handler_deps(&self) -> culm_core::Deps {
        let deps = culm_core::Deps::default();
        match &self.inner.conn {
            RedisConn::Standalone(c) => deps.with(c.clone()),
            RedisConn::Cluster(c) => deps.with(c.clone()),
            RedisConn::Sentinel(s) => deps.with(s.current()),
        }
    }

    /// Routing and queue settings.
    pub fn routing(&self) -> &Routing {
        &self.inner.routing
    }

    /// The job registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The queue's base key, `{prefix:queue}`.
    pub fn base_key(&self, queue: &str) -> String {
        format!("{{{}:{}}}", self.inner.prefix, queue)
    }

    /// The pub/sub channel that wakes a queue's idle workers.
    pub fn wake_channel(&self, queue: &str) -> String {
        format!("{}:wake", self.base_key(queue))
    }

    fn settings(&self, queue: &str) -> Result<&QueueSettings, StoreError> {
        self.inner
            .routing
            .queues
            .get(queue)
            .ok_or_else(|| StoreError::UnknownQueue(queue.to_owned()))
    }

    /// Validates a request and returns the queue it goes to. Writes nothing.
    pub fn resolve(&self, req: &EnqueueRequest) -> Result<&QueueSettings, EnqueueError> {
        let spec = self
            .inner
            .registry
            .get(&req.job)
            .ok_or_else(|| EnqueueError::UnknownJob { job: req.job.clone() })?;
        let routing = &self.inner.routing;
        let queue = req
            .queue
            .as_deref()
            .or_else(|| routing.routes.get(&req.job).map(String::as_str))
            .unwrap_or(spec.queue);
        let q = routing.queues.get(queue).ok_or_else(|| EnqueueError::UnknownQueue {
            queue: queue.to_owned(),
        })?;
        if !spec.allows(q.tier) {
            return Err(EnqueueError::TierNotAllowed {
                job: req.job.clone(),
                queue: queue.to_owned(),
                tier: q.tier,
                allowed: spec.allowed_tiers(),
            });
        }
        if let Some(k) = &req.idempotency_key
            && (k.is_empty() || k.len() > 200)
        {
            return Err(EnqueueError::InvalidRequest {
                field: "idempotency_key".into(),
                message: "must be 1 to 200 bytes".into(),
            });
        }
        spec.validate(&req.payload)?;
        Ok(q)
    }

    /// Validates every request, then stores them: one script call per queue (per 1,000
    /// jobs), all pipelined on one connection. On a validation error nothing is written.
    pub async fn enqueue(&self, reqs: Vec<EnqueueRequest>) -> Result<Vec<Enqueued>, EnqueueError> {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in reqs.iter().enumerate() {
            groups.entry(self.resolve(r)?.name.as_str()).or_default().push(i);
        }
        let now = now_ms();
        let mut calls = Vec::new();
        for (queue, idx) in &groups {
            for chunk in idx.chunks(PUSH_CHUNK) {
                let mut inv = PUSH.prepare_invoke();
                inv.key(self.base_key(queue)).arg(now).arg(self.inner.idempotency_ttl_s);
                for &i in chunk {
                    let r = &reqs[i];
                    let run_at = r.run_at_ms.unwrap_or(now);
                    let env = serde_json::to_string(&NewEnvelope {
                        job: &r.job,
                        payload: &r.payload,
                        enqueued_at: now,
                        run_at: run_at.max(now),
                        idempotency_key: r.idempotency_key.as_deref(),
                    })
                    .map_err(|e| EnqueueError::Storage(e.to_string()))?;
                    inv.arg(ulid::Ulid::new().to_string())
                        .arg(run_at)
                        .arg(env)
                        .arg(r.idempotency_key.as_deref().unwrap_or(""));
                }
                let mut conn = self.inner.conn.clone();
                calls.push(async move {
                    let v: Vec<Value> = inv.invoke_async(&mut conn).await?;
                    Ok::<_, redis::RedisError>((*queue, chunk, v))
                });
            }
        }
        let results = try_join_all(calls)
            .await
            .map_err(|e| EnqueueError::Storage(e.to_string()))?;
        let mut out: Vec<Option<Enqueued>> = vec![None; reqs.len()];
        for (queue, chunk, v) in results {
            for (pos, &i) in chunk.iter().enumerate() {
                let id = v.get(pos * 2).map(text).unwrap_or_default();
                let created = v.get(pos * 2 + 1).map(text).as_deref() == Some("1");
                if created {
                    crate::telemetry::enqueued(queue, &reqs[i].job);
                }
                out[i] = Some(Enqueued {
                    id,
                    queue: queue.to_owned(),
                    created,
                });
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| EnqueueError::Storage("push script returned too few results".into())))
            .collect()
    }

    /// Promotes due scheduled jobs and leases up to `count` ready ones.
    pub async fn fetch(&self, queue: &Arc<str>, count: usize, lease_ttl: Duration) -> Result<Fetched, StoreError> {
        let now = now_ms();
        let deadline = now + i64::try_from(lease_ttl.as_millis()).unwrap_or(i64::MAX / 4);
        let mut conn = self.inner.conn.clone();
        let v: Vec<Value> = FETCH
            .key(self.base_key(queue))
            .arg(now)
            .arg(count)
            .arg(deadline)
            .arg(PROMOTE_CHUNK)
            .invoke_async(&mut conn)
            .await?;
        let mut out = Fetched {
            paused: v.first().map(text).as_deref() == Some("paused"),
            next_due: v.get(1).map(text).and_then(|s| s.parse::<f64>().ok()).map(|f| f as i64),
            jobs: Vec::with_capacity(v.len().saturating_sub(2) / 3),
        };
        for triple in v.get(2..).unwrap_or_default().chunks_exact(3) {
            let id = text(&triple[0]);
            let attempt = text(&triple[1]).parse::<u32>().unwrap_or(1);
            let raw = text(&triple[2]);
            match serde_json::from_str::<Envelope>(&raw) {
                Ok(envelope) => out.jobs.push(Delivery {
                    id,
                    queue: queue.clone(),
                    attempt,
                    envelope,
                    fetched_at: now,
                }),
                Err(e) => {
                    // Unreadable bodies are dead-lettered instead of looping forever.
                    tracing::error!(queue = %queue, job_id = %id, "stored job is not valid JSON: {e}");
                    self.ack(
                        queue,
                        &[Ack {
                            id,
                            attempt,
                            kind: AckKind::Dead,
                            error: format!("stored envelope is corrupt: {e}"),
                        }],
                    )
                    .await?;
                }
            }
        }
        Ok(out)
    }

    /// Applies a batch of acknowledgements in one round trip; returns how many applied
    /// (the others were fenced off: their lease had expired and moved on).
    pub async fn ack(&self, queue: &str, acks: &[Ack]) -> Result<usize, StoreError> {
        if acks.is_empty() {
            return Ok(0);
        }
        let mut inv = ACK.prepare_invoke();
        inv.key(self.base_key(queue))
            .arg(now_ms())
            .arg(self.inner.done_retention);
        for a in acks {
            let (kind, at) = match a.kind {
                AckKind::Done => ("done", 0),
                AckKind::Retry { at } => ("retry", at),
                AckKind::Defer { at } => ("defer", at),
                AckKind::Dead => ("dead", 0),
            };
            inv.arg(&a.id).arg(a.attempt).arg(kind).arg(at).arg(&a.error);
        }
        let mut conn = self.inner.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Extends leases; returns ids whose lease was lost.
    pub async fn extend(
        &self,
        queue: &str,
        held: &[(String, u32)],
        lease_ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = now_ms() + i64::try_from(lease_ttl.as_millis()).unwrap_or(i64::MAX / 4);
        let mut inv = EXTEND.prepare_invoke();
        inv.key(self.base_key(queue)).arg(deadline);
        for (id, attempt) in held {
            inv.arg(id).arg(*attempt);
        }
        let mut conn = self.inner.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Returns expired leases of `queue` to ready (or dead on their last attempt); says
    /// which jobs it reaped (the ledger records their lost attempts).
    pub async fn reap(&self, queue: &str) -> Result<Vec<Reaped>, StoreError> {
        let max = self.settings(queue)?.retry.max_attempts;
        let mut conn = self.inner.conn.clone();
        let v: Vec<Value> = REAP
            .key(self.base_key(queue))
            .arg(now_ms())
            .arg(max)
            .arg(REAP_CHUNK)
            .invoke_async(&mut conn)
            .await?;
        Ok(v.chunks_exact(4)
            .map(|r| Reaped {
                id: text(&r[0]),
                attempt: text(&r[1]).parse().unwrap_or(0),
                dead: text(&r[2]) == "dead",
                envelope: serde_json::from_str(&text(&r[3])).ok(),
            })
            .collect())
    }

    /// Hands leased jobs back to the front of the queue, refunding the attempt.
    pub async fn release(&self, queue: &str, held: &[(String, u32)]) -> Result<usize, StoreError> {
        if held.is_empty() {
            return Ok(0);
        }
        let mut inv = RELEASE.prepare_invoke();
        inv.key(self.base_key(queue));
        for (id, attempt) in held {
            inv.arg(id).arg(*attempt);
        }
        let mut conn = self.inner.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Counts for one queue.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let s = self.settings(queue)?;
        let mut conn = self.inner.conn.clone();
        let v: Vec<Value> = STATS.key(self.base_key(queue)).invoke_async(&mut conn).await?;
        let n = |i: usize| v.get(i).map(text).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let head = v.get(5).map(text).unwrap_or_default();
        let oldest = serde_json::from_str::<Envelope>(&head)
            .ok()
            .map(|e| (now_ms() - e.run_at.max(e.enqueued_at)).max(0));
        Ok(QueueStats {
            name: s.name.clone(),
            tier: s.tier,
            concurrency: s.concurrency,
            pending: n(0),
            scheduled: n(1),
            running: n(2),
            dead: n(3),
            paused: n(4) == 1,
            oldest_pending_age_ms: oldest,
        })
    }

    /// Stats for every declared queue, in name order.
    pub async fn all_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        try_join_all(self.inner.routing.queues.keys().map(|q| self.stats(q))).await
    }

    /// Pauses a queue: it keeps accepting jobs, but no worker on any replica fetches.
    pub async fn pause(&self, queue: &str) -> Result<(), StoreError> {
        self.settings(queue)?;
        let mut conn = self.inner.conn.clone();
        redis::cmd("SET")
            .arg(format!("{}:paused", self.base_key(queue)))
            .arg(now_ms())
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Resumes a paused queue and wakes its workers.
    pub async fn resume(&self, queue: &str) -> Result<(), StoreError> {
        self.settings(queue)?;
        let mut conn = self.inner.conn.clone();
        redis::pipe()
            .del(format!("{}:paused", self.base_key(queue)))
            .ignore()
            .publish(self.wake_channel(queue), "1")
            .ignore()
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Dead-lettered jobs of `queue`, newest first.
    pub async fn dead_list(&self, queue: &str, limit: usize) -> Result<Vec<DeadJob>, StoreError> {
        self.settings(queue)?;
        let base = self.base_key(queue);
        let mut conn = self.inner.conn.clone();
        let entries: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(format!("{base}:dead"))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let (bodies, errors, attempts): (Fields, Fields, Vec<Option<u32>>) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{base}:jobs"))
            .arg(&ids)
            .cmd("HMGET")
            .arg(format!("{base}:errors"))
            .arg(&ids)
            .cmd("HMGET")
            .arg(format!("{base}:attempts"))
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, (id, died)) in entries.iter().enumerate() {
            let Some(body) = bodies.get(i).cloned().flatten() else {
                continue;
            };
            let env: Envelope = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                key: id.clone(),
                message: e.to_string(),
            })?;
            let errs = errors
                .get(i)
                .cloned()
                .flatten()
                .map(|e| parse_errors(&e))
                .unwrap_or_default();
            out.push(DeadJob {
                id: id.clone(),
                queue: queue.to_owned(),
                job: env.job,
                payload: serde_json::from_str(env.payload.get()).unwrap_or(serde_json::Value::Null),
                attempts: attempts.get(i).copied().flatten().unwrap_or(0),
                died_at: *died as i64,
                enqueued_at: env.enqueued_at,
                last_error: errs.last().map(|e| e.error.clone()),
                errors: errs,
            });
        }
        Ok(out)
    }

    async fn dead_op(&self, op: &str, queue: &str, ids: &[String]) -> Result<usize, StoreError> {
        self.settings(queue)?;
        let mut inv = DEAD.prepare_invoke();
        inv.key(self.base_key(queue)).arg(op).arg(now_ms());
        for id in ids {
            inv.arg(id);
        }
        let mut conn = self.inner.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Puts dead jobs back on their queue with a fresh attempt budget.
    pub async fn dead_retry(&self, queue: &str, ids: &[String]) -> Result<usize, StoreError> {
        self.dead_op("retry", queue, ids).await
    }

    /// Deletes dead jobs for good.
    pub async fn dead_purge(&self, queue: &str, ids: &[String]) -> Result<usize, StoreError> {
        self.dead_op("purge", queue, ids).await
    }

    /// Finds the queue whose dead-letter set holds `id`.
    pub async fn dead_queue_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        for q in self.inner.routing.queues.keys() {
            let mut conn = self.inner.conn.clone();
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(format!("{}:dead", self.base_key(q)))
                .arg(id)
                .query_async(&mut conn)
                .await?;
            if score.is_some() {
                return Ok(Some(q.clone()));
            }
        }
        Ok(None)
    }

    /// A job's state, searching every declared queue (all lookups pipelined).
    pub async fn status(&self, id: &str) -> Result<Option<JobStatus>, StoreError> {
        let lookups = self.inner.routing.queues.keys().map(|q| {
            let mut conn = self.inner.conn.clone();
            let key = self.base_key(q);
            async move {
                let v: Vec<Value> = STATUS.key(key).arg(id).invoke_async(&mut conn).await?;
                Ok::<_, StoreError>((q, v))
            }
        });
        for (queue, v) in try_join_all(lookups).await? {
            if v.is_empty() {
                continue;
            }
            let env = serde_json::from_str::<Envelope>(&text(&v[2])).ok();
            let errors = parse_errors(&text(&v[3]));
            let state: JobState = text(&v[0]).parse().map_err(|message| StoreError::Corrupt {
                key: id.to_owned(),
                message,
            })?;
            let at = text(&v[4]).parse::<f64>().ok().map(|f| f as i64);
            return Ok(Some(JobStatus {
                id: id.to_owned(),
                queue: queue.clone(),
                state,
                job: env.as_ref().map(|e| e.job.clone()),
                attempts: text(&v[1]).parse().unwrap_or(0),
                enqueued_at: env.as_ref().map(|e| e.enqueued_at),
                run_at: at.filter(|_| state == JobState::Scheduled),
                lease_expires_at: at.filter(|_| state == JobState::Running),
                finished_at: at.filter(|_| matches!(state, JobState::Done | JobState::Dead)),
                last_error: errors.last().map(|e| e.error.clone()),
                errors,
            }));
        }
        Ok(None)
    }
}

impl Enqueuer for Store {
    fn enqueue_batch(&self, jobs: Vec<EnqueueRequest>) -> BoxFuture<'_, Result<Vec<Enqueued>, EnqueueError>> {
        Box::pin(self.enqueue(jobs))
    }
}
