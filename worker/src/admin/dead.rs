//! `/v1/dead`: list, re-drive and purge dead letters. With PostgreSQL the archive is the
//! source, since it outlives Redis's dead-letter sets.
use super::{
    AdminState, ApiError,
    error::ErrorBody,
    extract::bad_query,
    views::{DeadListView, DeadOpView, DeadQuery},
};
use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::StatusCode,
};

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "dead_job_not_found",
        format!("no dead-lettered job `{id}`"),
    )
}

/// Dead-lettered jobs.
#[utoipa::path(get, path = "/v1/dead", tag = "dead letters", params(DeadQuery),
    responses((status = 200, body = DeadListView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "Unknown queue", body = ErrorBody)))]
pub(super) async fn list_dead(
    State(state): State<AdminState>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Json<DeadListView>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let queues: Vec<String> = match q.queue {
        Some(name) => {
            state.known_queue(&name)?;
            vec![name]
        }
        None => state.store().routing().queues.keys().cloned().collect(),
    };
    if let Some(db) = state.db() {
        let only = (queues.len() == 1).then(|| queues[0].as_str());
        let jobs = db
            .dead_list_merged(state.store(), only, limit)
            .await
            .map_err(ApiError::internal)?;
        return Ok(Json(DeadListView { jobs }));
    }
    let mut jobs = Vec::new();
    for name in queues {
        let dead = state
            .store()
            .dead_list(&name, limit)
            .await
            .map_err(ApiError::internal)?;
        jobs.extend(dead);
    }
    Ok(Json(DeadListView { jobs }))
}

async fn dead_queue(state: &AdminState, id: &str) -> Result<String, ApiError> {
    state
        .store()
        .dead_queue_of(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| not_found(id))
}

/// Put a dead job back on its queue with a fresh attempt budget.
#[utoipa::path(post, path = "/v1/dead/{id}/retry", tag = "dead letters", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = DeadOpView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn retry_dead(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeadOpView>, ApiError> {
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
        return Err(not_found(&id));
    }
    tracing::info!(job_id = %id, queue = %queue, "dead job re-driven over the admin API");
    Ok(Json(DeadOpView { id, queue }))
}

/// Delete a dead job for good.
#[utoipa::path(delete, path = "/v1/dead/{id}", tag = "dead letters", params(("id" = String, Path, description = "Job id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn purge_dead(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
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
            return Err(not_found(&id));
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
