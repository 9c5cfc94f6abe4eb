//! How operators see and steer schedules: the status the CLI and the admin API show (the
//! catalog entry, the next fire times, and what Redis holds: pause flag, last fire, last
//! outcome), and the pause flag every replica reads on every tick.
use super::{Scheduler, SchedulerError, catalog::Schedule};
use chrono::{DateTime, Utc};
use culm_core::now_ms;
use serde::Serialize;

/// One fire time, in the schedule's timezone and in UTC (RFC 3339).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FireTime {
    /// In the schedule's timezone, with its offset.
    pub local: String,
    pub utc: String,
}

/// One tick of a schedule and what became of it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TickEntry {
    /// The tick (RFC 3339, UTC); `None` for a manual trigger.
    pub tick: Option<String>,
    /// The tick in the schedule's timezone, with its offset.
    pub tick_local: Option<String>,
    /// `fired`, `caught_up`, `triggered`, `skipped_overlap`, `claimed_elsewhere` (another
    /// replica decided it and has its own entry), `paused`, `missed` or `error`.
    pub outcome: String,
    /// When it was recorded (RFC 3339, UTC).
    pub at: String,
    /// The job it enqueued.
    pub job_id: Option<String>,
    /// The error, for `error`.
    pub error: Option<String>,
    /// Recording time minus tick time, ms.
    pub lag_ms: Option<i64>,
}

/// A schedule as the CLI and admin API show it: the catalog entry, flattened, plus what
/// Redis knows of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScheduleStatus {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Paused by an operator (`None` when Redis was not consulted).
    pub paused: Option<bool>,
    /// The next three fire times.
    pub next_fire_times: Vec<FireTime>,
    /// Last fire, from Redis.
    pub last_fire: Option<LastFire>,
    /// Last outcome, from Redis.
    pub last_outcome: Option<LastOutcome>,
}

/// The last job a schedule enqueued.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LastFire {
    /// When it was enqueued (RFC 3339, UTC).
    pub at: String,
    /// The tick it was for (RFC 3339, UTC); `None` for a manual trigger.
    pub tick: Option<String>,
    pub job_id: String,
    pub queue: String,
    /// Enqueue time minus tick time, ms.
    pub lag_ms: Option<i64>,
}

/// The last decision about a schedule's tick.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LastOutcome {
    /// `fired`, `caught_up`, `triggered`, `skipped_overlap`, `paused`, `missed` or `error`.
    pub outcome: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The error, for `error`.
    pub error: Option<String>,
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The next `n` fire times of `s` after `now`, in its timezone and in UTC.
pub fn next_fire_times(s: &Schedule, now: DateTime<Utc>, n: usize) -> Vec<FireTime> {
    s.cadence
        .upcoming(now, n)
        .into_iter()
        .map(|t| FireTime {
            local: t.with_timezone(&s.cadence.tz()).to_rfc3339(),
            utc: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
        .collect()
}

/// How `s` is shown without consulting Redis.
pub fn describe(s: &Schedule, now: DateTime<Utc>) -> ScheduleStatus {
    ScheduleStatus {
        schedule: s.clone(),
        paused: None,
        next_fire_times: next_fire_times(s, now, 3),
        last_fire: None,
        last_outcome: None,
    }
}

impl Scheduler {
    /// Every schedule with its next fire times, pause flag, last fire and last outcome
    /// (`GET /v1/schedules`).
    pub async fn list(&self) -> Result<Vec<ScheduleStatus>, SchedulerError> {
        let names: Vec<&str> = self.inner.catalog.iter().map(|s| s.name.as_str()).collect();
        self.statuses(&names).await
    }

    /// One schedule's status (`GET /v1/schedules/{name}`).
    pub async fn get(&self, name: &str) -> Result<ScheduleStatus, SchedulerError> {
        self.schedule(name)?;
        let mut v = self.statuses(&[name]).await?;
        v.pop().ok_or_else(|| SchedulerError::UnknownSchedule(name.to_owned()))
    }

    async fn statuses(&self, names: &[&str]) -> Result<Vec<ScheduleStatus>, SchedulerError> {
        let now = Utc::now();
        let states = self.inner.store.schedule_states(names).await?;
        let mut out = Vec::with_capacity(names.len());
        for (name, stored) in names.iter().zip(states) {
            let s = self.schedule(name)?;
            let mut st = describe(s, now);
            st.paused = Some(stored.paused);
            let state = stored.fields;
            let num = |k: &str| state.get(k).and_then(|v| v.parse::<i64>().ok());
            if let (Some(job_id), Some(at)) = (state.get("job"), num("fired_at")) {
                st.last_fire = Some(LastFire {
                    at: rfc3339_ms(at).unwrap_or_default(),
                    tick: num("fired_tick").and_then(rfc3339_ms),
                    job_id: job_id.clone(),
                    queue: state.get("queue").cloned().unwrap_or_default(),
                    lag_ms: num("lag_ms"),
                });
            }
            if let (Some(outcome), Some(at)) = (state.get("outcome"), num("outcome_at")) {
                st.last_outcome = Some(LastOutcome {
                    outcome: outcome.clone(),
                    at: rfc3339_ms(at).unwrap_or_default(),
                    error: state.get("error").filter(|e| !e.is_empty()).cloned(),
                });
            }
            out.push(st);
        }
        Ok(out)
    }

    /// A schedule's last ticks (at most `store::TICK_HISTORY`), newest first, each with
    /// its outcome (`GET /v1/schedules/{name}/ticks`).
    pub async fn ticks(&self, name: &str) -> Result<Vec<TickEntry>, SchedulerError> {
        let s = self.schedule(name)?;
        let tz = s.cadence.tz();
        let records = self.inner.store.schedule_ticks(name).await?;
        Ok(records
            .into_iter()
            .map(|r| TickEntry {
                tick: r.tick.and_then(rfc3339_ms),
                tick_local: r
                    .tick
                    .and_then(DateTime::from_timestamp_millis)
                    .map(|t| t.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)),
                outcome: r.outcome,
                at: rfc3339_ms(r.at).unwrap_or_default(),
                job_id: Some(r.job).filter(|j| !j.is_empty()),
                error: Some(r.error).filter(|e| !e.is_empty()),
                lag_ms: r.lag_ms,
            })
            .collect())
    }

    /// Pauses a schedule on every replica: its ticks are recorded as `paused` and fire
    /// nothing until [`Scheduler::resume`] (`POST /v1/schedules/{name}/pause`).
    pub async fn pause(&self, name: &str) -> Result<(), SchedulerError> {
        self.schedule(name)?;
        self.inner.store.schedule_set_paused(name, Some(now_ms())).await?;
        tracing::info!(schedule = %name, "schedule paused");
        Ok(())
    }

    /// Resumes a paused schedule from its next tick; ticks that passed while it was paused
    /// are not caught up (`POST /v1/schedules/{name}/resume`).
    pub async fn resume(&self, name: &str) -> Result<(), SchedulerError> {
        self.schedule(name)?;
        self.inner.store.schedule_set_paused(name, None).await?;
        tracing::info!(schedule = %name, "schedule resumed");
        Ok(())
    }

    /// Whether a schedule is paused.
    pub async fn is_paused(&self, name: &str) -> Result<bool, SchedulerError> {
        Ok(self.inner.store.schedule_paused(name).await?)
    }
}
