//! Shared pieces of the job catalog: tier sets, the `job!` macro that declares a
//! typed payload with its routing and handler, follow-up helpers and batched fan-out.
use crate::http::Reply;
use culm_core::{EnqueueRequest, Job, JobContext, JobError, Outcome, Tier};

/// Banking: only the critical tier.
pub const CRITICAL: &[Tier] = &[Tier::Critical];
/// Synchronisation with external APIs.
pub const THIRD_PARTY: &[Tier] = &[Tier::ThirdParty];
/// Bulk work.
pub const BATCH: &[Tier] = &[Tier::Batch];
/// Statements and reports.
pub const REPORTING: &[Tier] = &[Tier::Reporting];

/// Jobs enqueued per round trip by fan-out jobs.
pub const FAN_OUT_BATCH: usize = 500;

/// A follow-up request for `job` (a continuation).
pub fn follow<J: Job>(job: &J) -> Result<EnqueueRequest, JobError> {
    EnqueueRequest::of(job).map_err(|e| JobError::permanent(e.to_string()))
}

/// Success with a summary naming the upstream call and the id it returned.
pub fn done(integration: &str, endpoint: &str, reply: &Reply) -> Outcome {
    let id = reply.str("id").unwrap_or("-");
    Outcome::done().with_summary(format!("{integration} {endpoint}: HTTP {} id={id}", reply.status))
}

/// Enqueues `jobs` in batches of [`FAN_OUT_BATCH`], one enqueue call per batch. Each job
/// gets the idempotency key `<this job's id>:fan:<index>`, so a redelivered fan-out job
/// re-enqueues nothing it already enqueued.
pub async fn fan_out(ctx: &JobContext, jobs: Vec<EnqueueRequest>) -> Result<usize, JobError> {
    let total = jobs.len();
    let keyed: Vec<EnqueueRequest> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.idempotency_key(format!("{}:fan:{i}", ctx.id)))
        .collect();
    for chunk in keyed.chunks(FAN_OUT_BATCH) {
        ctx.enqueue(chunk.to_vec()).await.map_err(|e| match e {
            culm_core::EnqueueError::Storage(m) => JobError::retryable(format!("fan-out enqueue failed: {m}")),
            other => JobError::permanent(format!("fan-out job rejected: {other}")),
        })?;
    }
    Ok(total)
}

/// Resolves a period keyword of a schedule payload (`yesterday`, `today`,
/// `previous_month`, `current_month`) against today's UTC date; anything else is
/// returned as written.
pub fn resolve_period(period: &str) -> String {
    use chrono::{Datelike, Duration as Days, Utc};
    let today = Utc::now().date_naive();
    match period {
        "today" => today.format("%Y-%m-%d").to_string(),
        "yesterday" => (today - Days::days(1)).format("%Y-%m-%d").to_string(),
        "current_month" => today.format("%Y-%m").to_string(),
        "previous_month" => {
            let first = today.with_day(1).unwrap_or(today);
            (first - Days::days(1)).format("%Y-%m").to_string()
        }
        other => other.to_owned(),
    }
}

/// Percent-encodes a path segment taken from a payload, so ids cannot change the path.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Declares a job type: a payload struct (serde, unknown fields rejected), its routing,
/// description, payload schema (derived), example payload and handler body (`|job, ctx| { ... }`).
#[macro_export]
#[doc(hidden)]
macro_rules! job {
    (
        $(#[$meta:meta])*
        $ty:ident = $name:literal in $queue:literal for $tiers:expr;
        $desc:literal;
        $(retry $retry:expr;)?
        $(timeout $timeout:expr;)?
        { $($(#[$fmeta:meta])* $field:ident : $fty:ty),* $(,)? }
        example $example:expr;
        |$this:ident, $ctx:ident| $body:block
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {
            $($(#[$fmeta])* pub $field: $fty),*
        }

        impl culm_core::Job for $ty {
            const NAME: &'static str = $name;
            const QUEUE: &'static str = $queue;
            const TIERS: &'static [culm_core::Tier] = $tiers;
            const DESCRIPTION: &'static str = $desc;
            $(const RETRY: Option<culm_core::RetryPolicy> = Some($retry);)?
            $(const TIMEOUT: Option<std::time::Duration> = Some($timeout);)?
            #[allow(unused_variables, reason = "handler bodies that ignore the payload or the context")]
            async fn run(self, $ctx: culm_core::JobContext) -> Result<culm_core::Outcome, culm_core::JobError> {
                let $this = self;
                $body
            }
            fn schema() -> Option<serde_json::Value> {
                Some(culm_core::schema_of::<Self>())
            }
            fn example() -> Option<Self> {
                Some($example)
            }
        }
    };
}
