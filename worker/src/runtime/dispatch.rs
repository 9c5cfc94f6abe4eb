//! The handler service: runs one delivery through its registered handler with the queue's
//! timeout, turns panics into failures, and decides what happens next (done, retry with
//! backoff, defer, dead) as a [`Completion`].
use crate::{
    config::QueueSettings,
    store::{AckKind, Delivery},
    telemetry,
};
use apalis_core::task::Task;
use culm_core::{Deps, EnqueueRequest, Enqueuer, JobContext, JobError, Registry, RunResult, now_ms};
use futures::{FutureExt, future::BoxFuture};
use std::{
    convert::Infallible,
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower_service::Service;
use tracing::Instrument;

/// What a run produced, before it is acknowledged.
#[derive(Debug)]
pub struct Completion {
    /// Job id.
    pub id: String,
    /// Attempt (fencing token).
    pub attempt: u32,
    /// Job type.
    pub job: String,
    /// What happens next.
    pub kind: AckKind,
    /// Error text for retries and dead letters.
    pub error: String,
    /// Follow-up jobs (only for successes).
    pub follow_ups: Vec<EnqueueRequest>,
    /// Ledger summary.
    pub summary: Option<String>,
    /// Run time.
    pub duration: Duration,
    /// When the handler started, µs since the epoch (0 if it never started).
    pub started_at_us: i64,
    /// Enqueue time, ms (for the ledger).
    pub enqueued_at_ms: i64,
    /// The job's idempotency key (for the dead-letter archive).
    pub idempotency_key: Option<String>,
    /// The payload, moved out of the delivery after the run (for the dead-letter archive).
    pub payload: Option<Box<serde_json::value::RawValue>>,
}

impl Completion {
    /// Turns this completion into a failure of `kind`.
    pub fn fail(&mut self, kind: AckKind, error: String) {
        tracing::warn!(job_id = %self.id, job = %self.job, "{error}");
        self.kind = kind;
        self.error = error;
    }
}

/// Runs deliveries of one queue.
#[derive(Clone)]
pub struct Dispatcher {
    pub(super) registry: Arc<Registry>,
    pub(super) settings: Arc<QueueSettings>,
    pub(super) enqueuer: Arc<dyn Enqueuer>,
    pub(super) deps: Deps,
}

fn ms_after(d: Duration) -> i64 {
    now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

impl Service<Task<Delivery>> for Dispatcher {
    type Response = Completion;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Completion, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<Delivery>) -> Self::Future {
        let d = task.args;
        let this = self.clone();
        let span =
            tracing::info_span!("job", job_id = %d.id, job = %d.envelope.job, queue = %d.queue, attempt = d.attempt);
        async move { Ok(this.run(d).await) }.instrument(span).boxed()
    }
}

impl Dispatcher {
    async fn run(self, d: Delivery) -> Completion {
        let s = &self.settings;
        let mut c = Completion {
            id: d.id.clone(),
            attempt: d.attempt,
            job: d.envelope.job.clone(),
            kind: AckKind::Done,
            error: String::new(),
            follow_ups: Vec::new(),
            summary: None,
            duration: Duration::ZERO,
            started_at_us: 0,
            enqueued_at_ms: d.envelope.enqueued_at,
            idempotency_key: d.envelope.idempotency_key.clone(),
            payload: None,
        };
        let Some(spec) = self.registry.get(&d.envelope.job) else {
            c.job = "unknown".into();
            c.fail(
                AckKind::Dead,
                format!(
                    "unknown job type `{}`: this binary has no handler for it",
                    d.envelope.job
                ),
            );
            telemetry::dead_without_run(&s.name, "unknown");
            c.payload = Some(d.envelope.payload);
            return c;
        };
        let due = d.envelope.run_at.max(d.envelope.enqueued_at);
        let wait_s = (now_ms() - due).max(0) as f64 / 1000.0;
        telemetry::started(&s.name, s.tier.as_str(), spec.name, wait_s);
        let ctx = JobContext::new(
            d.id.clone(),
            d.envelope.job.clone(),
            s.name.clone(),
            d.attempt,
            s.retry.max_attempts,
            d.envelope.enqueued_at,
            self.enqueuer.clone(),
            self.deps.clone(),
        );
        c.started_at_us = chrono::Utc::now().timestamp_micros();
        let start = Instant::now();
        let run = AssertUnwindSafe(spec.run(d.envelope.payload.get(), ctx)).catch_unwind();
        let result = tokio::time::timeout(s.timeout, run).await;
        c.duration = start.elapsed();
        let retry_or_dead = |c: &mut Completion, error: String, at_least: Option<Duration>| {
            if s.retry.allows_retry_after(d.attempt) {
                let backoff = s.retry.backoff(d.attempt).max(at_least.unwrap_or_default());
                c.fail(AckKind::Retry { at: ms_after(backoff) }, error);
            } else {
                c.fail(
                    AckKind::Dead,
                    format!("{error} (attempt {} of {}, giving up)", d.attempt, s.retry.max_attempts),
                );
            }
        };
        let ended = match result {
            Err(_) => {
                retry_or_dead(
                    &mut c,
                    format!("timed out after {}", humantime::format_duration(s.timeout)),
                    None,
                );
                telemetry::Ended::Retried
            }
            Ok(Err(panic)) => {
                retry_or_dead(
                    &mut c,
                    format!("handler panicked: {}", panic_message(panic.as_ref())),
                    None,
                );
                telemetry::Ended::Retried
            }
            Ok(Ok(RunResult::BadPayload(reason))) => {
                c.fail(AckKind::Dead, reason);
                telemetry::Ended::Dead
            }
            Ok(Ok(RunResult::Finished(Ok(outcome)))) => {
                tracing::debug!("done");
                c.summary = outcome.summary.map(|mut s| {
                    s.truncate(s.floor_char_boundary(512));
                    s
                });
                c.follow_ups = outcome.follow_ups;
                telemetry::Ended::Succeeded
            }
            Ok(Ok(RunResult::Finished(Err(JobError::Retryable { message, after })))) => {
                retry_or_dead(&mut c, message, after);
                telemetry::Ended::Retried
            }
            Ok(Ok(RunResult::Finished(Err(JobError::Permanent(message))))) => {
                c.fail(AckKind::Dead, message);
                telemetry::Ended::Dead
            }
            Ok(Ok(RunResult::Finished(Err(JobError::Defer { after, reason })))) => {
                tracing::info!("deferred for {}: {reason}", humantime::format_duration(after));
                c.kind = AckKind::Defer { at: ms_after(after) };
                c.error = reason;
                telemetry::Ended::Deferred
            }
        };
        let ended = match (&c.kind, ended) {
            (AckKind::Dead, telemetry::Ended::Retried) => telemetry::Ended::Dead,
            (_, e) => e,
        };
        if matches!(c.kind, AckKind::Dead) {
            tracing::error!(error = %c.error, "dead-lettered");
        }
        telemetry::finished(&s.name, spec.name, ended, c.duration.as_secs_f64());
        c.payload = Some(d.envelope.payload);
        c
    }
}
