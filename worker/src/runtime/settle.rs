//! Settling a job: the one place that decides what happens to a job when a lease ends,
//! and that records it.
//!
//! A lease ends because its handler returned (done, failed, timed out, panicked, asked
//! to defer), because the job could not run at all (unknown type, unreadable payload or
//! body), because its follow-ups could not be stored, or because the lease expired and
//! the reaper found it. Each of those becomes a [`Settlement`] here, under these rules:
//! - the retry budget and backoff: [`retry_or_dead`];
//! - an expired lease its holder never confirmed (no extend, no ack) was most likely
//!   never received (a lost fetch reply), so it is handed back without spending an
//!   attempt, at most `max_attempts` times per job so a job that kills its worker before
//!   the first extend still ends in the dead-letter set: [`expired`];
//! - every settlement goes through the pool's acker to `ack.lua`, fenced by its lease
//!   token; afterwards [`record`] writes the ledger row, the `JobEvent` and the metrics,
//!   for runs whose ack applied (and a `superseded` ledger row for runs that were fenced).
use crate::{
    config::QueueSettings,
    db::ledger::{DeadInfo, LedgerRow, RunOutcome},
    store::{Ack, AckKind, Corrupt, Expired, Finished},
    telemetry,
};
use culm_core::{EnqueueRequest, JobError, RetryPolicy, now_ms};
use serde_json::value::RawValue;
use std::{sync::Arc, time::Duration};

/// A lease was settled: emitted after the settlement is stored, and only if it applied
/// (a run whose lease had been taken over emits nothing).
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub id: String,
    pub queue: String,
    pub job: String,
    pub attempt: u32,
    /// The lease's fencing token.
    pub token: u64,
    pub kind: AckKind,
    /// The error recorded against the attempt (failures, deferrals, dead letters).
    pub error: String,
    /// When the handler started, µs since the epoch (0 if it never ran).
    pub started_at_us: i64,
}

/// What a run produced, before it is acknowledged.
#[derive(Debug)]
pub struct Completion {
    pub id: String,
    pub attempt: u32,
    /// The lease's fencing token.
    pub token: u64,
    pub job: String,
    /// What happens next, as the settle rules decided.
    pub(super) verdict: Verdict,
    /// The handler ran (false for unknown job types).
    pub ran: bool,
    /// Jobs to enqueue before the success is acknowledged.
    pub follow_ups: Vec<EnqueueRequest>,
    /// The handler's summary for the ledger, at most 512 bytes.
    pub summary: Option<String>,
    /// The handler's JSON result, at most `worker.result_max_bytes`.
    pub result: Option<Box<serde_json::value::RawValue>>,
    /// Instead of `result`, one over `worker.compress_above` bytes, compressed.
    pub result_z: Option<String>,
    pub duration: Duration,
    /// When the handler started, µs since the epoch (0 if it never started).
    pub started_at_us: i64,
    /// How long the job waited from its due time to its start, ms (`None`: never started).
    pub wait_ms: Option<u64>,
    pub enqueued_at_ms: i64,
    /// Kept for the dead-letter archive.
    pub idempotency_key: Option<String>,
    /// Moved out of the delivery after the run, for the dead-letter archive.
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// The trace context follow-ups continue (set only when there are follow-ups).
    pub trace: Option<culm_core::TraceContext>,
    /// The tracked batch the job is a member of (counted by the acknowledgement).
    pub batch: Option<Arc<str>>,
}

/// What recording a settlement needs of its pool: where rows, events and metrics go.
pub(super) struct Recorder {
    pub(super) queue: Arc<str>,
    pub(super) settings: Arc<QueueSettings>,
    pub(super) events: crate::events::Events<JobEvent>,
    pub(super) ledger: Option<crate::db::ledger::Ledger>,
    pub(super) worker_id: Arc<str>,
    pub(super) metrics: telemetry::RunMetrics,
}

/// What a done run leaves in the queue's `finished` hash, as JSON.
fn finished(c: &Completion) -> String {
    let f = Finished {
        job: c.job.clone(),
        attempts: c.attempt,
        enqueued_at: c.enqueued_at_ms,
        result: c.result.clone(),
        result_z: c.result_z.clone(),
        cancelled: c.verdict.kind == AckKind::Cancelled,
        expired: c.verdict.kind == AckKind::Expired,
    };
    serde_json::to_string(&f).unwrap_or_default()
}

/// Who ended the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// This process held the lease and ran (or tried to run) the job.
    Run,
    /// The reaper found the lease expired; whoever held it is gone or cut off.
    Reaper,
}

/// A lease's end, on its way to `ack.lua` and then to the ledger.
#[derive(Debug)]
pub struct Settlement {
    pub(super) ack: Ack,
    pub(super) source: Source,
    pub(super) job: String,
    pub(super) attempt: u32,
    /// When the handler started, µs since the epoch; 0 if it never did.
    pub(super) started_at_us: i64,
    /// From due to start, ms, for the queue's wait-time history; `None` if it never started.
    pub(super) wait_ms: Option<u64>,
    pub(super) duration: Duration,
    /// How the run counts in the job metrics; `None` when no handler ran.
    pub(super) ended: Option<telemetry::Ended>,
    pub(super) enqueued_at_ms: Option<i64>,
    pub(super) summary: Option<String>,
    pub(super) idempotency_key: Option<String>,
    /// Kept for dead-lettered runs, which the archive stores whole.
    pub(super) payload: Option<Box<RawValue>>,
}

/// How a run ended, before the retry rules apply.
#[derive(Debug)]
pub(super) enum RunEnd {
    Succeeded,
    Failed(JobError),
    TimedOut(Duration),
    Panicked(String),
    /// The payload does not deserialize into the job's type.
    BadPayload(String),
    /// This binary has no handler for the job type.
    UnknownJob,
    /// The handler returned after seeing an operator's cancellation.
    Cancelled,
    /// The run succeeded but its follow-up jobs could not be stored (`storage`: Redis
    /// failed, so trying again may work) or were rejected.
    FollowUpsFailed {
        storage: bool,
        error: String,
    },
}

/// The fate a rule chose, with the error recorded against the attempt.
#[derive(Debug)]
pub(super) struct Verdict {
    pub(super) kind: AckKind,
    pub(super) error: String,
    pub(super) ended: telemetry::Ended,
}

fn after(d: Duration) -> i64 {
    now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The retry budget: another attempt after backoff (at least `at_least`, an upstream's
/// `Retry-After`), or the dead-letter set once `attempt` was the last.
pub(super) fn retry_or_dead(retry: &RetryPolicy, attempt: u32, error: String, at_least: Option<Duration>) -> Verdict {
    if retry.allows_retry_after(attempt) {
        let backoff = retry.backoff(attempt).max(at_least.unwrap_or_default());
        Verdict {
            kind: AckKind::Retry { at: after(backoff) },
            error,
            ended: telemetry::Ended::Retried,
        }
    } else {
        Verdict {
            kind: AckKind::Dead,
            error: format!("{error} (attempt {attempt} of {}, giving up)", retry.max_attempts),
            ended: telemetry::Ended::Dead,
        }
    }
}

/// An attempt that would start after the job's `expires_at`: it does not run, and the job
/// ends `expired` (final, not dead-lettered: nothing failed).
pub(super) fn expired_before_start(expires_at: i64, attempt: u32) -> Verdict {
    Verdict {
        kind: AckKind::Expired,
        error: format!(
            "expired at {} before attempt {attempt} could start",
            culm_core::time::to_rfc3339(expires_at).unwrap_or_else(|| expires_at.to_string())
        ),
        // Unused: the completion says it did not run, so no run outcome is counted.
        ended: telemetry::Ended::Succeeded,
    }
}

/// The fate of a run that ended as `end`, under its job type's retry policy.
pub(super) fn decide(retry: &RetryPolicy, attempt: u32, end: RunEnd) -> Verdict {
    let dead = |error: String| Verdict {
        kind: AckKind::Dead,
        error,
        ended: telemetry::Ended::Dead,
    };
    match end {
        RunEnd::Succeeded => Verdict {
            kind: AckKind::Done,
            error: String::new(),
            ended: telemetry::Ended::Succeeded,
        },
        RunEnd::Failed(JobError::Retryable { message, after }) => retry_or_dead(retry, attempt, message, after),
        RunEnd::Failed(JobError::Permanent(message)) => dead(message),
        RunEnd::Failed(JobError::Defer { after: d, reason }) => Verdict {
            kind: AckKind::Defer { at: after(d) },
            error: reason,
            ended: telemetry::Ended::Deferred,
        },
        RunEnd::TimedOut(limit) => retry_or_dead(
            retry,
            attempt,
            format!("timed out after {}", humantime::format_duration(limit)),
            None,
        ),
        RunEnd::Panicked(message) => retry_or_dead(retry, attempt, format!("handler panicked: {message}"), None),
        RunEnd::Cancelled => Verdict {
            kind: AckKind::Cancelled,
            error: "cancelled by an operator while running; the handler stopped".to_owned(),
            ended: telemetry::Ended::Cancelled,
        },
        RunEnd::BadPayload(reason) => dead(reason),
        RunEnd::UnknownJob => dead("unknown job type: this binary has no handler for it".to_owned()),
        RunEnd::FollowUpsFailed { storage: true, error } => retry_or_dead(
            retry,
            attempt,
            format!("enqueueing follow-up jobs failed: {error}"),
            None,
        ),
        RunEnd::FollowUpsFailed { storage: false, error } => dead(format!("a follow-up job was rejected: {error}")),
    }
}

impl Settlement {
    /// A finished run of this process.
    pub(super) fn from_run(c: Completion) -> Self {
        Settlement {
            ack: Ack {
                finished: matches!(c.verdict.kind, AckKind::Done | AckKind::Expired | AckKind::Cancelled)
                    .then(|| finished(&c)),
                id: c.id,
                token: c.token,
                kind: c.verdict.kind,
                error: c.verdict.error,
                expired_only: false,
                batch: c.batch,
            },
            source: Source::Run,
            job: c.job,
            attempt: c.attempt,
            started_at_us: c.started_at_us,
            wait_ms: c.wait_ms,
            duration: c.duration,
            ended: c.ran.then_some(c.verdict.ended),
            enqueued_at_ms: Some(c.enqueued_at_ms),
            summary: c.summary,
            idempotency_key: c.idempotency_key,
            payload: c.payload,
        }
    }

    /// A leased job whose stored body cannot be read: it can never run.
    pub(super) fn corrupt(c: Corrupt) -> Self {
        Settlement {
            ack: Ack {
                id: c.id,
                token: c.token,
                kind: AckKind::Dead,
                error: c.error,
                expired_only: false,
                finished: None,
                // An unreadable body names no batch: such a member stays pending there.
                batch: None,
            },
            source: Source::Run,
            job: "unknown".to_owned(),
            attempt: c.attempt,
            started_at_us: 0,
            wait_ms: None,
            duration: Duration::ZERO,
            ended: None,
            enqueued_at_ms: None,
            summary: None,
            idempotency_key: None,
            payload: None,
        }
    }
}

/// The fate of a lease the reaper found expired.
pub(super) fn expired(s: &QueueSettings, e: Expired) -> Settlement {
    let retry = &s.policy(e.envelope.as_ref().map_or("", |env| env.job.as_str())).retry;
    let (kind, error) = if !e.confirmed && e.orphaned < retry.max_attempts {
        (
            AckKind::Defer { at: now_ms() },
            format!(
                "lease of attempt {} expired before its worker confirmed it (a lost fetch reply, or the worker died at once); the attempt is not counted",
                e.attempt
            ),
        )
    } else {
        let error = format!(
            "lease expired: the worker running attempt {} stopped responding",
            e.attempt
        );
        let v = retry_or_dead(retry, e.attempt, error, None);
        // A reaped job has already waited a whole lease: no backoff on top.
        let kind = match v.kind {
            AckKind::Retry { .. } => AckKind::Retry { at: now_ms() },
            k => k,
        };
        (kind, v.error)
    };
    let batch = e.envelope.as_ref().and_then(|env| env.batch.as_deref()).map(Arc::from);
    let (job, enqueued_at_ms, idempotency_key, payload) = match e.envelope {
        Some(env) => (env.job, Some(env.enqueued_at), env.idempotency_key, Some(env.payload)),
        None => ("unknown".to_owned(), None, None, None),
    };
    Settlement {
        ack: Ack {
            id: e.id,
            token: e.token,
            kind,
            error,
            expired_only: true,
            finished: None,
            batch,
        },
        source: Source::Reaper,
        job,
        attempt: e.attempt,
        started_at_us: 0,
        wait_ms: None,
        duration: Duration::ZERO,
        ended: None,
        enqueued_at_ms,
        summary: None,
        idempotency_key,
        payload,
    }
}

/// Records a written batch: `applied[i]` says whether `batch[i]`'s ack took effect.
/// Runs of this process are always in the ledger (a fenced one as `superseded`); the
/// reaper's settlements only when they applied, so two reapers never record one lease
/// twice. Events and outcome metrics follow the applied acks.
pub(super) fn record(shared: &Recorder, batch: &mut [Settlement], applied: &[bool]) {
    let queue = &*shared.queue;
    let finished_at_us = chrono::Utc::now().timestamp_micros();
    for (p, &applied) in batch.iter_mut().zip(applied) {
        if let Some(ended) = p.ended {
            // The run is over either way (busy gauge, duration); its outcome counts only
            // if it applied, so a superseded run is never counted as dead-lettered.
            shared
                .metrics
                .finished(&p.job, applied.then_some(ended), p.duration.as_secs_f64());
        }
        if applied {
            match (p.source, &p.ack.kind) {
                (Source::Reaper, kind) => telemetry::reaped(queue, &p.job, *kind == AckKind::Dead),
                (Source::Run, AckKind::Dead) if p.ended.is_none() => telemetry::dead_without_run(queue, &p.job),
                (_, AckKind::Expired) => telemetry::expired(queue, &p.job),
                _ => {}
            }
            if p.ack.kind == AckKind::Dead {
                tracing::error!(job_id = %p.ack.id, job = %p.job, queue, error = %p.ack.error, "dead-lettered");
            }
        } else if p.source == Source::Run {
            tracing::warn!(job_id = %p.ack.id, job = %p.job, queue, token = p.ack.token, "this run's lease had been taken over; its outcome was not applied");
        }
        if let Some(ledger) = &shared.ledger
            && (applied || p.source == Source::Run)
        {
            ledger.record(ledger_row(shared, p, applied, finished_at_us));
        }
        if applied && shared.events.wanted() {
            shared.events.send(JobEvent {
                id: p.ack.id.clone(),
                queue: queue.to_owned(),
                job: p.job.clone(),
                attempt: p.attempt,
                token: p.ack.token,
                kind: p.ack.kind.clone(),
                error: p.ack.error.clone(),
                started_at_us: p.started_at_us,
            });
        }
    }
}

fn ledger_row(shared: &Recorder, p: &mut Settlement, applied: bool, finished_at_us: i64) -> LedgerRow {
    let (outcome, next_run_at_ms) = match p.ack.kind {
        _ if !applied => (RunOutcome::Superseded, None),
        AckKind::Done => (RunOutcome::Succeeded, None),
        AckKind::Retry { at } => (RunOutcome::FailedWillRetry, Some(at)),
        AckKind::Defer { at } => (RunOutcome::Deferred, Some(at)),
        AckKind::Dead => (RunOutcome::Dead, None),
        AckKind::Expired => (RunOutcome::Expired, None),
        AckKind::Cancelled => (RunOutcome::Cancelled, None),
    };
    // Only a dead-lettering that took effect reaches the archive.
    let dead = (outcome == RunOutcome::Dead).then(|| DeadInfo {
        payload: p.payload.take().unwrap_or_default(),
        idempotency_key: p.idempotency_key.take(),
    });
    let worker_id = match p.source {
        Source::Run => shared.worker_id.to_string(),
        // The attempt ran elsewhere; this process only noticed its lease had expired.
        Source::Reaper => format!("reaper:{}", shared.worker_id),
    };
    LedgerRow {
        run_id: ulid::Ulid::new().to_string(),
        job_id: p.ack.id.clone(),
        job: p.job.clone(),
        queue: shared.queue.to_string(),
        tier: shared.settings.tier.as_str().to_owned(),
        attempt: p.attempt,
        outcome,
        error: (!p.ack.error.is_empty()).then(|| p.ack.error.clone()),
        enqueued_at_ms: p.enqueued_at_ms,
        started_at_us: (p.started_at_us > 0).then_some(p.started_at_us),
        finished_at_us,
        duration_ms: p.duration.as_secs_f64() * 1000.0,
        next_run_at_ms,
        worker_id,
        summary: p.summary.take(),
        dead,
    }
}
