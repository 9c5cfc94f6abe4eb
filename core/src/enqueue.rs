//! Enqueue requests and the [`Enqueuer`] seam through which handlers add jobs.
use crate::{Job, Tier, TraceContext, now_ms};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest uniqueness a request or a job type may ask for: a year, in ms.
pub const MAX_UNIQUE_FOR_MS: u64 = 365 * 24 * 3600 * 1000;

/// A job to store: its type name, JSON payload and placement. Built typed with
/// [`EnqueueRequest::of`] or untyped (HTTP, CLI, outbox) with [`EnqueueRequest::raw`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnqueueRequest {
    /// Job type name, e.g. `bamboo.place_order`.
    pub job: String,
    /// The payload; validated against the job type before anything is written.
    pub payload: serde_json::Value,
    /// Queue override; must be a queue whose tier the job type allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Run no earlier than this (ms since the epoch); `None` runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<i64>,
    /// A second enqueue with the same key (in the same queue, within the idempotency TTL)
    /// returns the first job's id and stores nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Not started by this time (ms since the epoch), the job is not run at all: it ends
    /// in state `expired` (Celery's `expires`). Applies to every attempt, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// While a job enqueued with this key (in the same queue) is pending, scheduled or
    /// running, another enqueue with it returns that job's id and stores nothing; once
    /// it has finished, the key is free again. `None` with `unique_for_ms` set: the key is
    /// the job type and a hash of the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// How long the uniqueness holds at most, ms, even if the job is still live (default:
    /// the job type's `UNIQUE_FOR`, else `worker.idempotency_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_for_ms: Option<u64>,
    /// The W3C trace context the job continues (stored only when present). Set from the
    /// caller's headers by the admin API and the outbox; jobs enqueued from a handler get
    /// the run's context when they have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    /// Where the job waits within its queue: a fetch takes `high` jobs first, then
    /// `normal`, then `low`, FIFO within each. `None` is `normal`. Retries, deferrals and
    /// delayed runs keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

/// A job's priority within its queue: three levels, each its own list in Redis, so a
/// fetch costs the same whatever the backlog. Queues separate tiers of work (critical
/// banking never shares a queue with batch jobs); priority orders jobs inside one queue,
/// e.g. an urgent order ahead of routine ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Taken before every `normal` and `low` job of the queue.
    High,
    /// The default.
    #[default]
    Normal,
    /// Taken only when no `high` or `normal` job is waiting.
    Low,
}

impl Priority {
    /// Every level, highest first (the order a fetch takes them in).
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The level's name: `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!("unknown priority `{other}` (expected high, normal or low)")),
        }
    }
}

impl EnqueueRequest {
    /// A typed request for job `job`.
    pub fn of<J: Job>(job: &J) -> Result<Self, EnqueueError> {
        let payload = serde_json::to_value(job).map_err(|e| EnqueueError::InvalidPayload {
            job: J::NAME.to_owned(),
            field: None,
            message: e.to_string(),
        })?;
        Ok(Self::raw(J::NAME, payload))
    }

    /// An untyped request; the payload is validated when it is enqueued.
    pub fn raw(job: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            job: job.into(),
            payload,
            queue: None,
            run_at_ms: None,
            idempotency_key: None,
            expires_at_ms: None,
            unique_key: None,
            unique_for_ms: None,
            trace: None,
            priority: None,
        }
    }

    /// Unique by payload: while a job of this type with an equal payload is pending,
    /// scheduled or running in the queue (for at most `ttl`), enqueueing another returns
    /// its id instead.
    pub fn unique_for(mut self, ttl: Duration) -> Self {
        self.unique_for_ms = Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Unique by `key` instead of the payload (see [`EnqueueRequest::unique_for`]).
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Not run at all unless started within `ttl` from now (the job ends `expired`).
    pub fn expires_in(mut self, ttl: Duration) -> Self {
        self.expires_at_ms = Some(now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2));
        self
    }

    /// Not run at all unless started by `at_ms` (ms since the epoch).
    pub fn expires_at_ms(mut self, at_ms: i64) -> Self {
        self.expires_at_ms = Some(at_ms);
        self
    }

    /// Sends the job to `queue` instead of its default.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Runs the job no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at_ms = Some(now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2));
        self
    }

    /// Runs the job no earlier than `at_ms` (ms since the epoch).
    pub fn at_ms(mut self, at_ms: i64) -> Self {
        self.run_at_ms = Some(at_ms);
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the job's priority within its queue.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets the trace context the job continues.
    pub fn trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
    }
}

/// The result of one enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The job id (the existing one when the idempotency key was already claimed).
    pub id: String,
    /// The queue the job went to.
    pub queue: String,
    /// `false` when an idempotency key matched an earlier job and nothing was stored.
    pub created: bool,
}

/// Why an enqueue was refused. Validation errors are raised before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The job type is not registered in this binary.
    #[error("unknown job type `{job}`")]
    UnknownJob {
        /// The name given.
        job: String,
    },
    /// The payload does not deserialize into the job type.
    #[error("invalid payload for `{job}`{}: {message}", field.as_ref().map(|f| format!(" at `{f}`")).unwrap_or_default())]
    InvalidPayload {
        /// Job type.
        job: String,
        /// Path of the offending field, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The queue is not declared in the configuration.
    #[error("unknown queue `{queue}`")]
    UnknownQueue {
        /// The name given.
        queue: String,
    },
    /// The queue's tier is not one the job type may run in.
    #[error("job type `{job}` may not run in queue `{queue}` (tier {tier}); allowed tiers: {allowed}")]
    TierNotAllowed {
        /// Job type.
        job: String,
        /// Queue requested.
        queue: String,
        /// That queue's tier.
        tier: Tier,
        /// The job's allowed tiers, comma separated.
        allowed: String,
    },
    /// A request field is malformed (e.g. an empty idempotency key).
    #[error("invalid `{field}`: {message}")]
    InvalidRequest {
        /// The request field at fault, e.g. `idempotency_key`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The store could not be reached or refused the write; nothing was enqueued.
    #[error("storage error: {0}")]
    Storage(String),
}

/// A tracked batch a handler creates ([`crate::JobContext::batch`]): jobs counted
/// together in one queue, and callback jobs enqueued once when they are all final.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchSpec {
    /// The batch id, derived from the creating job's id and call index, so a retried
    /// handler finds its batch instead of creating a second one.
    pub id: String,
    /// The members; all must go to one queue.
    pub jobs: Vec<EnqueueRequest>,
    /// Enqueued once every member reached a final state (done, dead, cancelled, expired).
    pub on_complete: Option<EnqueueRequest>,
    /// Enqueued once every member succeeded.
    pub on_success: Option<EnqueueRequest>,
    /// Shown by `culm batches` and the dashboard.
    pub description: Option<String>,
    /// Members without an idempotency key get one derived from this, the batch id and
    /// their index, so a retried handler stores each once.
    pub member_keys: String,
}

/// A batch as created (or found again by a retried handler).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedBatch {
    /// Batch id.
    pub id: String,
    /// The members, in request order (empty when a retried handler found the batch
    /// complete already).
    pub jobs: Vec<Enqueued>,
}

fn no_batches() -> EnqueueError {
    EnqueueError::Storage("this enqueuer does not support tracked batches".into())
}

/// Enqueues jobs. Implemented by culm's Redis store; handlers reach it through
/// [`crate::JobContext::enqueue`]. One call is one round trip per queue touched.
pub trait Enqueuer: Send + Sync + 'static {
    /// Validates every request, then stores all of them; on a validation error nothing is stored.
    fn enqueue_batch(&self, jobs: Vec<EnqueueRequest>) -> BoxFuture<'_, Result<Vec<Enqueued>, EnqueueError>>;

    /// Creates a tracked batch (closed: it completes once its members are final). The
    /// default refuses, for enqueuers without batch support.
    fn create_batch(&self, batch: BatchSpec) -> BoxFuture<'_, Result<CreatedBatch, EnqueueError>> {
        let _ = batch;
        Box::pin(futures::future::ready(Err(no_batches())))
    }

    /// Adds jobs to a batch that is not complete; `member_keys` as in [`BatchSpec`]. The
    /// default refuses.
    fn add_to_batch(
        &self,
        batch: String,
        jobs: Vec<EnqueueRequest>,
        member_keys: String,
    ) -> BoxFuture<'_, Result<CreatedBatch, EnqueueError>> {
        let _ = (batch, jobs, member_keys);
        Box::pin(futures::future::ready(Err(no_batches())))
    }
}

/// Checks a request's idempotency key. The key becomes part of a Redis key name
/// (`…:idem:<key>`): printable ASCII only, so no key can carry a hash tag (`{…}`), a
/// control character or whitespace that would make it address, or print like, another key.
pub fn check_idempotency_key(key: &str) -> Result<(), EnqueueError> {
    if valid_idempotency_key(key) {
        return Ok(());
    }
    Err(EnqueueError::InvalidRequest {
        field: "idempotency_key".into(),
        message: "must be 1 to 200 printable ASCII characters, without spaces or braces".into(),
    })
}

/// Whether `key` may be an idempotency key (see [`check_idempotency_key`]).
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=200).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
}
