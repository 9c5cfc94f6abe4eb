//! The one error shape of the admin API: `{"error": {"code", "message", "field"?}}`.
use crate::store::StoreError;
use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use culm_core::EnqueueError;
use serde::Serialize;
use utoipa::ToSchema;

/// An API error with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message (never holds secrets).
    pub message: String,
    /// The request field at fault, as a path (`payload.sku`, `jobs[2].queue`).
    pub field: Option<String>,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`, `field`) and people (`message`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `unknown_job`, `invalid_payload`, `unauthorized`.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// The offending request field, when one is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error without a field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the request field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Prefixes the field path (for jobs inside a batch).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_owned(),
        });
        self
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::warn!("admin request failed: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the job store is unavailable; nothing was changed, retry later",
        )
    }
}

impl From<EnqueueError> for ApiError {
    fn from(e: EnqueueError) -> Self {
        let msg = e.to_string();
        match e {
            EnqueueError::UnknownJob { .. } => ApiError::new(StatusCode::NOT_FOUND, "unknown_job", msg).field("job"),
            EnqueueError::InvalidPayload { field, .. } => {
                let f = match field {
                    Some(f) if !f.is_empty() && f != "." => format!("payload.{f}"),
                    _ => "payload".to_owned(),
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload", msg).field(f)
            }
            EnqueueError::UnknownQueue { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_queue", msg).field("queue")
            }
            EnqueueError::TierNotAllowed { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "tier_not_allowed", msg).field("queue")
            }
            EnqueueError::InvalidRequest { field, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", msg).field(field)
            }
            EnqueueError::Storage(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}

/// Redis errors can echo the URL; keep only the kind and detail.
pub(super) fn redact(e: &redis::RedisError) -> String {
    format!("{:?}: {}", e.kind(), e.detail().unwrap_or("connection failed"))
}
