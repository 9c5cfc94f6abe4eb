//! Batch handlers: a job type whose handler takes up to [`BatchJob::MAX_BATCH`] jobs of
//! its type in one call ([`BatchJob::run_many`]), for upstreams that answer many items in
//! one request (a CRM's bulk upsert, polling many orders at once).
//!
//! Each job keeps its own life: its own lease, attempt number, retry budget and outcome.
//! The call answers one `Result` per job, in the order it received them; the worker
//! settles each job from its own answer exactly as if it had run alone. This is not a
//! tracked group of jobs (those have no shared handler call): it only changes how many
//! jobs one handler call sees.
use crate::{Job, JobContext, JobError, Outcome, RunResult};
use futures::{FutureExt, future::BoxFuture};
use std::{future::Future, time::Duration};

/// The most jobs any batch handler may take in one call.
pub const MAX_BATCH_LIMIT: usize = 1_000;

/// A job type whose handler takes many jobs of its type in one call. Register it with
/// [`Registry::register_batch`](crate::Registry::register_batch).
///
/// The worker groups the jobs of this type that its pool holds at the same moment (up to
/// `MAX_BATCH`, waiting at most [`BatchJob::LINGER`] after the first for more) and calls
/// `run_many` once for them. Each job still ends on its own: done, retried, deferred or
/// dead-lettered from its own `Result`. A panic or a timeout of the call counts against
/// every job of the call. Rate limits are per upstream request, so a call that sends
/// two requests takes two limiter slots whatever the number of jobs it serves.
///
/// `Job::run` still runs one job alone (the test kit's `perform`, a group of one); write
/// it with [`run_one`] so both paths share one handler.
pub trait BatchJob: Job {
    /// The most jobs one call takes (1 to [`MAX_BATCH_LIMIT`]). A pool never groups more
    /// jobs than it has slots (the queue's concurrency).
    const MAX_BATCH: usize;

    /// How long the first job of a group waits for more before the call starts (the
    /// group also starts as soon as it is full). Jobs fetched together reach the handler
    /// within microseconds of each other, so a few milliseconds collect them.
    const LINGER: Duration = Duration::from_millis(5);

    /// The handler: one `Result` per job, in the order received. An answer of the wrong
    /// length loses nothing: a job without an answer is retried (under its retry budget)
    /// with an error saying so, and a longer answer is ignored past the jobs' count.
    fn run_many(items: Vec<(Self, JobContext)>) -> impl Future<Output = Vec<Result<Outcome, JobError>>> + Send;
}

/// Runs one job through its batch handler: the body of a batch job type's `Job::run`.
pub async fn run_one<J: BatchJob>(job: J, ctx: JobContext) -> Result<Outcome, JobError> {
    J::run_many(vec![(job, ctx)])
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(missing_answer(0, 0, 1)))
}

/// The error of a job the handler gave no answer for.
pub(crate) fn missing_answer(index: usize, answered: usize, asked: usize) -> JobError {
    JobError::retryable(format!(
        "the batch handler answered {answered} results for {asked} jobs; job {} of the call got none",
        index + 1
    ))
}

/// The erased batch handler a [`JobSpec`](crate::JobSpec) holds: deserializes each
/// stored payload, calls `run_many` with the readable ones, and answers one
/// [`RunResult`] per input in input order (an unreadable payload is `BadPayload` and
/// never reaches the handler).
pub(crate) fn erased_run_many<J: BatchJob>(items: Vec<(&str, JobContext)>) -> BoxFuture<'static, Vec<RunResult>> {
    let asked = items.len();
    // Per input: Ok(position in the handler's call) or the unreadable payload's reason.
    let mut slots: Vec<Result<usize, String>> = Vec::with_capacity(asked);
    let mut call = Vec::with_capacity(asked);
    for (payload, ctx) in items {
        match crate::registry::deserialize_stored::<J>(payload) {
            Ok(job) => {
                slots.push(Ok(call.len()));
                call.push((job, ctx));
            }
            Err(reason) => slots.push(Err(reason)),
        }
    }
    let sent = call.len();
    async move {
        let answers: Vec<Option<Result<Outcome, JobError>>> = if sent == 0 {
            Vec::new()
        } else {
            J::run_many(call).await.into_iter().map(Some).collect()
        };
        let answered = answers.len();
        if answered != sent {
            tracing::warn!(
                job = J::NAME,
                "batch handler answered {answered} results for {sent} jobs; the jobs without one are retried"
            );
        }
        let mut answers = answers.into_iter();
        slots
            .into_iter()
            .map(|slot| match slot {
                Err(reason) => RunResult::BadPayload(reason),
                Ok(i) => RunResult::Finished(
                    answers
                        .next()
                        .flatten()
                        .unwrap_or_else(|| Err(missing_answer(i, answered, sent))),
                ),
            })
            .collect()
    }
    .boxed()
}
