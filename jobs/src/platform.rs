//! Platform job types: no-ops for benchmarks and smoke tests, and jobs with controlled
//! behaviour (sleep, fail, panic, record) used by the test suite and the soak.
use culm_core::{EnqueueRequest, Job, JobContext, JobError, Outcome, Registry, RegistryError, Tier};
use redis::{aio::ConnectionManager, cluster_async::ClusterConnection};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The queue platform jobs go to by default.
pub const QUEUE: &str = "platform";

/// Registers the platform job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<Noop>()?
        .register::<Sleep>()?
        .register::<Fail>()?
        .register::<FailPermanently>()?
        .register::<Panic>()?
        .register::<Record>()?
        .register::<Chain>()?
        .register::<Echo>()?;
    Ok(())
}

/// Does nothing. Allowed in every tier; the benchmark and smoke tests use it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Noop {}

impl Job for Noop {
    const NAME: &'static str = "platform.noop";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Does nothing; for benchmarks and smoke tests.";
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Ok(Outcome::done())
    }
    fn example() -> Option<Self> {
        Some(Noop {})
    }
}

/// Sleeps for `ms` milliseconds (timeouts, drains, isolation benchmarks).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long to sleep.
    pub ms: u64,
}

impl Job for Sleep {
    const NAME: &'static str = "platform.sleep";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Sleeps for `ms` milliseconds.";
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Outcome::done())
    }
    fn example() -> Option<Self> {
        Some(Sleep { ms: 10 })
    }
}

/// Fails with a retryable error on its first `times` attempts, then succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// Attempts that fail.
    pub times: u32,
    /// The error message.
    #[serde(default = "default_fail_message")]
    pub message: String,
}

fn default_fail_message() -> String {
    "induced failure".to_owned()
}

impl Job for Fail {
    const NAME: &'static str = "platform.fail";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Fails its first `times` attempts with a retryable error.";
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        if ctx.attempt <= self.times {
            return Err(JobError::retryable(format!(
                "{} (attempt {})",
                self.message, ctx.attempt
            )));
        }
        Ok(Outcome::done().with_summary(format!("succeeded on attempt {}", ctx.attempt)))
    }
    fn example() -> Option<Self> {
        Some(Fail {
            times: 0,
            message: default_fail_message(),
        })
    }
}

/// Fails with a permanent error: dead-lettered at once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailPermanently {
    /// The error message.
    pub reason: String,
}

impl Job for FailPermanently {
    const NAME: &'static str = "platform.fail_permanently";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Fails with a permanent error.";
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Err(JobError::permanent(self.reason))
    }
}

/// Panics: proves a panicking handler is a failed attempt, not a crashed worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Panic {}

impl Job for Panic {
    const NAME: &'static str = "platform.panic";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Panics inside the handler.";
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    #[allow(clippy::panic, reason = "panicking is this job's purpose")]
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        panic!("platform.panic was asked to panic")
    }
}

/// Records its job id in a Redis set (and counts runs per id in `<set>:runs`, and the
/// tracked batch it belongs to in `<set>:batch`), after an optional sleep. The kill tests and the soak use it to prove nothing is lost.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Redis set key to add the job id to.
    pub set: String,
    /// Sleep before recording.
    #[serde(default)]
    pub sleep_ms: u64,
    /// A caller-chosen tag recorded instead of the job id, when given.
    #[serde(default)]
    pub tag: Option<String>,
    /// A Redis set the member is added to when the handler starts, before the sleep, so
    /// a caller can wait until the job is really running (not merely leased).
    #[serde(default)]
    pub started: Option<String>,
}

/// Whether `key` could be one of culm's own keys: a queue's (hash tag `{<prefix>:<queue>}`),
/// the scheduler's or the ledger's (`{<prefix>}:schedules:…`, `…:ledger:…`), an
/// integration limiter's or Bamboo's order records. The record jobs write wherever their
/// payload says, so a caller must not be able to point them at those.
fn culm_owned(key: &str) -> bool {
    let queue_slot = key
        .find('{')
        .and_then(|open| key[open..].find('}').map(|close| &key[open + 1..open + close]))
        .is_some_and(|tag| tag.contains(':'));
    queue_slot
        || [":schedules:", ":ledger:", ":integration:", ":bamboo:"]
            .iter()
            .any(|infix| key.contains(infix))
}

async fn record(ctx: &JobContext, set: &str, member: &str) -> Result<(), JobError> {
    if culm_owned(set) {
        return Err(JobError::permanent(format!(
            "`{set}` names one of culm's own keys; record sets live outside them"
        )));
    }
    let runs_key = format!("{set}:runs");
    let mut pipe = redis::pipe();
    pipe.sadd(set, member).ignore().hincr(&runs_key, member, 1).ignore();
    // A member or callback of a tracked batch also records the batch id it was given.
    if let Some(batch) = ctx.batch_id() {
        pipe.sadd(format!("{set}:batch"), batch).ignore();
    }
    // Standalone and Sentinel deployments provide a ConnectionManager; Redis Cluster a
    // cluster connection (there, `set` needs a hash tag so both keys share a slot).
    let send = async || {
        if let Some(c) = ctx.dep::<ConnectionManager>() {
            Some(pipe.exec_async(&mut c.as_ref().clone()).await)
        } else if let Some(c) = ctx.dep::<ClusterConnection>() {
            Some(pipe.exec_async(&mut c.as_ref().clone()).await)
        } else {
            None
        }
    };
    let mut written = send().await;
    // A connection that broke while this handler slept (a Redis outage the fault tests
    // inject) fails the first command on it and reconnects; that command never left
    // this process, so sending it once more records the run once.
    if let Some(Err(e)) = &written
        && e.is_connection_dropped()
    {
        written = send().await;
    }
    match written {
        Some(w) => w.map_err(|e| JobError::retryable(format!("recording to Redis failed: {e}"))),
        None => Err(JobError::permanent("no Redis connection available to platform jobs")),
    }
}

impl Job for Record {
    const NAME: &'static str = "platform.record";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Adds its id to a Redis set; for loss and duplicate checks.";
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let member = self.tag.clone().unwrap_or_else(|| ctx.id.clone());
        if let Some(started) = &self.started {
            record(&ctx, started, &member).await?;
        }
        if self.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        }
        record(&ctx, &self.set, &member).await?;
        Ok(Outcome::done())
    }
}

/// A chain of `steps` jobs, each recording `step-N` then continuing with the next:
/// the continuation pattern that replaces blocking `.get()` on a subtask.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// Redis set key to record each step in.
    pub set: String,
    /// This step's number, from 1.
    #[serde(default = "one")]
    pub step: u32,
    /// The last step.
    pub steps: u32,
}

fn one() -> u32 {
    1
}

impl Job for Chain {
    const NAME: &'static str = "platform.chain";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Runs `steps` jobs in sequence through continuations.";
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &self.set, &format!("step-{}", self.step)).await?;
        if self.step >= self.steps {
            return Ok(Outcome::done().with_summary("chain complete"));
        }
        let next = Chain {
            set: self.set,
            step: self.step + 1,
            steps: self.steps,
        };
        let req = EnqueueRequest::of(&next)
            .map_err(|e| JobError::permanent(e.to_string()))?
            .queue(ctx.queue.clone());
        Ok(Outcome::done().then(req))
    }
}

/// Returns `value` as its result: what `GET /v1/jobs/{id}` and the clients' `wait` show.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Echo {
    /// Any JSON value, returned as the job's result.
    #[serde(default)]
    pub value: serde_json::Value,
}

impl Job for Echo {
    const NAME: &'static str = "platform.echo";
    const QUEUE: &'static str = QUEUE;
    const TIERS: &'static [Tier] = &Tier::ALL;
    const DESCRIPTION: &'static str = "Returns `value` as the job's result.";
    fn schema() -> Option<serde_json::Value> {
        Some(culm_core::schema_of::<Self>())
    }
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Ok(Outcome::done().with_result(self.value))
    }
    fn example() -> Option<Self> {
        Some(Echo {
            value: serde_json::json!({"greeting": "hello"}),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::culm_owned;

    #[test]
    fn record_sets_cannot_name_culms_own_keys() {
        for owned in [
            "{culm:galileo}:paused",
            "{culm:q}:tick:s:1",
            "{culm:q}:idem:k",
            "{culm}:schedules:paused",
            "{culm}:ledger:spill",
            "culm:integration:{bamboo:place_order}:slots",
            "culm:bamboo:order:42",
        ] {
            assert!(culm_owned(owned), "{owned}");
        }
        for free in ["culmtest-01h:recorded", "{culmtest-01h}:seen", "soak:recorded", "demo"] {
            assert!(!culm_owned(free), "{free}");
        }
    }
}
