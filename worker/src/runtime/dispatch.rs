//! The handler service: runs one delivery through its registered handler with the queue's
//! timeout, turns panics into failures, and hands how the run ended to
//! [`settle`](super::settle), which decides what happens next, as a [`Completion`].
use super::{
    pool::PoolShared,
    settle::{self, Completion, RunEnd},
};
use crate::{config::QueueSettings, store::Delivery, telemetry};
use apalis_core::task::Task;
use culm_core::{Deps, Enqueuer, JobContext, Registry, RunResult, now_ms};
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

/// The result as raw JSON, or `None` (logged) when it is larger than `max` bytes: the run
/// still counts as done, since its side effects happened.
fn bounded_result(result: &serde_json::Value, max: usize) -> Option<Box<serde_json::value::RawValue>> {
    let raw = serde_json::value::to_raw_value(result).ok()?;
    if raw.get().len() > max {
        tracing::warn!(
            "result of {} bytes dropped: over worker.result_max_bytes ({max})",
            raw.get().len()
        );
        return None;
    }
    Some(raw)
}

/// Runs deliveries of one queue.
#[derive(Clone)]
pub struct Dispatcher {
    pub(super) registry: Arc<Registry>,
    pub(super) settings: Arc<QueueSettings>,
    pub(super) enqueuer: Arc<dyn Enqueuer>,
    pub(super) deps: Deps,
    /// The pool, for each run's cancellation signal.
    pub(super) pool: Arc<PoolShared>,
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
        let span = tracing::info_span!("job", job_id = %d.id, job = %d.envelope.job, queue = %d.queue, attempt = d.attempt, token = d.token);
        async move { Ok(this.run(d).await) }.instrument(span).boxed()
    }
}

impl Dispatcher {
    async fn run(self, d: Delivery) -> Completion {
        let s = &self.settings;
        let mut c = Completion {
            id: d.id.clone(),
            attempt: d.attempt,
            token: d.token,
            job: d.envelope.job.clone(),
            verdict: settle::decide(s, d.attempt, RunEnd::Succeeded),
            ran: false,
            follow_ups: Vec::new(),
            summary: None,
            result: None,
            duration: Duration::ZERO,
            started_at_us: 0,
            wait_ms: None,
            enqueued_at_ms: d.envelope.enqueued_at,
            idempotency_key: d.envelope.idempotency_key.clone(),
            payload: None,
        };
        let Some(spec) = self.registry.get(&d.envelope.job) else {
            c.job = "unknown".into();
            c.verdict = settle::decide(s, d.attempt, RunEnd::UnknownJob);
            c.verdict.error = format!(
                "unknown job type `{}`: this binary has no handler for it",
                d.envelope.job
            );
            c.payload = Some(d.envelope.payload);
            return c;
        };
        let due = d.envelope.run_at.max(d.envelope.enqueued_at);
        let wait_ms = (now_ms() - due).max(0);
        c.wait_ms = u64::try_from(wait_ms).ok();
        let wait_s = wait_ms as f64 / 1000.0;
        telemetry::started(&s.name, s.tier.as_str(), spec.name, wait_s);
        let cancel = self.pool.cancellation(d.token);
        let ctx = JobContext::new(
            d.id.clone(),
            d.envelope.job.clone(),
            s.name.clone(),
            d.attempt,
            s.retry.max_attempts,
            d.envelope.enqueued_at,
            self.enqueuer.clone(),
            self.deps.clone(),
        )
        .with_origin(
            d.envelope
                .idempotency_key
                .as_deref()
                .and_then(culm_core::redrive_origin)
                .map(str::to_owned),
        )
        .with_cancellation(cancel.clone());
        c.ran = true;
        c.started_at_us = chrono::Utc::now().timestamp_micros();
        let start = Instant::now();
        let run = AssertUnwindSafe(spec.run(d.envelope.payload.get(), ctx)).catch_unwind();
        let result = tokio::time::timeout(s.timeout, run).await;
        c.duration = start.elapsed();
        let end = match result {
            Err(_) => RunEnd::TimedOut(s.timeout),
            Ok(Err(panic)) => RunEnd::Panicked(panic_message(panic.as_ref())),
            Ok(Ok(RunResult::BadPayload(reason))) => RunEnd::BadPayload(reason),
            Ok(Ok(RunResult::Finished(Ok(outcome)))) => {
                c.summary = outcome.summary.map(|mut s| {
                    s.truncate(s.floor_char_boundary(512));
                    s
                });
                c.follow_ups = outcome.follow_ups;
                c.result = outcome.result.and_then(|r| bounded_result(&r, s.result_max_bytes));
                RunEnd::Succeeded
            }
            Ok(Ok(RunResult::Finished(Err(e)))) => RunEnd::Failed(e),
        };
        // However it returned, a handler that saw the cancellation stopped because of it.
        let end = if cancel.observed() { RunEnd::Cancelled } else { end };
        c.verdict = settle::decide(s, d.attempt, end);
        match &c.verdict.kind {
            crate::store::AckKind::Done => tracing::debug!("done"),
            crate::store::AckKind::Cancelled => tracing::info!("{}", c.verdict.error),
            crate::store::AckKind::Defer { at } => {
                tracing::info!("deferred until {at}: {}", c.verdict.error)
            }
            _ => tracing::warn!("{}", c.verdict.error),
        }
        c.payload = Some(d.envelope.payload);
        c
    }
}
