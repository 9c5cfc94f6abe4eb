//! The one place the client stack's Redis keys are named. Every key of an integration
//! carries a hash tag: `{<integration>:<endpoint>}` for an endpoint's limiter keys (one
//! script touches them together), `{<integration>}` for the breaker and the per-minute
//! call statistics, so each script or pipeline stays in one cluster slot.

/// The keys of one integration under a process's key prefix.
#[derive(Debug, Clone)]
pub struct IntegrationKeys {
    prefix: String,
    integration: String,
}

impl IntegrationKeys {
    /// Keys of `integration` under `prefix`.
    pub fn new(prefix: &str, integration: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            integration: integration.to_owned(),
        }
    }

    /// `endpoint`'s reserved send instants (list, ms, newest first).
    pub fn slots(&self, endpoint: &str) -> String {
        format!("{}:integration:{{{}:{endpoint}}}:slots", self.prefix, self.integration)
    }

    /// `endpoint`'s push-back: no send before this instant (ms).
    pub fn hold(&self, endpoint: &str) -> String {
        format!("{}:integration:{{{}:{endpoint}}}:hold", self.prefix, self.integration)
    }

    /// `endpoint`'s adaptive rate while a 429 has lowered it (hash `rate`, `at`, `cut`).
    pub fn rate(&self, endpoint: &str) -> String {
        format!("{}:integration:{{{}:{endpoint}}}:rate", self.prefix, self.integration)
    }

    /// The integration's shared circuit breaker (hash).
    pub fn breaker(&self) -> String {
        format!("{}:integration:{{{}}}:breaker", self.prefix, self.integration)
    }

    /// The integration's call statistics of `hour` (hours since the Unix epoch): a hash
    /// of `<minute>:<endpoint>:<what>` counters (see [`super::stats`]).
    pub fn stats(&self, hour: i64) -> String {
        format!("{}:integration:{{{}}}:stats:{hour}", self.prefix, self.integration)
    }
}
