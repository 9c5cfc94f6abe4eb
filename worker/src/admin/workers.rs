//! `/v1/workers`: the live `culm run` replicas, from the registry their heartbeats keep.
use super::{AdminState, ApiError, error::ErrorBody, views::WorkersView};
use axum::{Json, extract::State};

/// Every live `culm run` replica: id, host, version, queues with busy/capacity, start
/// time and last heartbeat. A replica that stops heartbeating leaves the list after
/// 15 s; one that shuts down cleanly leaves at once.
#[utoipa::path(get, path = "/v1/workers", tag = "workers",
    responses((status = 200, body = WorkersView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_workers(State(state): State<AdminState>) -> Result<Json<WorkersView>, ApiError> {
    Ok(Json(WorkersView {
        workers: state.store().workers().await?,
    }))
}
