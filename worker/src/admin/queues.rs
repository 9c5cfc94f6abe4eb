//! `/v1/queues`: counts, pause and resume.
use super::{
    AdminState, ApiError,
    error::ErrorBody,
    views::{QueueView, QueuesView},
};
use crate::store::QueueStats;
use axum::{
    Json,
    extract::{Path, State},
};

impl AdminState {
    fn queue_view(&self, stats: QueueStats) -> QueueView {
        let description = self
            .store()
            .routing()
            .queues
            .get(&stats.name)
            .map(|q| q.description.clone())
            .unwrap_or_default();
        QueueView { stats, description }
    }

    async fn current(&self, name: &str) -> Result<Json<QueueView>, ApiError> {
        let s = self.store().stats(name).await.map_err(ApiError::internal)?;
        Ok(Json(self.queue_view(s)))
    }
}

/// Every queue with its counts.
#[utoipa::path(get, path = "/v1/queues", tag = "queues",
    responses((status = 200, body = QueuesView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_queues(State(state): State<AdminState>) -> Result<Json<QueuesView>, ApiError> {
    let all = state.store().all_stats().await.map_err(ApiError::internal)?;
    Ok(Json(QueuesView {
        queues: all.into_iter().map(|s| state.queue_view(s)).collect(),
    }))
}

/// One queue with its counts.
#[utoipa::path(get, path = "/v1/queues/{name}", tag = "queues", params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn get_queue(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    state.known_queue(&name)?;
    state.current(&name).await
}

/// Pause a queue: it keeps accepting jobs, but no worker on any replica fetches from it.
#[utoipa::path(post, path = "/v1/queues/{name}/pause", tag = "queues", params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn pause_queue(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    state.known_queue(&name)?;
    state.store().pause(&name).await.map_err(ApiError::internal)?;
    tracing::info!(queue = %name, "queue paused over the admin API");
    state.current(&name).await
}

/// Resume a paused queue; its workers are woken at once.
#[utoipa::path(post, path = "/v1/queues/{name}/resume", tag = "queues", params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn resume_queue(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    state.known_queue(&name)?;
    state.store().resume(&name).await.map_err(ApiError::internal)?;
    tracing::info!(queue = %name, "queue resumed over the admin API");
    state.current(&name).await
}
