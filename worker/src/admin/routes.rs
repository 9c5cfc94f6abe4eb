//! Admin API handlers and the route table (one table feeds both axum and OpenAPI).
use super::{AdminState, ApiError, error::ErrorBody, require};
use crate::{
    config::Scope,
    store::{DeadJob, ErrorRecord, JobStatus, QueueStats, StoreError},
};
use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
};
use culm_core::EnqueueRequest;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::time::Duration;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

#[derive(OpenApi)]
#[openapi(
    info(title = "culm admin API", version = "1", description = "Enqueue jobs, inspect and steer culm's queues."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the route table: open probes, then one group per scope.
pub(super) fn table(state: AdminState) -> (axum::Router<AdminState>, utoipa::openapi::OpenApi) {
    let guard = |scope: Scope| middleware::from_fn_with_state((state.clone(), scope), require);
    let open = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json));
    let enqueue = OpenApiRouter::new()
        .routes(routes!(enqueue_one))
        .routes(routes!(enqueue_batch))
        .route_layer(guard(Scope::Enqueue));
    let read = OpenApiRouter::new()
        .routes(routes!(get_job))
        .routes(routes!(list_queues))
        .routes(routes!(get_queue))
        .routes(routes!(list_dead))
        .routes(routes!(list_schedules))
        .routes(routes!(get_schedule))
        .route_layer(guard(Scope::Read));
    let admin = OpenApiRouter::new()
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(retry_dead))
        .routes(routes!(purge_dead))
        .routes(routes!(trigger_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .route_layer(guard(Scope::Admin));
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(open)
        .merge(enqueue)
        .merge(read)
        .merge(admin)
        .split_for_parts();
    let json = api.to_json().unwrap_or_else(|_| "{}".to_owned());
    let _ = state.inner.openapi.set(json);
    (router, api)
}

// ---- bodies and views ------------------------------------------------------------

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
    /// Job id.
    pub id: String,
    /// Queue it went to.
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

/// One failed attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorView {
    /// Attempt number.
    pub attempt: u32,
    /// When (RFC 3339).
    pub at: Option<String>,
    /// What happened.
    pub error: String,
}

/// A job's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Job type (absent once a finished job's body is gone).
    pub job: Option<String>,
    /// pending | scheduled | running | done | failed (waiting to retry) | dead
    pub state: String,
    /// Attempts started.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// Recent errors, oldest first.
    pub errors: Vec<ErrorView>,
    /// When it was enqueued.
    pub enqueued_at: Option<String>,
    /// Scheduled and failed jobs: when the next attempt is due.
    pub run_at: Option<String>,
    /// Running jobs: when the current lease expires unless extended.
    pub lease_expires_at: Option<String>,
    /// Done and dead jobs: when that happened.
    pub finished_at: Option<String>,
}

/// A queue and its counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Name.
    pub name: String,
    /// critical | third_party | batch | reporting
    pub tier: String,
    /// What the queue is for.
    pub description: String,
    /// Pool size per worker process.
    pub concurrency: u32,
    /// Due and waiting for a worker.
    pub pending: u64,
    /// Waiting for their time (delayed, retry backoff, deferred).
    pub scheduled: u64,
    /// Leased by a worker.
    pub running: u64,
    /// In the dead letters.
    pub dead: u64,
    /// Paused: accepts jobs, workers fetch nothing.
    pub paused: bool,
    /// Age of the oldest due job, milliseconds (absent when none is pending).
    pub oldest_pending_age_ms: Option<i64>,
}

/// Every queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuesView {
    /// Queues in name order.
    pub queues: Vec<QueueView>,
}

/// A dead-lettered job.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadView {
    /// Job id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Job type.
    pub job: String,
    /// Payload.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Attempts made.
    pub attempts: u32,
    /// When it was enqueued.
    pub enqueued_at: Option<String>,
    /// When it was dead-lettered.
    pub died_at: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// Recent errors, oldest first.
    pub errors: Vec<ErrorView>,
}

/// Dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadListView {
    /// Newest first per queue.
    pub jobs: Vec<DeadView>,
}

/// Result of a dead-letter operation.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadOpView {
    /// Job id.
    pub id: String,
    /// Queue.
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

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn errors_view(errors: Vec<ErrorRecord>) -> Vec<ErrorView> {
    errors
        .into_iter()
        .map(|e| ErrorView {
            attempt: e.attempt,
            at: rfc3339(e.at),
            error: e.error,
        })
        .collect()
}

impl From<JobStatus> for JobView {
    fn from(s: JobStatus) -> Self {
        let at = s.state_since_or_until.and_then(rfc3339);
        // A scheduled job with a failed attempt behind it is waiting to retry.
        let state = if s.state == "scheduled" && s.attempts > 0 && !s.errors.is_empty() {
            "failed".to_owned()
        } else {
            s.state
        };
        let (run_at, lease_expires_at, finished_at) = match state.as_str() {
            "scheduled" | "failed" => (at, None, None),
            "running" => (None, at, None),
            "done" | "dead" => (None, None, at),
            _ => (None, None, None),
        };
        JobView {
            id: s.id,
            queue: s.queue,
            job: s.job,
            state,
            attempts: s.attempts,
            last_error: s.last_error,
            errors: errors_view(s.errors),
            enqueued_at: s.enqueued_at.and_then(rfc3339),
            run_at,
            lease_expires_at,
            finished_at,
        }
    }
}

impl From<DeadJob> for DeadView {
    fn from(d: DeadJob) -> Self {
        DeadView {
            id: d.id,
            queue: d.queue,
            job: d.job,
            payload: d.payload,
            attempts: d.attempts,
            enqueued_at: rfc3339(d.enqueued_at),
            died_at: rfc3339(d.died_at),
            last_error: d.last_error,
            errors: errors_view(d.errors),
        }
    }
}

impl AdminState {
    fn queue_view(&self, s: QueueStats) -> QueueView {
        let description = self
            .store()
            .routing()
            .queues
            .get(&s.name)
            .map(|q| q.description.clone())
            .unwrap_or_default();
        QueueView {
            name: s.name,
            tier: s.tier.as_str().to_owned(),
            description,
            concurrency: s.concurrency,
            pending: s.pending,
            scheduled: s.scheduled,
            running: s.running,
            dead: s.dead,
            paused: s.paused,
            oldest_pending_age_ms: s.oldest_pending_age_ms,
        }
    }

    fn known_queue(&self, name: &str) -> Result<(), ApiError> {
        if self.store().routing().queues.contains_key(name) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "queue_not_found",
                format!("no queue named `{name}` is declared"),
            ))
        }
    }
}

// ---- request parsing --------------------------------------------------------------

/// Reads a JSON body: 413 over the size limit, 400 when it is not JSON, 422 naming the
/// field when it does not match `T`.
async fn read_json<T: DeserializeOwned>(state: &AdminState, headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let max = state.inner.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {max} bytes (admin.max_body_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        if format!("{e:?}").contains("LengthLimit") {
            too_large()
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", "could not read the request body")
        }
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("body is not valid JSON: {e}"),
        )
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        let named = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), named) {
            (".", Some(f)) => f.to_owned(),
            (p, Some(f)) => format!("{p}.{f}"),
            (p, None) => p.to_owned(),
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message).field(field)
    })
}

fn to_request(b: EnqueueBody) -> Result<EnqueueRequest, ApiError> {
    let mut req = EnqueueRequest::raw(b.job, b.payload);
    req.queue = b.queue;
    req.idempotency_key = b.idempotency_key;
    match (b.delay_ms, b.run_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "give delay_ms or run_at, not both",
            )
            .field("run_at"));
        }
        (Some(ms), None) => req = req.delay(Duration::from_millis(ms)),
        (None, Some(at)) => {
            let t = chrono::DateTime::parse_from_rfc3339(&at).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request",
                    format!("run_at must be an RFC 3339 time such as 2026-11-23T17:00:00Z: {e}"),
                )
                .field("run_at")
            })?;
            req = req.at_ms(t.timestamp_millis());
        }
        (None, None) => {}
    }
    Ok(req)
}

// ---- handlers -----------------------------------------------------------------------

/// Enqueue one job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = EnqueueBody,
    responses(
        (status = 201, description = "Enqueued", body = EnqueuedView),
        (status = 200, description = "Idempotency key matched an earlier job; nothing stored", body = EnqueuedView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the enqueue scope", body = ErrorBody),
        (status = 404, description = "Unknown job type", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Payload or field invalid; `field` names it", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    ))]
async fn enqueue_one(State(state): State<AdminState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let b: EnqueueBody = read_json(&state, &headers, body).await?;
    let req = to_request(b)?;
    let mut done = state.store().enqueue(vec![req]).await?;
    let e = done
        .pop()
        .ok_or_else(|| ApiError::internal("enqueue returned no result"))?;
    let status = if e.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        Json(EnqueuedView {
            id: e.id,
            queue: e.queue,
            created: e.created,
        }),
    )
        .into_response())
}

/// Enqueue several jobs, all or nothing: every job is validated before any is stored.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchBody,
    responses(
        (status = 201, description = "Enqueued (ids in request order)", body = BatchView),
        (status = 200, description = "Every job matched an earlier idempotency key", body = BatchView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Token lacks the enqueue scope", body = ErrorBody),
        (status = 404, description = "Unknown job type (field names the job)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A job is invalid or the batch is over admin.batch_max", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    ))]
async fn enqueue_batch(State(state): State<AdminState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let b: BatchBody = read_json(&state, &headers, body).await?;
    let max = state.inner.batch_max;
    if b.jobs.len() > max {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_too_large",
            format!("{} jobs in one batch; at most {max} (admin.batch_max)", b.jobs.len()),
        )
        .field("jobs"));
    }
    let mut reqs = Vec::with_capacity(b.jobs.len());
    for (i, j) in b.jobs.into_iter().enumerate() {
        let req = to_request(j).map_err(|e| e.within(&format!("jobs[{i}]")))?;
        // Validate each job here so the error names its index; the store validates again.
        state
            .store()
            .resolve(&req)
            .map_err(|e| ApiError::from(e).within(&format!("jobs[{i}]")))?;
        reqs.push(req);
    }
    let done = state.store().enqueue(reqs).await?;
    let any_created = done.iter().any(|e| e.created) || done.is_empty();
    let jobs = done
        .into_iter()
        .map(|e| EnqueuedView {
            id: e.id,
            queue: e.queue,
            created: e.created,
        })
        .collect();
    let status = if any_created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(BatchView { jobs })).into_response())
}

/// A job's state.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, body = JobView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No queue knows this id", body = ErrorBody),
    ))]
async fn get_job(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    let mut status = state.store().status(&id).await.map_err(ApiError::internal)?;
    // Issue 6: jobs Redis no longer holds are looked up in the ledger.
    if status.is_none()
        && let Some(db) = state.db()
    {
        status = db.job_status(&id).await.map_err(ApiError::internal)?;
    }
    match status {
        Some(s) => Ok(Json(s.into())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job `{id}` (finished jobs are remembered for worker.done_retention jobs per queue)"),
        )),
    }
}

/// Every queue with its counts.
#[utoipa::path(get, path = "/v1/queues", tag = "queues",
    responses((status = 200, body = QueuesView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_queues(State(state): State<AdminState>) -> Result<Json<QueuesView>, ApiError> {
    let all = state.store().all_stats().await.map_err(ApiError::internal)?;
    Ok(Json(QueuesView {
        queues: all.into_iter().map(|s| state.queue_view(s)).collect(),
    }))
}

/// One queue with its counts.
#[utoipa::path(get, path = "/v1/queues/{name}", tag = "queues", params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn get_queue(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Json<QueueView>, ApiError> {
    state.known_queue(&name)?;
    let s = state.store().stats(&name).await.map_err(ApiError::internal)?;
    Ok(Json(state.queue_view(s)))
}

/// Pause a queue: it keeps accepting jobs, but no worker on any replica fetches from it.
#[utoipa::path(post, path = "/v1/queues/{name}/pause", tag = "queues", params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn pause_queue(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Json<QueueView>, ApiError> {
    state.known_queue(&name)?;
    state.store().pause(&name).await.map_err(ApiError::internal)?;
    tracing::info!(queue = %name, "queue paused over the admin API");
    let s = state.store().stats(&name).await.map_err(ApiError::internal)?;
    Ok(Json(state.queue_view(s)))
}

/// Resume a paused queue; its workers are woken at once.
#[utoipa::path(post, path = "/v1/queues/{name}/resume", tag = "queues", params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn resume_queue(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Json<QueueView>, ApiError> {
    state.known_queue(&name)?;
    state.store().resume(&name).await.map_err(ApiError::internal)?;
    tracing::info!(queue = %name, "queue resumed over the admin API");
    let s = state.store().stats(&name).await.map_err(ApiError::internal)?;
    Ok(Json(state.queue_view(s)))
}

/// Dead-lettered jobs.
#[utoipa::path(get, path = "/v1/dead", tag = "dead letters", params(DeadQuery),
    responses((status = 200, body = DeadListView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "Unknown queue", body = ErrorBody)))]
async fn list_dead(
    State(state): State<AdminState>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Json<DeadListView>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()).field("query"))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let queues: Vec<String> = match q.queue {
        Some(name) => {
            state.known_queue(&name)?;
            vec![name]
        }
        None => state.store().routing().queues.keys().cloned().collect(),
    };
    let mut jobs = Vec::new();
    // Issue 6: with PostgreSQL the archive is the source (it outlives Redis's dead set).
    if let Some(db) = state.db() {
        let only = (queues.len() == 1).then(|| queues[0].as_str());
        let dead = db
            .dead_list_merged(state.store(), only, limit)
            .await
            .map_err(ApiError::internal)?;
        jobs.extend(dead.into_iter().map(DeadView::from));
        return Ok(Json(DeadListView { jobs }));
    }
    for name in queues {
        let dead = state
            .store()
            .dead_list(&name, limit)
            .await
            .map_err(ApiError::internal)?;
        jobs.extend(dead.into_iter().map(DeadView::from));
    }
    Ok(Json(DeadListView { jobs }))
}

async fn dead_queue(state: &AdminState, id: &str) -> Result<String, ApiError> {
    state
        .store()
        .dead_queue_of(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "dead_job_not_found",
                format!("no dead-lettered job `{id}`"),
            )
        })
}

/// Put a dead job back on its queue with a fresh attempt budget.
#[utoipa::path(post, path = "/v1/dead/{id}/retry", tag = "dead letters", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = DeadOpView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn retry_dead(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<DeadOpView>, ApiError> {
    if let Some(db) = state.db() {
        return match db.dead_redrive(state.store(), &id).await.map_err(ApiError::internal)? {
            Some((queue, runs_as)) => {
                tracing::info!(job_id = %id, queue = %queue, runs_as = %runs_as, "dead job re-driven from the archive over the admin API");
                Ok(Json(DeadOpView { id: runs_as, queue }))
            }
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "dead_job_not_found",
                format!("no archived dead job `{id}` awaiting re-drive"),
            )),
        };
    }
    let queue = dead_queue(&state, &id).await?;
    let n = state
        .store()
        .dead_retry(&queue, std::slice::from_ref(&id))
        .await
        .map_err(ApiError::internal)?;
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "dead_job_not_found",
            format!("no dead-lettered job `{id}`"),
        ));
    }
    tracing::info!(job_id = %id, queue = %queue, "dead job re-driven over the admin API");
    Ok(Json(DeadOpView { id, queue }))
}

/// Delete a dead job for good.
#[utoipa::path(delete, path = "/v1/dead/{id}", tag = "dead letters", params(("id" = String, Path, description = "Job id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn purge_dead(State(state): State<AdminState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    if let Some(db) = state.db() {
        let archived = db
            .dead_purge(std::slice::from_ref(&id))
            .await
            .map_err(ApiError::internal)?;
        let queue = state.store().dead_queue_of(&id).await.map_err(ApiError::internal)?;
        if let Some(q) = &queue {
            state
                .store()
                .dead_purge(q, std::slice::from_ref(&id))
                .await
                .map_err(ApiError::internal)?;
        }
        if archived == 0 && queue.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "dead_job_not_found",
                format!("no dead-lettered job `{id}`"),
            ));
        }
        tracing::info!(job_id = %id, "dead job purged (archive and Redis) over the admin API");
        return Ok(StatusCode::NO_CONTENT);
    }
    let queue = dead_queue(&state, &id).await?;
    state
        .store()
        .dead_purge(&queue, std::slice::from_ref(&id))
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(job_id = %id, queue = %queue, "dead job purged over the admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()), responses((status = 200, body = HealthView)))]
async fn healthz() -> Json<HealthView> {
    Json(HealthView { status: "ok".into() })
}

/// Readiness: Redis (and PostgreSQL, when configured) answer.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()),
    responses((status = 200, body = HealthView), (status = 503, description = "A dependency is down; `field` names it", body = ErrorBody)))]
async fn readyz(State(state): State<AdminState>) -> Result<Json<HealthView>, ApiError> {
    let mut conn = state.store().connection();
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await;
    let down = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "dependency_unavailable", m).field("redis");
    match ping {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(down(format!("redis is unreachable: {}", redact(&e)))),
        Err(_) => return Err(down("redis did not answer within 2s".into())),
    }
    // Issue 6: PostgreSQL, when configured. The error never echoes the URL.
    if let Some(db) = state.db()
        && let Err(e) = db.ping(Duration::from_secs(2)).await
    {
        let kind = match e {
            sqlx::Error::PoolTimedOut => "did not answer within 2s".to_owned(),
            sqlx::Error::Database(d) => format!("error {}", d.code().unwrap_or_default()),
            _ => "is unreachable".to_owned(),
        };
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency_unavailable",
            format!("postgres {kind}"),
        )
        .field("postgres"));
    }
    Ok(Json(HealthView { status: "ok".into() }))
}

/// Redis errors can echo the URL; keep only the kind and detail.
fn redact(e: &redis::RedisError) -> String {
    format!("{:?}: {}", e.kind(), e.detail().unwrap_or("connection failed"))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "probes", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AdminState>) -> Response {
    render_metrics(&state.inner.metrics)
}

pub(super) fn render_metrics(h: &PrometheusHandle) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        h.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "probes", security(()),
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
async fn openapi_json(State(state): State<AdminState>) -> Response {
    let body = state.inner.openapi.get().cloned().unwrap_or_else(|| "{}".to_owned());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

// ---- schedules ------------------------------------------------------------------------

/// Every schedule with its next fire times, pause flag and last fire and outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchedulesView {
    /// Schedules in catalog order (see `culm schedules --json` for the fields).
    #[schema(value_type = Vec<Object>)]
    pub schedules: Vec<crate::scheduler::ScheduleStatus>,
}

fn scheduler(state: &AdminState) -> Result<&crate::scheduler::Scheduler, ApiError> {
    state.inner.scheduler.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "schedules_unavailable",
            "this process has no schedule catalog loaded (see `culm check`)",
        )
    })
}

impl From<crate::scheduler::SchedulerError> for ApiError {
    fn from(e: crate::scheduler::SchedulerError) -> Self {
        use crate::scheduler::SchedulerError as E;
        match e {
            E::UnknownSchedule(_) => ApiError::new(StatusCode::NOT_FOUND, "schedule_not_found", e.to_string()),
            E::Redis(e) => ApiError::internal(redact(&e)),
            E::Encode { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "schedule_invalid", e.to_string()),
        }
    }
}

/// Every schedule.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, body = SchedulesView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn list_schedules(State(state): State<AdminState>) -> Result<Json<SchedulesView>, ApiError> {
    let schedules = scheduler(&state)?.list().await?;
    Ok(Json(SchedulesView { schedules }))
}

/// One schedule.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn get_schedule(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<crate::scheduler::ScheduleStatus>, ApiError> {
    Ok(Json(scheduler(&state)?.get(&name).await?))
}

/// Fire a schedule now (ignores its cadence, pause flag and overlap policy).
#[utoipa::path(post, path = "/v1/schedules/{name}/trigger", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, description = "`{\"outcome\": \"triggered\", \"job_id\": ...}`", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn trigger_schedule(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<crate::scheduler::TickOutcome>, ApiError> {
    let outcome = scheduler(&state)?.trigger(&name).await?;
    tracing::info!(schedule = %name, "schedule triggered over the admin API");
    Ok(Json(outcome))
}

/// Pause a schedule on every replica (its ticks are skipped until resumed).
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn pause_schedule(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<crate::scheduler::ScheduleStatus>, ApiError> {
    let s = scheduler(&state)?;
    s.pause(&name).await?;
    tracing::info!(schedule = %name, "schedule paused over the admin API");
    Ok(Json(s.get(&name).await?))
}

/// Resume a paused schedule.
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn resume_schedule(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<crate::scheduler::ScheduleStatus>, ApiError> {
    let s = scheduler(&state)?;
    s.resume(&name).await?;
    tracing::info!(schedule = %name, "schedule resumed over the admin API");
    Ok(Json(s.get(&name).await?))
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such endpoint; see /openapi.json",
    )
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint; see /openapi.json",
    )
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}
