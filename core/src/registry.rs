//! The registry: job type name → routing, payload validation and erased handler.
use crate::{BatchJob, EnqueueError, Job, JobContext, JobError, Outcome, RetryPolicy, Tier};
use futures::{FutureExt, future::BoxFuture};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// What running a stored job produced.
#[derive(Debug)]
pub enum RunResult {
    /// The handler returned.
    Finished(Result<Outcome, JobError>),
    /// The stored payload does not deserialize into the job type: never retried.
    BadPayload(String),
}

type ErasedRun = Arc<dyn Fn(&str, JobContext) -> BoxFuture<'static, RunResult> + Send + Sync>;
type ErasedRunMany = fn(Vec<(&str, JobContext)>) -> BoxFuture<'static, Vec<RunResult>>;

/// A batch handler's erased form and how the worker groups its jobs ([`BatchJob`]).
#[derive(Clone, Copy)]
struct Grouping {
    linger: Duration,
    run_many: ErasedRunMany,
}
type Validate = fn(&serde_json::Value) -> Result<(), EnqueueError>;

/// One registered job type.
#[derive(Clone)]
pub struct JobSpec {
    /// Durable job type name.
    pub name: &'static str,
    /// Default queue.
    pub queue: &'static str,
    /// Tiers the job may run in.
    pub tiers: &'static [Tier],
    /// Human description.
    pub description: &'static str,
    /// Example payload, if the job type provides one.
    pub example: Option<serde_json::Value>,
    /// JSON Schema of the payload ([`Job::schema`]), if the job type provides one.
    pub schema: Option<serde_json::Value>,
    /// The job type's own retry policy ([`Job::RETRY`]), over its queue's.
    pub retry: Option<RetryPolicy>,
    /// The job type's own attempt timeout ([`Job::TIMEOUT`]), over its queue's.
    pub timeout: Option<Duration>,
    /// Uniqueness by payload of every job of this type ([`Job::UNIQUE_FOR`]).
    pub unique_for: Option<Duration>,
    /// The most jobs one handler call takes ([`BatchJob::MAX_BATCH`]); `None` for a job
    /// type whose handler takes one job at a time.
    pub max_batch: Option<usize>,
    validate: Validate,
    run: ErasedRun,
    grouping: Option<Grouping>,
}

impl JobSpec {
    /// Checks that `payload` deserializes into the job type; the error names the field.
    pub fn validate(&self, payload: &serde_json::Value) -> Result<(), EnqueueError> {
        (self.validate)(payload)
    }

    /// Deserializes the stored payload and runs the handler.
    pub fn run(&self, payload: &str, ctx: JobContext) -> BoxFuture<'static, RunResult> {
        (self.run)(payload, ctx)
    }

    /// How long the first job of a group waits for more ([`BatchJob::LINGER`]); `None`
    /// for a job type whose handler takes one job at a time.
    pub fn batch_linger(&self) -> Option<Duration> {
        self.grouping.map(|g| g.linger)
    }

    /// Runs the batch handler once for `items` (stored payloads with their contexts) and
    /// answers one [`RunResult`] per item, in order: an unreadable payload is
    /// `BadPayload` without reaching the handler, a job the handler gave no answer is a
    /// retryable failure. A job type without a batch handler runs each item alone, one
    /// after the other.
    pub fn run_many(&self, items: Vec<(&str, JobContext)>) -> BoxFuture<'static, Vec<RunResult>> {
        match self.grouping {
            Some(g) => (g.run_many)(items),
            None => {
                let runs: Vec<_> = items.into_iter().map(|(p, ctx)| self.run(p, ctx)).collect();
                async move {
                    let mut out = Vec::with_capacity(runs.len());
                    for r in runs {
                        out.push(r.await);
                    }
                    out
                }
                .boxed()
            }
        }
    }

    /// Whether the job may run in `tier`.
    pub fn allows(&self, tier: Tier) -> bool {
        self.tiers.contains(&tier)
    }

    /// The allowed tiers, comma separated (for messages).
    pub fn allowed_tiers(&self) -> String {
        self.tiers.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

/// A registration mistake in code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A batch job type's `MAX_BATCH` is 0 or above [`MAX_BATCH_LIMIT`](crate::MAX_BATCH_LIMIT).
    #[error("job type `{0}`: MAX_BATCH must be 1 to {max}", max = crate::MAX_BATCH_LIMIT)]
    BadBatch(&'static str),
    /// Two job types share a name.
    #[error("job type `{0}` is registered twice")]
    Duplicate(&'static str),
    /// A job type allows no tier at all.
    #[error("job type `{0}` allows no tier")]
    NoTiers(&'static str),
    /// A job type's name has characters outside `a-z`, `0-9`, `_` and `.`, or is longer
    /// than 100: names travel into stored envelopes, metric labels, the ledger and URLs.
    #[error("job type `{0}`: names use only a-z, 0-9, _ and . (at most 100 characters)")]
    BadName(&'static str),
    /// A job type's own `RETRY` allows no attempt, or its `TIMEOUT` is zero.
    #[error("job type `{0}`: {1}")]
    BadPolicy(&'static str, &'static str),
}

fn valid_job_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Every job type this binary can run.
#[derive(Clone, Default, Debug)]
pub struct Registry {
    specs: BTreeMap<&'static str, JobSpec>,
}

/// Turns a serde_path_to_error failure into the field at fault and the message.
fn describe<E: std::fmt::Display>(err: serde_path_to_error::Error<E>) -> (Option<String>, String) {
    let message = err.inner().to_string();
    (crate::field_path(err.path(), &message), message)
}

fn validate_as<J: Job>(payload: &serde_json::Value) -> Result<(), EnqueueError> {
    serde_path_to_error::deserialize::<_, J>(payload)
        .map(|_| ())
        .map_err(|e| {
            let (field, message) = describe(e);
            EnqueueError::InvalidPayload {
                job: J::NAME.to_owned(),
                field,
                message,
            }
        })
}

/// Reads a stored payload as `J`; the error names the field at fault.
pub(crate) fn deserialize_stored<J: Job>(payload: &str) -> Result<J, String> {
    let mut de = serde_json::Deserializer::from_str(payload);
    serde_path_to_error::deserialize::<_, J>(&mut de).map_err(|e| {
        let (field, message) = describe(e);
        match field {
            Some(f) => format!("payload does not deserialize into `{}` at `{f}`: {message}", J::NAME),
            None => format!("payload does not deserialize into `{}`: {message}", J::NAME),
        }
    })
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers job type `J`. Fails on a duplicate name, so a misconfigured binary never starts.
    pub fn register<J: Job>(&mut self) -> Result<&mut Self, RegistryError> {
        if J::TIERS.is_empty() {
            return Err(RegistryError::NoTiers(J::NAME));
        }
        if !valid_job_name(J::NAME) {
            return Err(RegistryError::BadName(J::NAME));
        }
        if self.specs.contains_key(J::NAME) {
            return Err(RegistryError::Duplicate(J::NAME));
        }
        if J::RETRY.as_ref().is_some_and(|r| r.max_attempts == 0) {
            return Err(RegistryError::BadPolicy(J::NAME, "RETRY must allow at least 1 attempt"));
        }
        if J::UNIQUE_FOR.is_some_and(|t| t.is_zero() || t.as_millis() > u128::from(crate::MAX_UNIQUE_FOR_MS)) {
            return Err(RegistryError::BadPolicy(
                J::NAME,
                "UNIQUE_FOR must be above zero and at most a year",
            ));
        }
        if J::TIMEOUT.is_some_and(|t| t.is_zero()) {
            return Err(RegistryError::BadPolicy(J::NAME, "TIMEOUT must be above zero"));
        }
        let run: ErasedRun = Arc::new(
            |payload: &str, ctx: JobContext| match deserialize_stored::<J>(payload) {
                Ok(job) => job.run(ctx).map(RunResult::Finished).boxed(),
                Err(reason) => futures::future::ready(RunResult::BadPayload(reason)).boxed(),
            },
        );
        let example = J::example().and_then(|e| serde_json::to_value(e).ok());
        self.specs.insert(
            J::NAME,
            JobSpec {
                name: J::NAME,
                queue: J::QUEUE,
                tiers: J::TIERS,
                description: J::DESCRIPTION,
                example,
                schema: J::schema(),
                retry: J::RETRY,
                timeout: J::TIMEOUT,
                unique_for: J::UNIQUE_FOR,
                max_batch: None,
                validate: validate_as::<J>,
                run,
                grouping: None,
            },
        );
        Ok(self)
    }

    /// Registers job type `J` with its batch handler: the worker groups jobs of this type
    /// and calls [`BatchJob::run_many`] once per group. Fails like [`Registry::register`],
    /// and on a `MAX_BATCH` of 0 or above [`MAX_BATCH_LIMIT`](crate::MAX_BATCH_LIMIT).
    pub fn register_batch<J: BatchJob>(&mut self) -> Result<&mut Self, RegistryError> {
        if !(1..=crate::MAX_BATCH_LIMIT).contains(&J::MAX_BATCH) {
            return Err(RegistryError::BadBatch(J::NAME));
        }
        self.register::<J>()?;
        if let Some(spec) = self.specs.get_mut(J::NAME) {
            spec.max_batch = Some(J::MAX_BATCH);
            spec.grouping = Some(Grouping {
                linger: J::LINGER,
                run_many: crate::batch_job::erased_run_many::<J>,
            });
        }
        Ok(self)
    }

    /// The spec of job type `name`.
    pub fn get(&self, name: &str) -> Option<&JobSpec> {
        self.specs.get(name)
    }

    /// Every registered job type, by name.
    pub fn iter(&self) -> impl Iterator<Item = &JobSpec> {
        self.specs.values()
    }

    /// Number of registered job types.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Order {
        order_id: String,
        quantity: u32,
    }
    impl Job for Order {
        const NAME: &'static str = "t.order";
        const QUEUE: &'static str = "q";
        const TIERS: &'static [Tier] = &[Tier::Critical];
        async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
            Ok(Outcome::done())
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = Registry::new();
        r.register::<Order>().expect("first registration");
        assert!(matches!(
            r.register::<Order>(),
            Err(RegistryError::Duplicate("t.order"))
        ));
        let spec = r.get("t.order").expect("registered");
        let missing = spec.validate(&serde_json::json!({"order_id": "a"}));
        assert!(
            matches!(missing, Err(EnqueueError::InvalidPayload { field: Some(ref f), .. }) if f == "quantity"),
            "{missing:?}"
        );
        let wrong = spec.validate(&serde_json::json!({"order_id": "a", "quantity": "x"}));
        assert!(
            matches!(wrong, Err(EnqueueError::InvalidPayload { field: Some(ref f), .. }) if f == "quantity"),
            "{wrong:?}"
        );
        assert!(
            spec.validate(&serde_json::json!({"order_id": "a", "quantity": 2}))
                .is_ok()
        );
    }

    #[derive(Serialize, Deserialize)]
    struct Spaced {}
    impl Job for Spaced {
        const NAME: &'static str = "t.has space}";
        const QUEUE: &'static str = "q";
        const TIERS: &'static [Tier] = &[Tier::Critical];
        async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
            Ok(Outcome::done())
        }
    }

    #[test]
    fn a_job_name_outside_the_allowed_characters_is_refused() {
        let mut r = Registry::new();
        assert!(
            matches!(r.register::<Spaced>(), Err(RegistryError::BadName("t.has space}"))),
            "job names become metric labels, ledger values and log fields"
        );
    }

    /// Answers one result fewer than it was given; `n` is each job's number.
    #[derive(Serialize, Deserialize)]
    struct Short {
        n: u32,
    }
    impl Job for Short {
        const NAME: &'static str = "t.short";
        const QUEUE: &'static str = "q";
        const TIERS: &'static [Tier] = &[Tier::Batch];
        async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
            crate::run_one(self, ctx).await
        }
    }
    impl crate::BatchJob for Short {
        const MAX_BATCH: usize = 10;
        async fn run_many(items: Vec<(Self, JobContext)>) -> Vec<Result<Outcome, JobError>> {
            let mut out: Vec<_> = items
                .iter()
                .map(|(j, _)| Ok(Outcome::done().with_summary(j.n.to_string())))
                .collect();
            out.pop();
            out
        }
    }

    fn ctx() -> JobContext {
        struct Nothing;
        impl crate::Enqueuer for Nothing {
            fn enqueue_batch(
                &self,
                _jobs: Vec<crate::EnqueueRequest>,
            ) -> BoxFuture<'_, Result<Vec<crate::Enqueued>, EnqueueError>> {
                futures::future::ready(Ok(Vec::new())).boxed()
            }
        }
        JobContext::new(
            "id".into(),
            "t.short".into(),
            "q".into(),
            1,
            3,
            0,
            Arc::new(Nothing),
            crate::Deps::default(),
        )
    }

    #[tokio::test]
    async fn a_batch_handler_answers_every_item_in_order_even_when_short() {
        let mut r = Registry::new();
        r.register_batch::<Short>().expect("register");
        let spec = r.get("t.short").expect("registered");
        assert_eq!(spec.max_batch, Some(10));
        let items = vec![
            (r#"{"n": 1}"#, ctx()),
            (r#"{"n": "x"}"#, ctx()),
            (r#"{"n": 3}"#, ctx()),
            (r#"{"n": 4}"#, ctx()),
        ];
        let out = spec.run_many(items).await;
        let summary = |r: &RunResult| match r {
            RunResult::Finished(Ok(o)) => o.summary.clone().unwrap_or_default(),
            other => format!("{other:?}"),
        };
        assert_eq!(out.len(), 4, "one answer per item: {out:?}");
        assert_eq!(summary(&out[0]), "1");
        assert!(
            matches!(&out[1], RunResult::BadPayload(m) if m.contains("`n`")),
            "an unreadable payload never reaches the handler: {out:?}"
        );
        assert_eq!(summary(&out[2]), "3");
        assert!(
            matches!(&out[3], RunResult::Finished(Err(JobError::Retryable { message, .. }))
                if message.contains("answered 2 results for 3 jobs")),
            "the item without an answer is retried, saying why: {out:?}"
        );
    }

    #[derive(Serialize, Deserialize)]
    struct Zero {}
    impl Job for Zero {
        const NAME: &'static str = "t.zero";
        const QUEUE: &'static str = "q";
        const TIERS: &'static [Tier] = &[Tier::Batch];
        async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
            Ok(Outcome::done())
        }
    }
    impl crate::BatchJob for Zero {
        const MAX_BATCH: usize = 0;
        async fn run_many(items: Vec<(Self, JobContext)>) -> Vec<Result<Outcome, JobError>> {
            items.into_iter().map(|_| Ok(Outcome::done())).collect()
        }
    }

    #[test]
    fn a_batch_size_of_zero_is_refused() {
        assert!(matches!(
            Registry::new().register_batch::<Zero>(),
            Err(RegistryError::BadBatch("t.zero"))
        ));
    }
}
