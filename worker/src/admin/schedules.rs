//! `/v1/schedules`: list, trigger, pause and resume schedules.
use super::{
    AdminState, ApiError,
    error::ErrorBody,
    views::{SchedulesView, TicksView},
};
use crate::scheduler::{ScheduleStatus, Scheduler, SchedulerError, TickOutcome};
use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};

fn scheduler(state: &AdminState) -> Result<&Scheduler, ApiError> {
    state.inner.scheduler.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "schedules_unavailable",
            "this process has no schedule catalog loaded (see `culm check`)",
        )
    })
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::UnknownSchedule(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "schedule_not_found", e.to_string())
            }
            SchedulerError::Redis(e) => ApiError::internal(super::error::redact(&e)),
            SchedulerError::Encode { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "schedule_invalid", e.to_string())
            }
        }
    }
}

/// Every schedule.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, body = SchedulesView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(super) async fn list_schedules(State(state): State<AdminState>) -> Result<Json<SchedulesView>, ApiError> {
    let schedules = scheduler(&state)?.list().await?;
    Ok(Json(SchedulesView { schedules }))
}

/// One schedule.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn get_schedule(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleStatus>, ApiError> {
    Ok(Json(scheduler(&state)?.get(&name).await?))
}

/// A schedule's last ticks (at most 50), newest first, with what became of each: fired,
/// skipped for overlap, claimed elsewhere, paused, missed, triggered or error.
#[utoipa::path(get, path = "/v1/schedules/{name}/ticks", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = TicksView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn schedule_ticks(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<TicksView>, ApiError> {
    Ok(Json(TicksView {
        ticks: scheduler(&state)?.ticks(&name).await?,
    }))
}

/// Fire a schedule now (ignores its cadence, pause flag and overlap policy).
#[utoipa::path(post, path = "/v1/schedules/{name}/trigger", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, description = "`{\"outcome\": \"triggered\", \"job_id\": ...}`", body = TickOutcome),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn trigger_schedule(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<TickOutcome>, ApiError> {
    let outcome = scheduler(&state)?.trigger(&name).await?;
    tracing::info!(schedule = %name, "schedule triggered over the admin API");
    Ok(Json(outcome))
}

/// Pause a schedule on every replica (its ticks are skipped until resumed).
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn pause_schedule(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleStatus>, ApiError> {
    let s = scheduler(&state)?;
    s.pause(&name).await?;
    tracing::info!(schedule = %name, "schedule paused over the admin API");
    Ok(Json(s.get(&name).await?))
}

/// Resume a paused schedule.
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn resume_schedule(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleStatus>, ApiError> {
    let s = scheduler(&state)?;
    s.resume(&name).await?;
    tracing::info!(schedule = %name, "schedule resumed over the admin API");
    Ok(Json(s.get(&name).await?))
}
