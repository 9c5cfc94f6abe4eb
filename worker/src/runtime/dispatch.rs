//! The handler service: runs one delivery through its registered handler with the queue's
//! timeout, turns panics into failures, and hands how the run ended to
//! [`settle`](super::settle), which decides what happens next, as a [`Completion`].
use super::{
    grouped::{CallEnd, Groups, panic_message},
    pool::PoolShared,
    settle::{self, Completion, RunEnd},
};
use crate::{
    config::QueueSettings,
    otel,
    store::{AckKind, Delivery},
};
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
    /// The pool's open groups of batch job types.
    pub(super) groups: Arc<Groups>,
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
        let span = attempt_span(&d, self.settings.tier.as_str());
        async move { Ok(this.run(d).await) }.instrument(span).boxed()
    }
}

/// The span of one attempt (`culm.job` in traces): a child of the context stored with the
/// job, so every attempt, retry and deferral of a job lands in its enqueuer's trace. With
/// export off it is the plain log span, carrying the stored ids (if any) for log lines:
/// the attributes only traces read cost nothing then.
fn attempt_span(d: &Delivery, tier: &'static str) -> tracing::Span {
    use tracing::field::Empty;
    if !otel::enabled() {
        let span = tracing::info_span!(
            "job",
            job_id = %d.id,
            job = %d.envelope.job,
            queue = %d.queue,
            attempt = d.attempt,
            token = d.token,
            trace_id = Empty,
            span_id = Empty,
        );
        if let Some(t) = &d.envelope.trace {
            span.record("trace_id", t.trace_id());
            span.record("span_id", t.span_id());
        }
        return span;
    }
    let span = tracing::info_span!(
        "job",
        otel.name = "culm.job",
        otel.kind = "consumer",
        job_id = %d.id,
        job = %d.envelope.job,
        queue = %d.queue,
        tier,
        attempt = d.attempt,
        token = d.token,
        enqueued_at_ms = d.envelope.enqueued_at,
        wait_ms = Empty,
        outcome = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    otel::set_parent(&span, d.envelope.trace.as_ref());
    span
}

/// Records how the attempt ended on its span (exported spans only).
fn record_outcome(verdict: &settle::Verdict) {
    if !otel::enabled() {
        return;
    }
    let span = tracing::Span::current();
    let outcome = match verdict.kind {
        AckKind::Done => "done",
        AckKind::Retry { .. } => "retry",
        AckKind::Defer { .. } => "deferred",
        AckKind::Dead => "dead",
        AckKind::Expired => "expired",
        AckKind::Cancelled => "cancelled",
    };
    span.record("outcome", outcome);
    if matches!(verdict.kind, AckKind::Retry { .. } | AckKind::Dead) {
        span.record("otel.status_code", "error");
        span.record("otel.status_description", verdict.error.as_str());
    }
}

impl Dispatcher {
    async fn run(self, d: Delivery) -> Completion {
        let c = self.run_inner(d).await;
        record_outcome(&c.verdict);
        c
    }

    async fn run_inner(self, d: Delivery) -> Completion {
        let s = &self.settings;
        let mut c = Completion {
            id: d.id.clone(),
            attempt: d.attempt,
            token: d.token,
            job: d.envelope.job.clone(),
            verdict: settle::decide(&s.policy.retry, d.attempt, RunEnd::Succeeded),
            ran: false,
            follow_ups: Vec::new(),
            summary: None,
            result: None,
            result_z: None,
            duration: Duration::ZERO,
            started_at_us: 0,
            wait_ms: None,
            enqueued_at_ms: d.envelope.enqueued_at,
            idempotency_key: d.envelope.idempotency_key.clone(),
            payload: None,
            trace: None,
            batch: d.envelope.batch.as_deref().map(Arc::from),
        };
        // Celery's `expires`: an attempt that would start too late does not start at all,
        // whether it is the first or a retry. The job ends `expired`, not dead.
        if let Some(expires_at) = d.envelope.expires_at.filter(|&at| at <= now_ms()) {
            c.verdict = settle::expired_before_start(expires_at, d.attempt);
            return c;
        }
        let Some(spec) = self.registry.get(&d.envelope.job) else {
            c.job = "unknown".into();
            c.verdict = settle::decide(&s.policy.retry, d.attempt, RunEnd::UnknownJob);
            c.verdict.error = format!(
                "unknown job type `{}`: this binary has no handler for it",
                d.envelope.job
            );
            c.payload = Some(d.envelope.payload);
            return c;
        };
        let policy = s.policy(spec.name);
        let due = d.envelope.run_at.max(d.envelope.enqueued_at);
        let wait_ms = (now_ms() - due).max(0);
        if otel::enabled() {
            tracing::Span::current().record("wait_ms", wait_ms);
        }
        c.wait_ms = u64::try_from(wait_ms).ok();
        self.pool.recorder.metrics.started(spec.name, wait_ms as f64 / 1000.0);
        let cancel = self.pool.cancellation(d.token);
        let ctx = JobContext::new(
            d.id.clone(),
            d.envelope.job.clone(),
            s.name.clone(),
            d.attempt,
            policy.retry.max_attempts,
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
        .with_cancellation(cancel.clone())
        .with_batch(d.envelope.batch.clone().or_else(|| d.envelope.callback_of.clone()));
        c.ran = true;
        c.started_at_us = chrono::Utc::now().timestamp_micros();
        let start = Instant::now();
        let ended = if spec.max_batch.is_some_and(|n| n > 1) {
            // A batch job type: this delivery's part of one call for its group.
            self.groups
                .run(
                    spec,
                    policy.timeout,
                    d.envelope.payload.clone(),
                    ctx,
                    d.envelope.trace.clone(),
                )
                .await
        } else {
            let handler = spec.run(d.envelope.payload.get(), ctx);
            // The handler sees the stored context (`culm_core::trace::current`) for its partner
            // calls and its enqueues; a job without one and no export skips the task-local.
            let handler = match d.envelope.trace.clone() {
                None if !otel::enabled() => handler,
                trace => culm_core::trace::scope(trace, handler).boxed(),
            };
            let run = AssertUnwindSafe(handler).catch_unwind();
            match tokio::time::timeout(policy.timeout, run).await {
                Err(_) => CallEnd::TimedOut(policy.timeout),
                Ok(Err(panic)) => CallEnd::Panicked(panic_message(panic.as_ref())),
                Ok(Ok(r)) => CallEnd::Returned(r),
            }
        };
        c.duration = start.elapsed();
        let end = match ended {
            CallEnd::TimedOut(limit) => RunEnd::TimedOut(limit),
            CallEnd::Panicked(message) => RunEnd::Panicked(message),
            CallEnd::Abandoned => RunEnd::Failed(culm_core::JobError::retryable(
                "the grouped handler call stopped before answering for this job",
            )),
            CallEnd::Returned(RunResult::BadPayload(reason)) => RunEnd::BadPayload(reason),
            CallEnd::Returned(RunResult::Finished(Ok(outcome))) => {
                c.summary = outcome.summary.map(|mut s| {
                    s.truncate(s.floor_char_boundary(512));
                    s
                });
                c.follow_ups = outcome.follow_ups;
                if !c.follow_ups.is_empty() {
                    // Follow-ups continue this attempt's trace.
                    c.trace = otel::context_to_store(&tracing::Span::current(), d.envelope.trace.clone());
                }
                c.result = outcome.result.and_then(|r| bounded_result(&r, s.result_max_bytes));
                if let Some(r) = c
                    .result
                    .as_ref()
                    .filter(|r| s.compress_above > 0 && r.get().len() > s.compress_above)
                {
                    match crate::store::compress(r.get()) {
                        Ok(z) => {
                            c.result_z = Some(z);
                            c.result = None;
                        }
                        Err(e) => tracing::warn!("result kept uncompressed: {e}"),
                    }
                }
                RunEnd::Succeeded
            }
            CallEnd::Returned(RunResult::Finished(Err(e))) => RunEnd::Failed(e),
        };
        // However it returned, a handler that saw the cancellation stopped because of it.
        let end = if cancel.observed() { RunEnd::Cancelled } else { end };
        c.verdict = settle::decide(&policy.retry, d.attempt, end);
        match &c.verdict.kind {
            AckKind::Done => tracing::debug!("done"),
            AckKind::Cancelled => tracing::info!("{}", c.verdict.error),
            AckKind::Defer { at } => {
                tracing::info!("deferred until {at}: {}", c.verdict.error)
            }
            _ => tracing::warn!("{}", c.verdict.error),
        }
        c.payload = Some(d.envelope.payload);
        c
    }
}
