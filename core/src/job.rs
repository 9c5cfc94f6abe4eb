//! The [`Job`] trait: one typed payload, its routing, and its handler.
use crate::{JobContext, JobError, Outcome, RetryPolicy, Tier};
use serde::{Serialize, de::DeserializeOwned};
use std::{future::Future, time::Duration};

/// A job type. The struct is the payload (serialised as JSON); the associated constants
/// are its routing, declared next to it so a reader sees where it runs; `run` is the handler.
///
/// ```
/// use culm_core::{Job, JobContext, JobError, Outcome, Tier};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct SendReceipt { account_id: String }
///
/// impl Job for SendReceipt {
///     const NAME: &'static str = "example.send_receipt";
///     const QUEUE: &'static str = "bulk_mail";
///     const TIERS: &'static [Tier] = &[Tier::Batch];
///     async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
///         Ok(Outcome::done())
///     }
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The durable name of the job type (`family.action`). Stored with every job: renaming
    /// one strands jobs already enqueued under the old name.
    const NAME: &'static str;
    /// The queue the job goes to unless the enqueuer or the `[routes]` config overrides it.
    const QUEUE: &'static str;
    /// The tiers whose queues may run this job. Banking jobs list only [`Tier::Critical`].
    const TIERS: &'static [Tier];
    /// A short description, shown by `culm check` and the admin API.
    const DESCRIPTION: &'static str = "";
    /// How this job type is retried, wherever it runs; `None` takes its queue's policy.
    /// A `[job_types.<name>] retry` in the worker's configuration overrides this.
    const RETRY: Option<RetryPolicy> = None;
    /// How long one attempt may run, wherever it runs; `None` takes its queue's
    /// timeout. A `[job_types.<name>] timeout` in the configuration overrides this.
    const TIMEOUT: Option<Duration> = None;
    /// Every job of this type is unique by payload for at most this long: while one with
    /// an equal payload is pending, scheduled or running in its queue, enqueueing another
    /// returns that job's id. A request may give its own `unique_key` or `unique_for`.
    const UNIQUE_FOR: Option<Duration> = None;

    /// The handler. Return [`Outcome::done`] (optionally with follow-up jobs), or an error
    /// classified as retryable, permanent or deferred. Never block on another job.
    fn run(self, ctx: JobContext) -> impl Future<Output = Result<Outcome, JobError>> + Send;

    /// The JSON Schema of the payload, served by `GET /v1/job-types`, `culm jobs --json`
    /// and the OpenAPI document so callers can check a payload before sending it. Derive
    /// `schemars::JsonSchema` on the payload and return [`schema_of::<Self>()`](schema_of);
    /// the `job!` macro does both. A test checks every catalog job type has one.
    fn schema() -> Option<serde_json::Value> {
        None
    }

    /// An example payload, used by `culm check`, the smoke test and the docs.
    fn example() -> Option<Self> {
        None
    }
}

/// The JSON Schema (draft 2020-12) of `T`, with every subschema inlined (no `$defs`), so
/// it can be embedded as is in another document such as the OpenAPI one.
pub fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}
