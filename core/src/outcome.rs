//! What a handler returns: done (with follow-ups), or an error that says what to do next.
use crate::EnqueueRequest;
use std::time::Duration;

/// A successful run, with an optional short result summary and follow-up jobs.
///
/// Follow-ups are culm's continuations: a handler that needs another step does not wait
/// for it (the `.get()` deadlock of the Celery system), it returns the next job. The
/// worker enqueues follow-ups before acknowledging, with idempotency keys derived from
/// the parent job id, so a redelivered parent does not enqueue its children twice.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Bounded summary recorded in the ledger (truncated to 512 bytes).
    pub summary: Option<String>,
    /// Jobs to enqueue once this one succeeds.
    pub follow_ups: Vec<EnqueueRequest>,
    /// A JSON result for the caller, returned by `GET /v1/jobs/{id}` (and so by the
    /// clients' `wait`) until the queue's `result_ttl` passes. Bounded by
    /// `worker.result_max_bytes` once serialised; a larger one is dropped (and logged).
    pub result: Option<serde_json::Value>,
}

impl Outcome {
    /// Plain success.
    pub fn done() -> Self {
        Self::default()
    }

    /// Success with a summary for the ledger.
    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }

    /// Success with a JSON result for the caller (see [`Outcome::result`]). A value that
    /// does not serialise is recorded as its error message.
    pub fn with_result(mut self, result: impl serde::Serialize) -> Self {
        self.result = Some(
            serde_json::to_value(result)
                .unwrap_or_else(|e| serde_json::json!({ "unserialisable_result": e.to_string() })),
        );
        self
    }

    /// Adds a follow-up job (a continuation).
    pub fn then(mut self, job: EnqueueRequest) -> Self {
        self.follow_ups.push(job);
        self
    }

    /// Adds many follow-up jobs; they are enqueued in batches, not one round trip each.
    pub fn then_all(mut self, jobs: impl IntoIterator<Item = EnqueueRequest>) -> Self {
        self.follow_ups.extend(jobs);
        self
    }
}

/// Gives every follow-up of job `parent_id` that has no idempotency key the key
/// `<parent_id>:then:<index>`, so that a redelivered parent enqueues them only once. The
/// worker does this before enqueueing a successful run's follow-ups.
pub fn key_follow_ups(parent_id: &str, follow_ups: &mut [EnqueueRequest]) {
    for (i, f) in follow_ups.iter_mut().enumerate() {
        if f.idempotency_key.is_none() {
            f.idempotency_key = Some(format!("{parent_id}:then:{i}"));
        }
    }
}

/// Why a run did not succeed, and therefore what happens next.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt under the queue's retry policy (timeouts, 5xx, lost connections).
    #[error("{message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// Earliest retry the upstream asked for, if any.
        after: Option<Duration>,
    },
    /// Can never succeed (bad request, validation failure): dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
    /// Not now, and not the job's fault (rate limit, open breaker, 429): run again after
    /// `after` without spending an attempt.
    #[error("deferred for {after:?}: {reason}")]
    Defer {
        /// How long to wait.
        after: Duration,
        /// Why (shown in logs and the ledger).
        reason: String,
    },
}

impl JobError {
    /// A retryable error.
    pub fn retryable(message: impl Into<String>) -> Self {
        JobError::Retryable {
            message: message.into(),
            after: None,
        }
    }
    /// A permanent error: the job goes to the dead letters now.
    pub fn permanent(message: impl Into<String>) -> Self {
        JobError::Permanent(message.into())
    }
    /// Defers the job without spending an attempt.
    pub fn defer(after: Duration, reason: impl Into<String>) -> Self {
        JobError::Defer {
            after,
            reason: reason.into(),
        }
    }
}
