//! culm's shared vocabulary, used by both `culm-jobs` and `culm-worker`.
//!
//! This crate owns the names every other crate speaks in: [`Tier`], the [`Job`] trait a
//! job type implements, the [`Outcome`] a handler returns, the [`EnqueueRequest`] that
//! describes a job to be stored, the [`JobContext`] a handler receives, and the
//! [`Registry`] that maps job type names to handlers. It knows nothing about Redis,
//! PostgreSQL or HTTP: storage lives in `culm-worker`, integrations in `culm-jobs`.

// A library every job author reads: public items are documented, and it never prints
// (handlers and the worker log through `tracing`).
#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

mod batch_job;
mod context;
mod enqueue;
mod error_path;
mod job;
mod outcome;
mod registry;
mod retry;
#[cfg(feature = "testing")]
pub mod testing;
mod tier;
pub mod time;
pub mod trace;

pub use batch_job::{BatchJob, MAX_BATCH_LIMIT, run_one};
pub use context::{BatchBuilder, Cancellation, Deps, JobContext, redrive_key, redrive_origin};
pub use enqueue::{
    BatchSpec, CreatedBatch, EnqueueError, EnqueueRequest, Enqueued, Enqueuer, MAX_UNIQUE_FOR_MS, Priority,
    check_idempotency_key, valid_idempotency_key,
};
pub use error_path::field_path;
pub use job::{Job, schema_of};
pub use outcome::{JobError, Outcome, key_follow_ups};
pub use registry::{JobSpec, Registry, RegistryError, RunResult};
pub use retry::{Backoff, RetryPolicy};
pub use tier::{Tier, UnknownTier};
pub use trace::TraceContext;

/// Milliseconds since the Unix epoch, the time unit culm stores everywhere.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
