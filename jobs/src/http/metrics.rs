//! `culm_integration_*` metric names and recorders. The names live here because
//! culm-jobs cannot depend on the worker; `culm-worker`'s telemetry re-exports them and
//! calls [`describe`], so every `culm_*` name is still listed in `telemetry.rs`.
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Upstream responses (`integration`, `endpoint`, `status`: the HTTP status, or
/// `transport` / `timeout` for calls that got no response).
pub const REQUESTS: &str = "culm_integration_requests_total";
/// Latency of one upstream attempt (`integration`, `endpoint`).
pub const DURATION: &str = "culm_integration_request_duration_seconds";
/// Rate-limit decisions that cost time (`integration`, `endpoint`, `action`: `waited`,
/// `deferred`, `upstream` for a 429/503 Retry-After push-back).
pub const RATE_LIMITED: &str = "culm_integration_rate_limited_total";
/// The endpoint's effective rate in requests per second (`integration`, `endpoint`): the
/// configured limit, or less while a 429 has lowered the shared adaptive rate.
pub const EFFECTIVE_RATE: &str = "culm_integration_effective_rate";
/// Breaker state (`integration`): 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "culm_integration_breaker_state";
/// Breaker transitions (`integration`, `to`).
pub const BREAKER_TRANSITIONS: &str = "culm_integration_breaker_transitions_total";
/// Calls refused because the breaker was open (`integration`).
pub const BREAKER_REJECTED: &str = "culm_integration_breaker_rejected_total";

/// Registers descriptions of the integration metrics.
pub fn describe() {
    describe_counter!(REQUESTS, "Upstream responses by integration, endpoint and status.");
    describe_histogram!(DURATION, metrics::Unit::Seconds, "Latency of one upstream attempt.");
    describe_counter!(RATE_LIMITED, "Rate-limit waits, deferrals and upstream push-backs.");
    describe_gauge!(
        EFFECTIVE_RATE,
        "Effective (adaptive) request rate per second, by endpoint."
    );
    describe_gauge!(BREAKER_STATE, "Circuit breaker state: 0 closed, 1 half-open, 2 open.");
    describe_counter!(BREAKER_TRANSITIONS, "Circuit breaker transitions, by new state.");
    describe_counter!(BREAKER_REJECTED, "Calls refused (deferred) while the breaker was open.");
}

pub(crate) fn request(integration: &str, endpoint: &str, status: String, secs: f64) {
    counter!(REQUESTS, "integration" => integration.to_owned(), "endpoint" => endpoint.to_owned(), "status" => status)
        .increment(1);
    histogram!(DURATION, "integration" => integration.to_owned(), "endpoint" => endpoint.to_owned()).record(secs);
}

pub(crate) fn rate_limited(integration: &str, endpoint: &str, action: &'static str) {
    counter!(RATE_LIMITED, "integration" => integration.to_owned(), "endpoint" => endpoint.to_owned(), "action" => action)
        .increment(1);
}

pub(crate) fn breaker_state(integration: &str, value: f64) {
    gauge!(BREAKER_STATE, "integration" => integration.to_owned()).set(value);
}

pub(crate) fn breaker_transition(integration: &str, to: &'static str, value: f64) {
    counter!(BREAKER_TRANSITIONS, "integration" => integration.to_owned(), "to" => to).increment(1);
    breaker_state(integration, value);
}

pub(crate) fn breaker_rejected(integration: &str) {
    counter!(BREAKER_REJECTED, "integration" => integration.to_owned()).increment(1);
}

pub(crate) fn effective_rate(integration: &str, endpoint: &str, per_second: f64) {
    gauge!(EFFECTIVE_RATE, "integration" => integration.to_owned(), "endpoint" => endpoint.to_owned()).set(per_second);
}
