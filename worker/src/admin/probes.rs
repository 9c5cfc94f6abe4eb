//! The open endpoints orchestrators and scrapers call: `/healthz`, `/readyz`, `/metrics`
//! and `/openapi.json`, plus the answers for unknown routes and methods.
use super::{AdminState, ApiError, error::ErrorBody, error::redact, views::HealthView};
use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::time::Duration;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()), responses((status = 200, body = HealthView)))]
pub(super) async fn healthz() -> Json<HealthView> {
    Json(HealthView { status: "ok".into() })
}

/// Readiness: Redis (and PostgreSQL, when configured) answer.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()),
    responses((status = 200, body = HealthView), (status = 503, description = "A dependency is down; `field` names it", body = ErrorBody)))]
pub(super) async fn readyz(State(state): State<AdminState>) -> Result<Json<HealthView>, ApiError> {
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
    // The error names the failure's kind only: sqlx errors can echo the URL.
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

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "probes", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    render_metrics(&state.inner.metrics)
}

pub(super) fn render_metrics(h: &PrometheusHandle) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        h.render(),
    )
        .into_response()
}

/// The OpenAPI 3 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "probes", security(()),
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub(super) async fn openapi_json(State(state): State<AdminState>) -> Response {
    let body = state.inner.openapi.get().cloned().unwrap_or_else(|| "{}".to_owned());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
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
