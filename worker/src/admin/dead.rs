//! `/v1/dead`: list, count, re-drive and purge dead letters, one at a time or in bulk by
//! filter or selection. Where they live (Redis, or the PostgreSQL archive) is decided by
//! `dead_letters::DeadLetters`, not here.
use super::{
    AdminState, ApiError,
    error::ErrorBody,
    extract::{bad_query, read_json},
    views::{DeadBulkBody, DeadBulkView, DeadCountView, DeadListView, DeadOpView, DeadQuery},
};
use crate::{
    dead_letters::{self, Bulk, DeadError, DeadLetters},
    store::DeadFilter,
};
use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
};

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "dead_job_not_found",
        format!("no dead-lettered job `{id}`"),
    )
}

impl From<DeadError> for ApiError {
    fn from(e: DeadError) -> Self {
        match e {
            DeadError::UnknownQueue(q) => ApiError::new(
                StatusCode::NOT_FOUND,
                "queue_not_found",
                format!("no queue named `{q}` is declared"),
            )
            .field("queue"),
            e => ApiError::internal(e),
        }
    }
}

impl AdminState {
    pub(super) fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(self.store().clone(), self.db().cloned())
    }
}

/// Builds a filter, naming the field at fault (`status` 400 for a query, 422 for a body).
pub(super) fn filter(
    status: StatusCode,
    queue: Option<String>,
    job: Option<String>,
    error: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<DeadFilter, ApiError> {
    let now = culm_core::now_ms();
    let code = if status == StatusCode::BAD_REQUEST {
        "invalid_query"
    } else {
        "invalid_request"
    };
    let bound = |field: &'static str, v: Option<&str>| {
        v.map(|s| dead_letters::parse_time_bound(s, now))
            .transpose()
            .map_err(|m| ApiError::new(status, code, format!("{field}: {m}")).field(field))
    };
    let window = dead_letters::window(bound("since", since)?, bound("until", until)?)
        .map_err(|m| ApiError::new(status, code, m).field("until"))?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(DeadFilter {
        queue: nonempty(queue),
        job: nonempty(job),
        error: nonempty(error),
        window,
    })
}

fn query_filter(q: &DeadQuery) -> Result<DeadFilter, ApiError> {
    filter(
        StatusCode::BAD_REQUEST,
        q.queue.clone(),
        q.job.clone(),
        q.error.clone(),
        q.since.as_deref(),
        q.until.as_deref(),
    )
}

/// Dead-lettered jobs, newest first, filtered by queue, job type, error text and time.
#[utoipa::path(get, path = "/v1/dead", tag = "dead letters", params(DeadQuery),
    responses((status = 200, body = DeadListView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "Unknown queue", body = ErrorBody)))]
pub(super) async fn list_dead(
    State(state): State<AdminState>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Json<DeadListView>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let f = query_filter(&q)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let jobs = state.dead_letters().list(&f, q.offset.unwrap_or(0), limit).await?;
    Ok(Json(DeadListView { jobs }))
}

/// How many dead jobs match a filter (what a bulk retry or purge with `all` acts on).
#[utoipa::path(get, path = "/v1/dead/count", tag = "dead letters", params(DeadQuery),
    responses((status = 200, body = DeadCountView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "Unknown queue", body = ErrorBody)))]
pub(super) async fn count_dead(
    State(state): State<AdminState>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Json<DeadCountView>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let count = state.dead_letters().count(&query_filter(&q)?).await?;
    Ok(Json(DeadCountView { count }))
}

/// Put a dead job back on its queue with a fresh attempt budget.
#[utoipa::path(post, path = "/v1/dead/{id}/retry", tag = "dead letters", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = DeadOpView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn retry_dead(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeadOpView>, ApiError> {
    let r = state.dead_letters().retry(&id).await?.ok_or_else(|| not_found(&id))?;
    tracing::info!(job_id = %id, queue = %r.queue, runs_as = %r.runs_as, "dead job re-driven over the admin API");
    Ok(Json(DeadOpView {
        id: r.runs_as,
        queue: r.queue,
    }))
}

/// Delete a dead job for good.
#[utoipa::path(delete, path = "/v1/dead/{id}", tag = "dead letters", params(("id" = String, Path, description = "Job id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn purge_dead(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.dead_letters().purge(&id).await? {
        return Err(not_found(&id));
    }
    tracing::info!(job_id = %id, "dead job purged over the admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// What a bulk body selects: ids, or a filter with `all`.
enum Selection {
    Ids(Vec<String>),
    Matching(DeadFilter),
}

fn selection(b: DeadBulkBody) -> Result<Selection, ApiError> {
    let invalid =
        |m: &str, field: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m).field(field);
    match (b.ids, b.all) {
        (Some(_), true) => Err(invalid("give ids or all, not both", "all")),
        (Some(ids), false) => {
            if ids.is_empty() {
                return Err(invalid("ids is empty", "ids"));
            }
            if b.queue.is_some() || b.job.is_some() || b.error.is_some() || b.since.is_some() || b.until.is_some() {
                return Err(invalid("filters apply only with all: true, not to ids", "ids"));
            }
            Ok(Selection::Ids(ids))
        }
        (None, true) => Ok(Selection::Matching(filter(
            StatusCode::UNPROCESSABLE_ENTITY,
            b.queue,
            b.job,
            b.error,
            b.since.as_deref(),
            b.until.as_deref(),
        )?)),
        (None, false) => Err(invalid(
            "give the ids to act on, or all: true with the filter (queue, job, error, since, until)",
            "ids",
        )),
    }
}

fn bulk_view(b: Bulk) -> Json<DeadBulkView> {
    Json(DeadBulkView {
        matched: b.matched,
        applied: b.applied,
        truncated: b.truncated,
    })
}

/// Re-drive a selection of dead jobs, or every dead job that matches a filter.
#[utoipa::path(post, path = "/v1/dead/retry", tag = "dead letters", request_body = DeadBulkBody,
    responses((status = 200, body = DeadBulkView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "Unknown queue", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn retry_dead_bulk(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DeadBulkView>, ApiError> {
    let dl = state.dead_letters();
    let b = match selection(read_json(&state, &headers, body).await?)? {
        Selection::Ids(ids) => Bulk {
            matched: ids.len(),
            applied: dl.retry_ids(&ids).await?.len(),
            truncated: false,
        },
        Selection::Matching(f) => dl.retry_matching(&f).await?,
    };
    tracing::info!(
        matched = b.matched,
        retried = b.applied,
        "dead jobs re-driven in bulk over the admin API"
    );
    Ok(bulk_view(b))
}

/// Purge a selection of dead jobs, or every dead job that matches a filter.
#[utoipa::path(post, path = "/v1/dead/purge", tag = "dead letters", request_body = DeadBulkBody,
    responses((status = 200, body = DeadBulkView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "Unknown queue", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn purge_dead_bulk(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DeadBulkView>, ApiError> {
    let dl = state.dead_letters();
    let b = match selection(read_json(&state, &headers, body).await?)? {
        Selection::Ids(ids) => Bulk {
            matched: ids.len(),
            applied: dl.purge_ids(&ids).await?,
            truncated: false,
        },
        Selection::Matching(f) => dl.purge_matching(&f).await?,
    };
    tracing::info!(
        matched = b.matched,
        purged = b.applied,
        "dead jobs purged in bulk over the admin API"
    );
    Ok(bulk_view(b))
}
