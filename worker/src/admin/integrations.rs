//! `/v1/integrations`: every integration's limits, the rate in force, its breaker and
//! the last hour's calls, across every replica (the shared state in Redis, not this
//! process's metrics).
use super::{AdminState, ApiError, error::ErrorBody, views::IntegrationsView};
use axum::{Json, extract::State};

impl AdminState {
    /// Every configured integration's state (what `GET /v1/integrations` and the
    /// dashboard's integrations page show).
    pub(crate) async fn integrations(&self) -> Result<IntegrationsView, ApiError> {
        Ok(IntegrationsView {
            integrations: self.store().integrations(&self.inner.integrations).await?,
        })
    }
}

/// Every configured integration: per endpoint its limit (rate per window), the rate in
/// force (lowered while a 429 has cut the shared adaptive rate), and in the last hour,
/// summed over every replica, requests, 429s, failures, deferrals by the rate limiter and
/// by the open breaker, and mean latency; and the shared breaker's state, failures and,
/// while open, until when. Endpoints listed are those with a limit of their own and those
/// called in the last hour.
#[utoipa::path(get, path = "/v1/integrations", tag = "integrations",
    responses((status = 200, body = IntegrationsView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_integrations(State(state): State<AdminState>) -> Result<Json<IntegrationsView>, ApiError> {
    Ok(Json(state.integrations().await?))
}
