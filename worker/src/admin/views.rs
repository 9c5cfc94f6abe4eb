//! The request bodies and the response envelopes of the admin API. Job, queue,
//! dead-letter and schedule state are the store's and the scheduler's own types
//! (`JobStatus`, `QueueStats`, `DeadJob`, `ScheduleStatus`); these only wrap them.
use crate::{
    scheduler::ScheduleStatus,
    store::{DeadJob, JobState, JobType, QueueStats},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// One job to enqueue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    /// Job type, e.g. `bamboo.place_order`.
    pub job: String,
    /// The job's payload; validated against the job type. Default `{}`.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Queue override; must belong to a tier the job type allows.
    #[serde(default)]
    pub queue: Option<String>,
    /// Run no earlier than this many milliseconds from now.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Run no earlier than this time (RFC 3339).
    #[serde(default)]
    pub run_at: Option<String>,
    /// A repeated key (within the idempotency TTL) returns the first job's id.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Not started within this many milliseconds from now, the job is not run at all
    /// and ends `expired` (Celery's `expires`).
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
    /// Not started by this time (RFC 3339), the job is not run at all and ends `expired`.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// While a job enqueued with this key (in its queue) is pending, scheduled or
    /// running, this request returns that job's id (200, `created: false`) and stores
    /// nothing; accepted again once it has finished.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// Unique for at most this long, ms; without `unique_key`, unique by job type and
    /// payload. Default with `unique_key`: `worker.idempotency_ttl`.
    #[serde(default)]
    pub unique_for_ms: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Several jobs, enqueued all or nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The jobs, in order.
    pub jobs: Vec<EnqueueBody>,
}

/// An enqueued job.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnqueuedView {
    pub id: String,
    /// The queue it went to (routed, unless the request named one).
    pub queue: String,
    /// `false` when an idempotency key matched an earlier job (nothing was stored).
    pub created: bool,
}

/// Result of a batch enqueue.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    /// One entry per job, in request order.
    pub jobs: Vec<EnqueuedView>,
}

/// A queue's counts plus what it is for.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    #[serde(flatten)]
    pub stats: QueueStats,
    /// `[queues.<name>] description`.
    pub description: String,
}

/// Every queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuesView {
    /// Queues in name order.
    pub queues: Vec<QueueView>,
}

/// Dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadListView {
    /// Newest first per queue.
    pub jobs: Vec<DeadJob>,
}

/// Result of a dead-letter operation.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadOpView {
    /// The id that will run: the dead job's own, or a new one when the archive re-drove a
    /// job Redis no longer held.
    pub id: String,
    pub queue: String,
}

/// Filters for `GET /v1/dead`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// Only this queue (default: every queue).
    pub queue: Option<String>,
    /// At most this many per queue (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Liveness / readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    /// `ok`
    pub status: String,
}

/// Every schedule with its next fire times, pause flag and last fire and outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchedulesView {
    /// Schedules in catalog order.
    pub schedules: Vec<ScheduleStatus>,
}

/// Options of `GET /v1/jobs/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Long-poll: answer once the job is done, dead or cancelled, or when this much time
    /// has passed (`10s`, `1500ms`; at most 60s), with its state either way.
    pub wait: Option<String>,
}

/// Every job type this server knows.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobTypesView {
    /// In name order.
    pub job_types: Vec<JobType>,
}

/// Result of a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelView {
    pub id: String,
    pub queue: String,
    /// `cancelled`.
    pub state: JobState,
}
