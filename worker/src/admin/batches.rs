//! `/v1/batches`: tracked batches (jobs counted together, with callback jobs once they
//! are all final): create, add, close, read the counters, page the members.
use super::{
    AdminState, ApiError,
    error::ErrorBody,
    extract::{bad_query, read_json},
    jobs::{batch_idempotency_key, to_request},
    views::{BatchBody, EnqueueBody, EnqueuedView},
};
use crate::store::{BatchCreated, BatchError, BatchPage, BatchStatus, NewBatch};
use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
};
use culm_core::EnqueueRequest;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A tracked batch to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBatchBody {
    /// The jobs; every one must go to the same queue (the batch's home queue). At most
    /// `admin.batch_max` per request; add more with `POST /v1/batches/{id}/jobs`.
    #[serde(default)]
    pub jobs: Vec<EnqueueBody>,
    /// Enqueued once every job reached a final state (done, dead, cancelled, expired).
    /// May go to any queue.
    #[serde(default)]
    pub on_complete: Option<EnqueueBody>,
    /// Enqueued once every job succeeded. May go to any queue.
    #[serde(default)]
    pub on_success: Option<EnqueueBody>,
    /// Shown by `culm batches` and the dashboard (at most 1,000 bytes).
    #[serde(default)]
    pub description: Option<String>,
    /// Keep the batch open for `POST /v1/batches/{id}/jobs` until `POST
    /// /v1/batches/{id}/close`: it cannot complete before.
    #[serde(default)]
    pub open: bool,
    /// The home queue; needed only for a batch created without jobs.
    #[serde(default)]
    pub queue: Option<String>,
}

/// A created batch, or jobs added to one.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCreatedView {
    /// Batch id.
    pub id: String,
    /// The home queue.
    pub queue: String,
    /// The jobs, in request order.
    pub jobs: Vec<EnqueuedView>,
}

impl From<BatchCreated> for BatchCreatedView {
    fn from(b: BatchCreated) -> Self {
        BatchCreatedView {
            id: b.id,
            queue: b.queue,
            jobs: b.jobs.into_iter().map(EnqueuedView::from).collect(),
        }
    }
}

/// The newest batches.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchListView {
    pub batches: Vec<BatchStatus>,
}

/// Paging of `GET /v1/batches/{id}/jobs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchJobsQuery {
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// At most this many (default 50, at most 200).
    pub limit: Option<usize>,
}

/// Options of `GET /v1/batches`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchListQuery {
    /// At most this many (default 20, at most 100).
    pub limit: Option<usize>,
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Invalid { at, error } => ApiError::from(error).within(&at),
            e @ BatchError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "batch_not_found", e.to_string()),
            e @ BatchError::Complete(_) => {
                ApiError::new(StatusCode::CONFLICT, "batch_complete", e.to_string()).field("id")
            }
            BatchError::Storage(m) => ApiError::internal(m),
        }
    }
}

fn batch_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "batch_not_found",
        format!("no batch `{id}` (a completed batch is kept for worker.batch_retention)"),
    )
}

fn requests(state: &AdminState, jobs: Vec<EnqueueBody>) -> Result<Vec<EnqueueRequest>, ApiError> {
    let max = state.inner.batch_max;
    if jobs.len() > max {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_too_large",
            format!("{} jobs in one request; at most {max} (admin.batch_max): add the rest with POST /v1/batches/{{id}}/jobs", jobs.len()),
        )
        .field("jobs"));
    }
    jobs.into_iter()
        .enumerate()
        .map(|(i, j)| to_request(j).map_err(|e| e.within(&format!("jobs[{i}]"))))
        .collect()
}

/// Creates a tracked batch. Every job must go to one queue (`jobs[i].queue` names the
/// first that does not); callbacks may go anywhere. The callbacks are enqueued exactly
/// once, when every job reached a final state (`on_complete`) or succeeded
/// (`on_success`); they can read the batch id from their context and the members'
/// results from `GET /v1/batches/{id}/jobs`.
#[utoipa::path(post, path = "/v1/batches", tag = "batches", request_body = NewBatchBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the batch id and its members' idempotency keys derive from it, so a retry after a lost reply finds the same batch and stores no job twice")),
    responses(
        (status = 201, description = "Created", body = BatchCreatedView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "Unknown job type (field names the job)", body = ErrorBody),
        (status = 422, description = "A job or callback is invalid, or the jobs go to two queues (field names it)", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    ))]
pub(super) async fn create_batch(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BatchCreatedView>), ApiError> {
    let key = batch_idempotency_key(&headers)?;
    let b: NewBatchBody = read_json(&state, &headers, body).await?;
    let jobs = requests(&state, b.jobs)?;
    let on_complete = b
        .on_complete
        .map(|j| to_request(j).map_err(|e| e.within("on_complete")))
        .transpose()?;
    let on_success = b
        .on_success
        .map(|j| to_request(j).map_err(|e| e.within("on_success")))
        .transpose()?;
    let created = state
        .store()
        .create_batch(NewBatch {
            // A retry with the same key names the same batch, and its members get the
            // same derived idempotency keys: nothing is stored twice.
            id: key.as_deref().map(keyed_batch_id),
            queue: b.queue,
            jobs,
            on_complete,
            on_success,
            description: b.description,
            open: b.open,
            member_keys: key.as_ref().map(|_| "h".to_owned()),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// The batch id an `Idempotency-Key` names: `k` and the first 32 hex digits of its
/// SHA-256, so any key maps to a valid id of fixed length.
fn keyed_batch_id(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("k{hex}")
}

/// Adds jobs to a batch that is not complete (409 once it is). They must go to the
/// batch's queue.
#[utoipa::path(post, path = "/v1/batches/{id}/jobs", tag = "batches", request_body = BatchBody,
    params(("id" = String, Path, description = "Batch id")),
    responses(
        (status = 201, description = "Added", body = BatchCreatedView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 409, description = "The batch is complete", body = ErrorBody),
        (status = 422, description = "A job is invalid or goes to another queue", body = ErrorBody),
    ))]
pub(super) async fn add_batch_jobs(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BatchCreatedView>), ApiError> {
    let b: BatchBody = read_json(&state, &headers, body).await?;
    let jobs = requests(&state, b.jobs)?;
    let added = state.store().add_to_batch(&id, jobs, None).await?;
    Ok((StatusCode::CREATED, Json(added.into())))
}

/// Closes a batch created with `open`: it completes once nothing is pending (at once if
/// nothing is). Closing twice is harmless.
#[utoipa::path(post, path = "/v1/batches/{id}/close", tag = "batches",
    params(("id" = String, Path, description = "Batch id")),
    responses(
        (status = 200, body = BatchStatus),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    ))]
pub(super) async fn close_batch(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<BatchStatus>, ApiError> {
    Ok(Json(state.store().close_batch(&id).await?))
}

/// A batch's counters (total, pending, succeeded, dead, cancelled, expired), state and
/// callbacks with their job ids.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = String, Path, description = "Batch id")),
    responses(
        (status = 200, body = BatchStatus),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    ))]
pub(super) async fn get_batch(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<BatchStatus>, ApiError> {
    match state.store().batch(&id).await? {
        Some(b) => Ok(Json(b)),
        None => Err(batch_not_found(&id)),
    }
}

/// A batch's members, a page at a time, in the order they were added: id, state and
/// result (while the queue keeps it, `result_ttl`).
#[utoipa::path(get, path = "/v1/batches/{id}/jobs", tag = "batches",
    params(("id" = String, Path, description = "Batch id"), BatchJobsQuery),
    responses(
        (status = 200, body = BatchPage),
        (status = 400, description = "Bad cursor or limit", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    ))]
pub(super) async fn list_batch_jobs(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    query: Result<Query<BatchJobsQuery>, QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let cursor = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "cursor must be a previous page's next_cursor",
            )
            .field("cursor")
        })?,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=crate::store::MEMBER_PAGE_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 200",
        )
        .field("limit"));
    }
    match state.store().batch_members(&id, cursor, limit).await? {
        Some(page) => Ok(Json(page)),
        None => Err(batch_not_found(&id)),
    }
}

/// The newest batches across queues, newest first.
#[utoipa::path(get, path = "/v1/batches", tag = "batches", params(BatchListQuery),
    responses(
        (status = 200, body = BatchListView),
        (status = 400, description = "Bad limit", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub(super) async fn list_batches(
    State(state): State<AdminState>,
    query: Result<Query<BatchListQuery>, QueryRejection>,
) -> Result<Json<BatchListView>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 100",
        )
        .field("limit"));
    }
    Ok(Json(BatchListView {
        batches: state.store().list_batches(limit).await?,
    }))
}
