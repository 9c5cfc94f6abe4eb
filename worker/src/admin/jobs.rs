//! `/v1/jobs`: enqueue one job or a batch, and read a job's state.
use super::{
    AdminState, ApiError,
    error::ErrorBody,
    extract::{bad_query, read_json},
    views::{
        BatchBody, BatchView, CancelView, EnqueueBody, EnqueuedView, JobPageView, JobQuery, JobTypesView, JobsQuery,
    },
    wait::MAX_WAIT,
};
use crate::store::{Cancelled, Cursor, JobState, JobStatus, ListJobs};
use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use culm_core::{EnqueueRequest, Enqueued, TraceContext};
use std::time::Duration;
use tracing::Instrument;

/// A request field holding an RFC 3339 time, as ms since the epoch.
fn rfc3339_ms(value: &str, field: &str) -> Result<i64, ApiError> {
    let t = chrono::DateTime::parse_from_rfc3339(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("{field} must be an RFC 3339 time such as 2026-11-23T17:00:00Z: {e}"),
        )
        .field(field)
    })?;
    Ok(t.timestamp_millis())
}

pub(super) fn to_request(b: EnqueueBody) -> Result<EnqueueRequest, ApiError> {
    let mut req = EnqueueRequest::raw(b.job, b.payload);
    req.queue = b.queue;
    if let Some(k) = &b.idempotency_key
        && crate::store::reserved_idempotency_key(k)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!(
                "idempotency keys starting with {} are culm's own",
                crate::store::RESERVED_KEY_PREFIXES.join(", ")
            ),
        )
        .field("idempotency_key"));
    }
    req.idempotency_key = b.idempotency_key;
    req.unique_key = b.unique_key;
    req.unique_for_ms = b.unique_for_ms;
    req.priority = b.priority;
    match (b.expires_in_ms, b.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "give expires_in_ms or expires_at, not both",
            )
            .field("expires_at"));
        }
        (Some(ms), None) => req = req.expires_in(Duration::from_millis(ms)),
        (None, Some(at)) => req = req.expires_at_ms(rfc3339_ms(&at, "expires_at")?),
        (None, None) => {}
    }
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
        (None, Some(at)) => req = req.at_ms(rfc3339_ms(&at, "run_at")?),
        (None, None) => {}
    }
    Ok(req)
}

/// The caller's W3C trace context (`traceparent`, `tracestate`, `baggage` headers). An
/// invalid `traceparent` is ignored, as the W3C recommendation asks: a tracing header
/// never costs a caller its job.
fn caller_trace(headers: &HeaderMap) -> Option<TraceContext> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    TraceContext::from_headers(h("traceparent"), h("tracestate"), h("baggage"))
}

/// The span of one enqueue request (`culm.enqueue`), a child of the caller's context;
/// none with export off.
fn enqueue_span(route: &'static str, caller: Option<&TraceContext>, jobs: usize) -> tracing::Span {
    if !crate::otel::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "enqueue",
        otel.name = "culm.enqueue",
        otel.kind = "producer",
        route,
        jobs,
        job_id = tracing::field::Empty,
    );
    crate::otel::set_parent(&span, caller);
    span
}

/// Stores with each job the context its runs continue: the enqueue span's with export
/// on, else the caller's as sent.
fn attach_trace(span: &tracing::Span, caller: Option<TraceContext>, reqs: &mut [EnqueueRequest]) {
    let ctx = crate::otel::context_to_store(span, caller);
    culm_core::trace::inherit(reqs, ctx);
}

impl From<Enqueued> for EnqueuedView {
    fn from(e: Enqueued) -> Self {
        EnqueuedView {
            id: e.id,
            queue: e.queue,
            created: e.created,
        }
    }
}

/// Enqueue one job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = EnqueueBody,
    params(
        ("traceparent" = Option<String>, Header, description = "W3C trace context: stored with the job, continued by its attempts, follow-ups and partner calls; an invalid value is ignored"),
        ("tracestate" = Option<String>, Header, description = "W3C trace state, kept with the traceparent (at most 512 characters)"),
        ("baggage" = Option<String>, Header, description = "W3C baggage, kept with the job and its follow-ups, never sent to partners (at most 8192 bytes)"),
    ),
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
pub(super) async fn enqueue_one(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b: EnqueueBody = read_json(&state, &headers, body).await?;
    let req = to_request(b)?;
    let caller = caller_trace(&headers);
    let span = enqueue_span("/v1/jobs", caller.as_ref(), 1);
    let mut reqs = vec![req];
    attach_trace(&span, caller, &mut reqs);
    let mut done = state.store().enqueue(reqs).instrument(span.clone()).await?;
    let e = done
        .pop()
        .ok_or_else(|| ApiError::internal("enqueue returned no result"))?;
    span.record("job_id", e.id.as_str());
    let status = if e.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(EnqueuedView::from(e))).into_response())
}

/// Enqueue several jobs. Every job is validated before any is stored. On standalone and
/// Sentinel Redis the batch is stored whole or not at all. In Cluster mode each queue's
/// part is stored whole, but one part can fail while another was stored: send an
/// `Idempotency-Key` header, and a retry with the same key (and the same body) stores
/// only what the first try did not, and answers with the same ids.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: each job without its own idempotency_key gets `batch:<key>:<index>`"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, stored with every job of the batch; an invalid value is ignored"),
        ("tracestate" = Option<String>, Header, description = "W3C trace state, kept with the traceparent"),
        ("baggage" = Option<String>, Header, description = "W3C baggage, kept with the traceparent")),
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
pub(super) async fn enqueue_batch(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
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
    let batch_key = batch_idempotency_key(&headers)?;
    let mut reqs = Vec::with_capacity(b.jobs.len());
    for (i, j) in b.jobs.into_iter().enumerate() {
        let mut req = to_request(j).map_err(|e| e.within(&format!("jobs[{i}]")))?;
        if let Some(key) = &batch_key
            && req.idempotency_key.is_none()
        {
            req.idempotency_key = Some(format!("batch:{key}:{i}"));
        }
        // Validate each job here so the error names its index; the store validates again.
        state
            .store()
            .resolve(&req)
            .map_err(|e| ApiError::from(e).within(&format!("jobs[{i}]")))?;
        reqs.push(req);
    }
    let caller = caller_trace(&headers);
    let span = enqueue_span("/v1/jobs/batch", caller.as_ref(), reqs.len());
    attach_trace(&span, caller, &mut reqs);
    let done = state.store().enqueue(reqs).instrument(span).await?;
    let any_created = done.iter().any(|e| e.created) || done.is_empty();
    let jobs = done.into_iter().map(EnqueuedView::from).collect();
    let status = if any_created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(BatchView { jobs })).into_response())
}

/// A job's state, with its result once done. With `?wait=10s`, a long-poll: answers as
/// soon as the job is done, dead or cancelled (woken by its completion, not by polling),
/// or when the wait ends, with the state it has then.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id"), JobQuery),
    responses(
        (status = 200, body = JobStatus),
        (status = 400, description = "`wait` is not a duration of at most 60s", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No queue knows this id", body = ErrorBody),
    ))]
pub(super) async fn get_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobStatus>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let wait = match q.wait.as_deref() {
        None => None,
        Some(w) => Some(
            humantime::parse_duration(w)
                .ok()
                .filter(|d| *d <= MAX_WAIT)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        format!("wait must be a duration of at most 60s, such as 10s or 500ms, not `{w}`"),
                    )
                    .field("wait")
                })?,
        ),
    };
    let Some(wait) = wait else {
        return job_status(&state, &id).await.map(Json);
    };
    let deadline = tokio::time::Instant::now() + wait;
    let waiting = state.inner.waiters.register(state.store(), &id);
    loop {
        let notified = waiting.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let s = job_status(&state, &id).await?;
        if s.state.is_final() {
            return Ok(Json(s));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Json(s));
        }
    }
}

/// A queue's jobs in one state, a page at a time. Each page reads only itself (never the
/// whole queue), so it answers as fast with a million pending jobs as with ten.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobsQuery),
    responses(
        (status = 200, body = JobPageView),
        (status = 400, description = "A parameter is missing or malformed: `field` names it", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "Unknown queue", body = ErrorBody),
    ))]
pub(super) async fn list_jobs(
    State(state): State<AdminState>,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Json<JobPageView>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let bad = |field: &str, m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m).field(field);
    let queue = q
        .queue
        .ok_or_else(|| bad("queue", "queue is required: the queue to list".into()))?;
    state.known_queue(&queue)?;
    let job_state = match q.state.as_deref() {
        None => JobState::Pending,
        Some(s) => s.parse::<JobState>().map_err(|m| {
            bad(
                "state",
                format!("{m}: use pending, scheduled, running, dead, done or cancelled"),
            )
        })?,
    };
    let cursor = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| {
            bad(
                "cursor",
                format!("`{c}` is not a cursor; pass a page's next_cursor unchanged"),
            )
        })?),
    };
    let page = state
        .store()
        .list_jobs(&ListJobs {
            queue: &queue,
            state: job_state,
            job: q.job.as_deref().filter(|j| !j.is_empty()),
            limit: q.limit.unwrap_or(50).clamp(1, 500),
            cursor,
        })
        .await?;
    Ok(Json(JobPageView {
        jobs: page.jobs,
        next_cursor: page.next_cursor.map(Cursor::encode),
    }))
}

async fn job_status(state: &AdminState, id: &str) -> Result<JobStatus, ApiError> {
    let mut status = state.store().status(id).await.map_err(ApiError::internal)?;
    // Redis forgets finished jobs after worker.done_retention; the ledger keeps every run.
    if status.is_none()
        && let Some(db) = state.db()
    {
        status = db.job_status(id).await.map_err(ApiError::internal)?;
    }
    status.ok_or_else(|| job_not_found(id))
}

fn job_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "job_not_found",
        format!("no job `{id}` (finished jobs are remembered for worker.done_retention jobs per queue)"),
    )
}

/// Cancels a job. A pending or scheduled one will not run (200, state `cancelled`;
/// cancelling twice answers 200). A running one's handler is told through its
/// cancellation signal within one `lease_extend_interval` (202, state `running`): if it
/// returns after seeing it, the job ends `cancelled`; if it ignores it, the job finishes
/// normally. A done or dead job is not changed (409).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled", body = CancelView),
        (status = 202, description = "Running: its handler was asked to stop", body = CancelView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No queue knows this id", body = ErrorBody),
        (status = 409, description = "The job is done or dead: `field` is `state`", body = ErrorBody),
    ))]
pub(super) async fn cancel_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CancelView>), ApiError> {
    match state.store().cancel(&id).await.map_err(ApiError::internal)? {
        Cancelled::Cancelled { queue } => Ok((
            StatusCode::OK,
            Json(CancelView {
                id,
                queue,
                state: JobState::Cancelled,
            }),
        )),
        Cancelled::Requested { queue } => {
            tracing::info!(job_id = %id, queue = %queue, "cancellation of a running job requested over the admin API");
            Ok((
                StatusCode::ACCEPTED,
                Json(CancelView {
                    id,
                    queue,
                    state: JobState::Running,
                }),
            ))
        }
        Cancelled::Refused { state: s, .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!("job `{id}` is {s}; only pending, scheduled and running jobs can be cancelled"),
        )
        .field("state")),
        Cancelled::Unknown => Err(job_not_found(&id)),
    }
}

/// Every job type: its queue, tiers, description, retry policy, timeout, result TTL and
/// the JSON Schema of its payload (also under `components.schemas` as `payload.<name>`).
#[utoipa::path(get, path = "/v1/job-types", tag = "jobs",
    responses((status = 200, body = JobTypesView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_job_types(State(state): State<AdminState>) -> Json<JobTypesView> {
    let store = state.store();
    Json(JobTypesView {
        job_types: store.routing().job_types(store.registry()),
    })
}

/// The batch's `Idempotency-Key` header, checked like a job's key (with room for the
/// `batch:` prefix and the index).
pub(super) fn batch_idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| k.len() <= 180 && culm_core::valid_idempotency_key(k));
    match key {
        Some(k) => Ok(Some(k.to_owned())),
        None => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 180 printable ASCII characters, without spaces or braces",
        )
        .field("Idempotency-Key")),
    }
}
