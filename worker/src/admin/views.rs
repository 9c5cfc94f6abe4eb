//! The request bodies and the response envelopes of the admin API. Job, queue,
//! dead-letter and schedule state are the store's and the scheduler's own types
//! (`JobStatus`, `QueueStats`, `DeadJob`, `ScheduleStatus`); these only wrap them.
use crate::{
    scheduler::{ScheduleStatus, TickEntry},
    store::{DeadJob, JobState, JobStatus, JobType, MinuteStats, QueueStats, WorkerInfo},
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
    /// `high`, `normal` (the default) or `low`: within its queue a job is taken after
    /// every waiting job of a higher priority and in enqueue order within its own.
    /// Retries and delayed runs keep it.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(high|normal|low)$", example = "high")]
    pub priority: Option<culm_core::Priority>,
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

/// Filters for `GET /v1/dead` and `GET /v1/dead/count`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// Only this queue (default: every queue).
    pub queue: Option<String>,
    /// Only this job type.
    pub job: Option<String>,
    /// Only jobs whose last error contains this text (case-insensitive).
    pub error: Option<String>,
    /// Only jobs that died at or after this time: RFC 3339, or a duration back from now
    /// (`2h`).
    pub since: Option<String>,
    /// Only jobs that died before this time (same forms as `since`).
    pub until: Option<String>,
    /// At most this many (default 100, at most 1000). Ignored by `count`.
    pub limit: Option<usize>,
    /// Skip this many (paging; default 0). Ignored by `count`.
    pub offset: Option<usize>,
}

/// Which dead letters a bulk retry or purge acts on: the `ids` given, or with
/// `all: true` every dead job that matches the filter fields (none given: every dead job).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadBulkBody {
    /// A selection of dead jobs' ids.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Act on everything that matches the filter (required when `ids` is absent, so an
    /// empty body never touches every dead job by accident).
    #[serde(default)]
    pub all: bool,
    /// Only this queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Only this job type.
    #[serde(default)]
    pub job: Option<String>,
    /// Only jobs whose last error contains this text (case-insensitive).
    #[serde(default)]
    pub error: Option<String>,
    /// Died at or after: RFC 3339, or a duration back from now (`2h`).
    #[serde(default)]
    pub since: Option<String>,
    /// Died before (same forms as `since`).
    #[serde(default)]
    pub until: Option<String>,
}

/// What a bulk retry or purge did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadBulkView {
    /// Dead jobs that matched the filter (or ids given).
    pub matched: usize,
    /// Of those, the ones retried or purged (the rest were gone by then).
    pub applied: usize,
    /// At most 100,000 are acted on per call; `true` when more may match: call again.
    pub truncated: bool,
}

/// How many dead jobs match a filter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadCountView {
    /// At most 100,000.
    pub count: usize,
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

/// A schedule's tick history.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicksView {
    /// Newest first.
    pub ticks: Vec<TickEntry>,
}

/// Options of `GET /v1/jobs/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Long-poll: answer once the job is done, dead or cancelled, or when this much time
    /// has passed (`10s`, `1500ms`; at most 60s), with its state either way.
    pub wait: Option<String>,
}

/// Filters and paging of `GET /v1/jobs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// The queue to list (required).
    pub queue: Option<String>,
    /// pending (default), scheduled, running, dead, done or cancelled.
    pub state: Option<String>,
    /// Only this job type. A page then examines at most 5,000 entries and may hold fewer
    /// than `limit` jobs: follow `next_cursor` until it is absent.
    pub job: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
    /// Where to continue: the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A page of a queue's jobs in one state.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPageView {
    /// pending in FIFO order, scheduled by due time, running by lease deadline; dead,
    /// done and cancelled newest first.
    pub jobs: Vec<JobStatus>,
    /// Pass as `cursor` for the next page; absent at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Options of `GET /v1/history`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// `1h` (default; a point a minute) or `24h` (a point per ten minutes).
    pub window: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
}

/// One queue's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueHistory {
    pub queue: String,
    pub tier: String,
    /// Oldest first.
    pub points: Vec<MinuteStats>,
}

/// Per-minute history over a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    /// The window's length.
    pub minutes: u32,
    /// Minutes each point covers.
    pub minutes_per_point: u32,
    /// Summed over the queues, oldest first.
    pub total: Vec<MinuteStats>,
    /// Per queue, in name order.
    pub queues: Vec<QueueHistory>,
}

/// The live `culm run` replicas.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkersView {
    /// Most recently started first.
    pub workers: Vec<WorkerInfo>,
}

/// Every configured integration, across every replica.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationsView {
    /// In name order.
    pub integrations: Vec<crate::store::IntegrationStatus>,
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
    /// `cancelled`; `running` when the job was running and its handler was asked to stop.
    pub state: JobState,
}
