//! The scheduler: fires the periodic jobs of `schedules/*.toml`, exactly once per tick
//! across any number of replicas, without leader election.
//!
//! - [`catalog`] reads and validates the schedule files; [`cadence`] computes fire times
//!   (DST-safe) and is the `Schedule` behind apalis-cron's `CronScheduler`, which is the
//!   tick source: one tick stream per enabled schedule in every scheduler process.
//! - Every replica handles every tick. `lua/fire.lua` decides it atomically in the target
//!   queue's hash slot: it claims the tick key `…:tick:<name>:<tick_ms>` (SET NX
//!   semantics inside the script), refuses ticks at or before the last one decided
//!   there, applies the overlap policy, and pushes the job, all in one call. One replica
//!   gets `fired`; the others get `claimed_elsewhere` or `stale`.
//! - `store/lua/record.lua` keeps per-schedule state in `{<prefix>}:schedules:state:<name>`:
//!   the latest tick handled (for the missed-tick check at start-up), the last outcome
//!   and the last fire, and registers the schedule in `{<prefix>}:schedules:names`. Pauses
//!   live in `{<prefix>}:schedules:paused`, read on every tick by every replica. At start,
//!   the state of schedules no longer in the catalog is deleted.
//! - Every Redis call goes through the store's typed methods (`store/schedules.rs`),
//!   which name the keys with `store::keys`.
//! - The admin API calls [`Scheduler::list`], [`Scheduler::trigger`],
//!   [`Scheduler::pause`] and [`Scheduler::resume`].
pub mod cadence;
pub mod catalog;
mod status;

pub use status::{FireTime, LastFire, LastOutcome, ScheduleStatus, TickEntry, describe, next_fire_times};

use crate::{
    config::Config,
    store::{FireTick, Fired, ScheduleRecord, Store},
};
use apalis_cron::CronScheduler;
use catalog::{Catalog, Missed, Overlap, Schedule};
use chrono::Utc;
use culm_core::now_ms;
use futures::StreamExt;
use serde::Serialize;
use std::{sync::Arc, time::Duration};
use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};
use tracing::Instrument;

/// A scheduler failure.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// No schedule has that name.
    #[error("no schedule named `{0}` (see `culm schedules`)")]
    UnknownSchedule(String),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The job could not be encoded.
    #[error("cannot encode the job of schedule `{schedule}`: {message}")]
    Encode { schedule: String, message: String },
}

/// What happened to one tick (or trigger) on this replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TickOutcome {
    /// This replica enqueued the tick's job.
    Fired { job_id: String },
    /// This replica enqueued one catch-up run for ticks missed while no scheduler ran.
    CaughtUp { job_id: String },
    /// Enqueued by [`Scheduler::trigger`].
    Triggered { job_id: String },
    /// Skipped: the previous run had not finished (overlap = "skip").
    SkippedOverlap {
        /// The unfinished job.
        running_job_id: String,
    },
    /// Another replica decided this tick.
    ClaimedElsewhere,
    /// A later tick was already decided; this one is too late to fire.
    Stale,
    /// The schedule is paused.
    Paused,
    /// Ticks missed while no scheduler ran were skipped (missed = "skip").
    Missed,
    /// Redis failed; the tick was not fired by this replica.
    Error { message: String },
}

impl TickOutcome {
    /// The outcome's name (metric label and state).
    pub fn as_str(&self) -> &'static str {
        match self {
            TickOutcome::Fired { .. } => "fired",
            TickOutcome::CaughtUp { .. } => "caught_up",
            TickOutcome::Triggered { .. } => "triggered",
            TickOutcome::SkippedOverlap { .. } => "skipped_overlap",
            TickOutcome::ClaimedElsewhere => "claimed_elsewhere",
            TickOutcome::Stale => "stale",
            TickOutcome::Paused => "paused",
            TickOutcome::Missed => "missed",
            TickOutcome::Error { .. } => "error",
        }
    }

    /// The job enqueued, if any.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            TickOutcome::Fired { job_id } | TickOutcome::CaughtUp { job_id } | TickOutcome::Triggered { job_id } => {
                Some(job_id)
            }
            _ => None,
        }
    }
}

/// A tick decided by this replica (tests wait on these instead of sleeping).
#[derive(Debug, Clone)]
pub struct ScheduleEvent {
    pub schedule: String,
    /// The tick, ms since the epoch (`None` for a manual trigger).
    pub tick_ms: Option<i64>,
    pub outcome: TickOutcome,
}

struct Inner {
    store: Store,
    catalog: Catalog,
    claim_ttl_s: u64,
    events: crate::events::Events<ScheduleEvent>,
}

/// The scheduler engine and the operations the admin API calls. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("schedules", &self.inner.catalog.len())
            .finish_non_exhaustive()
    }
}

/// Running tick streams; [`RunningScheduler::shutdown`] stops them.
pub struct RunningScheduler {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// A scheduler over `store` for the schedules of `catalog`.
    pub fn new(store: Store, catalog: Catalog, config: &Config) -> Scheduler {
        let events = crate::events::Events::new(4096);
        Scheduler {
            inner: Arc::new(Inner {
                store,
                catalog,
                claim_ttl_s: config.scheduler.claim_ttl.as_secs().max(60),
                events,
            }),
        }
    }

    /// The schedules this scheduler fires, as loaded and validated.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Subscribes to the ticks this replica decides.
    pub fn events(&self) -> broadcast::Receiver<ScheduleEvent> {
        self.inner.events.subscribe()
    }

    fn schedule(&self, name: &str) -> Result<&Schedule, SchedulerError> {
        self.inner
            .catalog
            .get(name)
            .ok_or_else(|| SchedulerError::UnknownSchedule(name.to_owned()))
    }

    /// Enqueues the schedule's job now, whatever its cadence, pause or overlap policy
    /// (`POST /v1/schedules/{name}/trigger`). Later ticks see this run for their overlap
    /// check. Works for disabled schedules too.
    pub async fn trigger(&self, name: &str) -> Result<TickOutcome, SchedulerError> {
        let s = self.schedule(name)?.clone();
        let id = ulid::Ulid::new().to_string();
        let claim = format!("{name}:manual:{id}");
        let outcome = match self.fire(&s, None, Overlap::Allow, &id, &claim).await? {
            TickOutcome::Fired { job_id } => TickOutcome::Triggered { job_id },
            other => other,
        };
        self.record(&s, None, &outcome, true).await?;
        self.emit(&s, None, outcome.clone());
        Ok(outcome)
    }

    /// Decides one tick of schedule `name` (what every replica's tick stream calls):
    /// pause check, then the atomic claim/overlap/push, then the record. Redis errors are
    /// returned as [`TickOutcome::Error`].
    pub async fn fire_tick(&self, name: &str, tick_ms: i64) -> Result<TickOutcome, SchedulerError> {
        let s = self.schedule(name)?.clone();
        Ok(self.tick(&s, tick_ms, false).await)
    }

    async fn tick(&self, s: &Schedule, tick_ms: i64, catch_up: bool) -> TickOutcome {
        let result = async {
            if self.is_paused(&s.name).await? {
                return Ok(TickOutcome::Paused);
            }
            let id = ulid::Ulid::new().to_string();
            let claim = format!("{}:{tick_ms}", s.name);
            let outcome = self.fire(s, Some(tick_ms), s.overlap, &id, &claim).await?;
            Ok::<_, SchedulerError>(match outcome {
                TickOutcome::Fired { job_id } if catch_up => TickOutcome::CaughtUp { job_id },
                other => other,
            })
        }
        .await;
        let outcome = match result {
            Ok(o) => o,
            Err(e) => TickOutcome::Error { message: e.to_string() },
        };
        if let TickOutcome::Error { message } = &outcome {
            tracing::warn!(schedule = %s.name, tick_ms, "tick not fired: {message}");
        }
        let strong = !matches!(
            outcome,
            TickOutcome::ClaimedElsewhere | TickOutcome::Stale | TickOutcome::Paused | TickOutcome::Missed
        );
        if let Err(e) = self.record(s, Some(tick_ms), &outcome, strong).await {
            tracing::warn!(schedule = %s.name, tick_ms, "cannot record the tick's outcome: {e}");
        }
        self.emit(s, Some(tick_ms), outcome.clone());
        outcome
    }

    /// One call to `fire.lua` in the target queue's slot.
    async fn fire(
        &self,
        s: &Schedule,
        tick_ms: Option<i64>,
        overlap: Overlap,
        id: &str,
        claim: &str,
    ) -> Result<TickOutcome, SchedulerError> {
        let now = now_ms();
        // The job shows where it came from; the claim itself is in the tick namespace.
        let origin = format!("schedule:{claim}");
        // Each tick starts a new trace (stored when sampled): its runs and follow-ups
        // join it. With export off there is no trace to start.
        let span = tracing::info_span!(
            "schedule_tick",
            otel.name = "culm.schedule",
            otel.kind = "producer",
            schedule = %s.name,
            job = %s.job,
            queue = %s.queue,
            job_id = %id,
        );
        crate::otel::set_parent(&span, None);
        let trace = crate::otel::context_to_store(&span, None);
        let env = crate::store::NewEnvelope {
            job: &s.job,
            payload: Some(&s.payload),
            enqueued_at: now,
            run_at: now,
            idempotency_key: Some(&origin),
            trace: trace.as_ref(),
            compress_above: self.inner.store.compress_above(),
            ..Default::default()
        }
        .to_json()
        .map_err(|message| SchedulerError::Encode {
            schedule: s.name.clone(),
            message,
        })?;
        let fired = self
            .inner
            .store
            .schedule_fire(&FireTick {
                schedule: &s.name,
                queue: &s.queue,
                tick_ms,
                claim,
                skip_overlap: overlap == Overlap::Skip,
                claim_ttl_s: self.inner.claim_ttl_s,
                id,
                envelope: &env,
            })
            .instrument(span)
            .await?;
        Ok(match fired {
            Fired::Fired(job_id) => {
                crate::telemetry::enqueued(&s.queue, &s.job);
                TickOutcome::Fired { job_id }
            }
            Fired::Overlap(running_job_id) => TickOutcome::SkippedOverlap { running_job_id },
            Fired::Stale => TickOutcome::Stale,
            Fired::Claimed(_) => TickOutcome::ClaimedElsewhere,
        })
    }

    async fn record(
        &self,
        s: &Schedule,
        tick_ms: Option<i64>,
        outcome: &TickOutcome,
        strong: bool,
    ) -> Result<(), SchedulerError> {
        let now = now_ms();
        // An error does not count as handling the tick: a restart may still catch it up.
        let tick = match outcome {
            TickOutcome::Error { .. } => None,
            _ => tick_ms,
        };
        let label = match outcome {
            TickOutcome::ClaimedElsewhere | TickOutcome::Stale => "",
            o => o.as_str(),
        };
        let error = match outcome {
            TickOutcome::Error { message } => message.as_str(),
            _ => "",
        };
        self.inner
            .store
            .schedule_record(&ScheduleRecord {
                schedule: &s.name,
                queue: &s.queue,
                tick_ms: tick,
                now_ms: now,
                outcome: label,
                strong,
                job_id: outcome.job_id(),
                lag_ms: tick_ms.map(|t| now - t),
                error,
                // A stale tick is a lagging replica's view of a tick already decided.
                seen: match outcome {
                    TickOutcome::Stale => "",
                    o => o.as_str(),
                },
            })
            .await?;
        Ok(())
    }

    fn emit(&self, s: &Schedule, tick_ms: Option<i64>, outcome: TickOutcome) {
        let fired = outcome.job_id().map(|_| {
            let now = now_ms();
            let lag = tick_ms.map(|t| (now - t).max(0) as f64 / 1000.0).unwrap_or(0.0);
            (lag, now as f64 / 1000.0)
        });
        crate::telemetry::schedule_tick(&s.name, outcome.as_str(), fired);
        match &outcome {
            TickOutcome::Fired { job_id } | TickOutcome::CaughtUp { job_id } | TickOutcome::Triggered { job_id } => {
                tracing::info!(schedule = %s.name, job = %s.job, queue = %s.queue, job_id = %job_id, tick_ms, outcome = outcome.as_str(), "schedule fired")
            }
            o => tracing::debug!(schedule = %s.name, tick_ms, outcome = o.as_str(), "schedule tick"),
        }
        self.inner.events.send(ScheduleEvent {
            schedule: s.name.clone(),
            tick_ms,
            outcome,
        });
    }

    /// The missed-tick check one replica runs for `name` at start-up. If ticks passed
    /// since the last one any replica handled, `missed = "run_once"` fires one catch-up
    /// for the latest of them (claimed like any tick, so several replicas starting at once
    /// fire it once) and `missed = "skip"` records them as missed. With no history yet,
    /// it records the latest past tick as the baseline and fires nothing.
    pub async fn catch_up(&self, name: &str) -> Result<Option<TickOutcome>, SchedulerError> {
        let s = self.schedule(name)?.clone();
        let Some(latest) = s.cadence.latest_at_or_before(Utc::now()) else {
            return Ok(None);
        };
        let latest_ms = latest.timestamp_millis();
        let handled = self.inner.store.schedule_handled_tick(name).await?;
        match handled {
            None => {
                self.inner
                    .store
                    .schedule_record(&ScheduleRecord {
                        schedule: name,
                        queue: &s.queue,
                        tick_ms: Some(latest_ms),
                        now_ms: now_ms(),
                        ..ScheduleRecord::default()
                    })
                    .await?;
                Ok(None)
            }
            Some(h) if h >= latest_ms => Ok(None),
            Some(_) => Ok(Some(match s.missed {
                Missed::RunOnce => self.tick(&s, latest_ms, true).await,
                Missed::Skip => {
                    let outcome = TickOutcome::Missed;
                    self.record(&s, Some(latest_ms), &outcome, false).await?;
                    self.emit(&s, Some(latest_ms), outcome.clone());
                    outcome
                }
            })),
        }
    }

    /// Deletes what Redis holds about schedules that are no longer in the catalog (their
    /// state, pause flag and last-decided tick); returns their names. Disabled schedules
    /// are still in the catalog and keep theirs.
    pub async fn forget_removed(&self) -> Result<Vec<String>, SchedulerError> {
        let catalog = &self.inner.catalog;
        let gone = self
            .inner
            .store
            .schedule_forget(|name| catalog.get(name).is_some())
            .await?;
        if !gone.is_empty() {
            crate::telemetry::schedules_forgotten(gone.len());
            tracing::info!(schedules = ?gone, "deleted the state of schedules no longer in the catalog");
        }
        Ok(gone)
    }

    /// Deletes the state of removed schedules ([`Scheduler::forget_removed`]), then starts
    /// one tick stream per enabled schedule, each after its missed-tick check.
    pub fn start(&self) -> RunningScheduler {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = self
            .inner
            .catalog
            .iter()
            .filter(|s| s.enabled)
            .map(|s| tokio::spawn(self.clone().drive(s.name.clone(), stop_rx.clone())))
            .collect::<Vec<_>>();
        tracing::info!(schedules = tasks.len(), "scheduler started");
        let this = self.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = this.forget_removed().await {
                tracing::warn!("cannot delete the state of removed schedules: {e}");
            }
        }));
        RunningScheduler { stop, tasks }
    }

    /// One schedule's loop: apalis-cron's `CronScheduler` (over [`cadence::Cadence`])
    /// yields ticks; each is decided by [`Scheduler::fire_tick`]'s path.
    async fn drive(self, name: String, mut stop: watch::Receiver<bool>) {
        let Some(s) = self.inner.catalog.get(&name).cloned() else {
            return;
        };
        let stopped = |stop: &watch::Receiver<bool>| *stop.borrow();
        if let Err(e) = self.catch_up(&name).await {
            tracing::warn!(schedule = %name, "missed-tick check failed: {e}");
        }
        // The tick after which a rebuilt stream continues (seconds).
        let mut resume: Option<i64> = None;
        while !stopped(&stop) {
            let cadence = s.cadence.resuming_after(resume);
            let mut ticks = Box::pin(CronScheduler::new(cadence).with_timezone(s.cadence.tz()).into_stream());
            loop {
                let item = tokio::select! {
                    item = ticks.next() => item,
                    _ = stop.changed() => return,
                };
                match item {
                    Some(Ok(tick)) => {
                        self.tick(&s, tick_ms(tick.get_timestamp()), false).await;
                    }
                    // The stream's next tick had passed when it was polled (this task was
                    // busy, e.g. Redis was slow). The tick is due: decide it late, then
                    // rebuild the stream after it, which otherwise keeps reporting it.
                    // Ticks stay in order and none is skipped for stalls within
                    // `cadence::LATE_GRACE`.
                    Some(Err(apalis_cron::Error::OutOfRange { tick, .. })) => {
                        self.tick(&s, tick_ms(tick), false).await;
                        resume = i64::try_from(tick).ok();
                        break;
                    }
                    None => {
                        tracing::warn!(schedule = %name, "schedule has no further fire times");
                        return;
                    }
                }
            }
        }
    }
}

fn tick_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}

impl RunningScheduler {
    /// Stops every tick stream. A tick being decided may finish for up to 5 s (its
    /// Redis calls); then it is abandoned, which at worst leaves that tick unfired.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks;
        let all = futures::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(Duration::from_secs(5), all).await.is_err() {
            tracing::warn!("scheduler tasks did not stop within 5s; aborting them");
            tasks.iter().for_each(JoinHandle::abort);
        }
        tracing::info!("scheduler stopped");
    }
}
