//! Turning requests into typed values, with errors that name what to fix: JSON bodies
//! (413 over the size limit, 400 when not JSON, 422 naming the field), query strings and
//! queue names in paths.
use super::{AdminState, ApiError};
use axum::{
    body::Body,
    extract::rejection::QueryRejection,
    http::{HeaderMap, StatusCode, header},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Reads a JSON body: 413 over the size limit, 400 when it is not JSON, 422 naming the
/// field when it does not match `T`.
pub(super) async fn read_json<T: DeserializeOwned>(
    state: &AdminState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let max = state.inner.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {max} bytes (admin.max_body_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        if format!("{e:?}").contains("LengthLimit") {
            too_large()
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", "could not read the request body")
        }
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("body is not valid JSON: {e}"),
        )
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        let err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message.clone());
        match culm_core::field_path(e.path(), &message) {
            Some(field) => err.field(field),
            None => err,
        }
    })
}

/// A query string that does not parse: 400, naming `query`.
pub(super) fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()).field("query")
}

impl AdminState {
    /// 404 unless `name` is a declared queue.
    pub(super) fn known_queue(&self, name: &str) -> Result<(), ApiError> {
        if self.store().routing().queues.contains_key(name) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "queue_not_found",
                format!("no queue named `{name}` is declared"),
            ))
        }
    }
}
