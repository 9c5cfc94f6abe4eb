//! A test kit for job types, in the spirit of River's `rivertest` and `Oban.Testing`:
//! run one job's handler inline with a test [`JobContext`], without a worker, a store
//! or Redis, then assert on what it returned and what it enqueued.
//!
//! Enabled by the `testing` feature; add `culm-core = { workspace = true, features =
//! ["testing"] }` to a crate's `[dev-dependencies]`.
//!
//! - [`TestKit::perform`] runs a typed job; [`TestKit::perform_request`] runs an
//!   [`EnqueueRequest`] (a follow-up, say) through the [`Registry`], as the worker does.
//! - Jobs the handler enqueues with [`JobContext::enqueue`] are recorded, not stored.
//!   With a registry ([`TestKit::with_registry`]) they are validated the way the store
//!   validates them (job type, payload, idempotency key), and a second enqueue with a
//!   key already used in this kit returns the first id with `created: false`, as the store does.
//! - [`Performed`] holds the handler's result. Follow-ups from [`Outcome::then`] carry the
//!   idempotency keys the worker gives them (`<parent id>:then:<i>` unless set).
//! - [`TestKit::perform_many`] runs jobs of a batch job type ([`BatchJob`]) through its
//!   batch handler in one call, with one [`Performed`] per job.
//! - Shared dependencies go in with [`TestKit::with_dep`]; `culm_jobs::testing` builds
//!   integration clients pointed at a fake upstream.
//!
//! What the kit does not do: routing (`[routes]`, queue tiers: `culm check` covers it),
//! timeouts, panics (a panicking handler panics the test), retries and backoff. Those
//! belong to the worker and have their own tests.
//!
//! ```
//! use culm_core::testing::TestKit;
//! use culm_core::{EnqueueRequest, Job, JobContext, JobError, Outcome, Registry, Tier};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Greet { name: String }
//!
//! impl Job for Greet {
//!     const NAME: &'static str = "example.greet";
//!     const QUEUE: &'static str = "platform";
//!     const TIERS: &'static [Tier] = &[Tier::Batch];
//!     async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
//!         if self.name.is_empty() {
//!             return Err(JobError::permanent("no name"));
//!         }
//!         // Fan-out now, and a continuation once this run succeeds.
//!         ctx.enqueue(vec![EnqueueRequest::raw("example.greet", serde_json::json!({"name": "again"}))])
//!             .await
//!             .map_err(|e| JobError::retryable(e.to_string()))?;
//!         let next = EnqueueRequest::of(&Greet { name: format!("{}!", self.name) })
//!             .map_err(|e| JobError::permanent(e.to_string()))?;
//!         Ok(Outcome::done().with_summary("greeted").then(next))
//!     }
//! }
//!
//! # block_on(async {
//! let mut registry = Registry::new();
//! registry.register::<Greet>().unwrap();
//! let kit = TestKit::new().with_registry(registry);
//!
//! let run = kit.perform(Greet { name: "ada".into() }).await;
//! assert_eq!(run.assert_done().summary.as_deref(), Some("greeted"));
//! let next: Vec<Greet> = run.follow_ups_of::<Greet>();
//! assert_eq!(next[0].name, "ada!");
//! run.assert_enqueued_with("example.greet", serde_json::json!({"name": "again"}));
//! // The follow-up carries the key the worker would give it.
//! let key = format!("{}:then:0", run.id);
//! assert_eq!(run.follow_ups()[0].idempotency_key.as_deref(), Some(key.as_str()));
//!
//! let failed = kit.perform(Greet { name: String::new() }).await;
//! assert_eq!(failed.assert_permanent(), "no name");
//! failed.refute_enqueued("example.greet");
//! # });
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
use crate::{
    BatchJob, Deps, EnqueueError, EnqueueRequest, Enqueued, Enqueuer, Job, JobContext, JobError, Outcome, Registry,
    RunResult, key_follow_ups, now_ms,
};
use futures::{FutureExt, future::BoxFuture};
use std::{
    collections::HashMap,
    future::IntoFuture,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// The attempt budget of a test context unless set: `queue_defaults.retry.max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Runs handlers inline. Cheap to clone; clones share the record of idempotency keys.
#[derive(Clone, Default)]
pub struct TestKit {
    deps: Deps,
    registry: Option<Arc<Registry>>,
    max_attempts: Option<u32>,
    keys: Arc<Mutex<HashMap<(String, String), String>>>,
}

impl std::fmt::Debug for TestKit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKit")
            .field("deps", &self.deps)
            .field("registry", &self.registry.as_ref().map(|r| r.len()))
            .finish_non_exhaustive()
    }
}

impl TestKit {
    /// A kit with no dependencies and no registry: enqueued jobs are recorded unchecked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates enqueued jobs and follow-ups against `registry`, and enables
    /// [`TestKit::perform_request`].
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = Some(Arc::new(registry));
        self
    }

    /// Adds a shared dependency, found by handlers with [`JobContext::dep`].
    pub fn with_dep<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.deps = self.deps.with(value);
        self
    }

    /// Replaces the dependencies.
    pub fn with_deps(mut self, deps: Deps) -> Self {
        self.deps = deps;
        self
    }

    /// The attempt budget the context reports (default [`DEFAULT_MAX_ATTEMPTS`]).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Runs `job` as attempt 1 of a fresh id in its default queue; `.attempt(n)`,
    /// `.id(..)` and `.queue(..)` change that before `.await`. The handler gets `job` as
    /// the worker would: serialized to JSON and read back, so a payload that does not
    /// survive storage fails permanently here too.
    pub fn perform<J: Job>(&self, job: J) -> Perform {
        let stored = serde_json::to_string(&job).and_then(|s| serde_json::from_str::<J>(&s));
        self.prepare(J::NAME.to_owned(), J::QUEUE.to_owned(), move |ctx| match stored {
            Ok(job) => job.run(ctx).map(RunResult::Finished).boxed(),
            Err(e) => {
                let reason = format!("`{}` does not survive storage as JSON: {e}", J::NAME);
                futures::future::ready(RunResult::BadPayload(reason)).boxed()
            }
        })
    }

    /// Runs a stored-form job (a follow-up, an example payload) through the registry, as
    /// the worker does: a payload that does not deserialize is a permanent failure.
    ///
    /// # Panics
    /// Without a registry, or when the job type is not registered in it.
    pub fn perform_request(&self, request: &EnqueueRequest) -> Perform {
        let Some(spec) = self.registry.as_ref().and_then(|r| r.get(&request.job)).cloned() else {
            panic!(
                "perform_request(`{}`) needs a registry with that job type: TestKit::with_registry",
                request.job
            )
        };
        let payload = request.payload.to_string();
        let queue = request.queue.clone().unwrap_or_else(|| spec.queue.to_owned());
        self.prepare(request.job.clone(), queue, move |ctx| spec.run(&payload, ctx))
    }

    fn prepare(
        &self,
        job: String,
        queue: String,
        run: impl FnOnce(JobContext) -> BoxFuture<'static, RunResult> + Send + 'static,
    ) -> Perform {
        Perform {
            kit: self.clone(),
            id: next_id(),
            job,
            queue,
            attempt: 1,
            run: Box::new(run),
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh job id: unique in the process, and across processes by its random part.
fn next_id() -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("test-{:08x}-{n}", rand::random::<u32>())
}

type Run = Box<dyn FnOnce(JobContext) -> BoxFuture<'static, RunResult> + Send>;

/// One run being set up; `.await` it to get the [`Performed`].
#[must_use = "a perform does nothing until awaited"]
pub struct Perform {
    kit: TestKit,
    id: String,
    job: String,
    queue: String,
    attempt: u32,
    run: Run,
}

impl Perform {
    /// The attempt number the context reports (from 1), e.g. to test a last attempt.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The job id (default: a fresh `test-…` id); the same id twice is a redelivery.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The queue the context reports (default: the job type's `QUEUE`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    async fn execute(self) -> Performed {
        let Perform {
            kit,
            id,
            job,
            queue,
            attempt,
            run,
        } = self;
        let (recorder, ctx) = kit.context(&id, &job, queue, attempt);
        let ran = run(ctx).await;
        kit.performed(id, job, attempt, &recorder, ran)
    }
}

impl TestKit {
    /// Runs `jobs` through their batch handler ([`BatchJob::run_many`]) in one call, as
    /// the worker runs a group: each as attempt 1 of a fresh id in its default queue,
    /// read back from JSON as stored. One [`Performed`] per job, in order; each records
    /// what its own context enqueued. A job the handler gave no answer is a retryable
    /// failure, as in the worker.
    pub async fn perform_many<J: BatchJob>(&self, jobs: Vec<J>) -> Vec<Performed> {
        let mut runs = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let id = next_id();
            let (recorder, ctx) = self.context(&id, J::NAME, J::QUEUE.to_owned(), 1);
            let payload = serde_json::to_string(job).unwrap_or_default();
            runs.push((id, recorder, ctx, payload));
        }
        let items = runs.iter().map(|(_, _, ctx, p)| (p.as_str(), ctx.clone())).collect();
        let results = crate::batch_job::erased_run_many::<J>(items).await;
        runs.into_iter()
            .zip(results)
            .map(|((id, recorder, _, _), ran)| self.performed(id, J::NAME.to_owned(), 1, &recorder, ran))
            .collect()
    }

    fn context(&self, id: &str, job: &str, queue: String, attempt: u32) -> (Arc<Recorder>, JobContext) {
        let recorder = Arc::new(Recorder {
            registry: self.registry.clone(),
            keys: self.keys.clone(),
            log: Mutex::default(),
        });
        let ctx = JobContext::new(
            id.to_owned(),
            job.to_owned(),
            queue,
            attempt,
            self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            now_ms(),
            recorder.clone(),
            self.deps.clone(),
        );
        (recorder, ctx)
    }

    fn performed(&self, id: String, job: String, attempt: u32, recorder: &Recorder, ran: RunResult) -> Performed {
        let result = match ran {
            RunResult::Finished(r) => r,
            RunResult::BadPayload(reason) => Err(JobError::Permanent(reason)),
        };
        let result = result.map(|mut outcome| {
            key_follow_ups(&id, &mut outcome.follow_ups);
            outcome
        });
        let rejected_follow_up = match (&result, &self.registry) {
            (Ok(outcome), Some(registry)) => outcome.follow_ups.iter().find_map(|f| check(registry, f).err()),
            _ => None,
        };
        let log = std::mem::take(&mut *lock(&recorder.log));
        Performed {
            id,
            job,
            attempt,
            result,
            enqueued: log.requests,
            enqueue_calls: log.calls,
            created: log.created,
            batches: log.batches,
            rejected_follow_up,
        }
    }
}

impl IntoFuture for Perform {
    type Output = Performed;
    type IntoFuture = BoxFuture<'static, Performed>;

    fn into_future(self) -> Self::IntoFuture {
        self.execute().boxed()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the store checks before writing a job, short of routing.
fn check(registry: &Registry, req: &EnqueueRequest) -> Result<(), EnqueueError> {
    let spec = registry
        .get(&req.job)
        .ok_or_else(|| EnqueueError::UnknownJob { job: req.job.clone() })?;
    if let Some(k) = &req.idempotency_key {
        crate::check_idempotency_key(k)?;
    }
    spec.validate(&req.payload)
}

#[derive(Default)]
struct Log {
    batches: Vec<crate::BatchSpec>,
    requests: Vec<EnqueueRequest>,
    calls: usize,
    created: usize,
}

/// The [`Enqueuer`] a test context gets: validates and records.
struct Recorder {
    registry: Option<Arc<Registry>>,
    keys: Arc<Mutex<HashMap<(String, String), String>>>,
    log: Mutex<Log>,
}

impl Recorder {
    fn record(&self, jobs: Vec<EnqueueRequest>) -> Result<Vec<Enqueued>, EnqueueError> {
        if let Some(registry) = &self.registry {
            jobs.iter().try_for_each(|j| check(registry, j))?;
        }
        let mut keys = lock(&self.keys);
        let mut log = lock(&self.log);
        log.calls += 1;
        let mut out = Vec::with_capacity(jobs.len());
        for j in jobs {
            let queue = j
                .queue
                .clone()
                .or_else(|| {
                    let spec = self.registry.as_ref()?.get(&j.job)?;
                    Some(spec.queue.to_owned())
                })
                .unwrap_or_default();
            let fresh = next_id();
            let (id, created) = match &j.idempotency_key {
                Some(k) => {
                    let first = keys.entry((queue.clone(), k.clone())).or_insert_with(|| fresh.clone());
                    (first.clone(), *first == fresh)
                }
                None => (fresh, true),
            };
            log.created += usize::from(created);
            log.requests.push(j);
            out.push(Enqueued { id, queue, created });
        }
        Ok(out)
    }
}

impl Recorder {
    /// Records a batch like the store would take it: callbacks are checked, members
    /// without a key get the derived one, and the jobs are recorded.
    fn record_batch(&self, mut spec: crate::BatchSpec) -> Result<crate::CreatedBatch, EnqueueError> {
        if let Some(registry) = &self.registry {
            for cb in spec.on_complete.iter().chain(&spec.on_success) {
                check(registry, cb)?;
            }
        }
        for (i, j) in spec.jobs.iter_mut().enumerate() {
            if j.idempotency_key.is_none() {
                j.idempotency_key = Some(format!("batchm:{}:{}:{i}", spec.id, spec.member_keys));
            }
        }
        let jobs = self.record(spec.jobs.clone())?;
        let id = spec.id.clone();
        lock(&self.log).batches.push(spec);
        Ok(crate::CreatedBatch { id, jobs })
    }
}

impl Enqueuer for Recorder {
    fn enqueue_batch(&self, jobs: Vec<EnqueueRequest>) -> BoxFuture<'_, Result<Vec<Enqueued>, EnqueueError>> {
        futures::future::ready(self.record(jobs)).boxed()
    }

    fn create_batch(&self, batch: crate::BatchSpec) -> BoxFuture<'_, Result<crate::CreatedBatch, EnqueueError>> {
        futures::future::ready(self.record_batch(batch)).boxed()
    }

    fn add_to_batch(
        &self,
        batch: String,
        jobs: Vec<EnqueueRequest>,
        member_keys: String,
    ) -> BoxFuture<'_, Result<crate::CreatedBatch, EnqueueError>> {
        let spec = crate::BatchSpec {
            id: batch,
            jobs,
            member_keys,
            ..crate::BatchSpec::default()
        };
        futures::future::ready(self.record_batch(spec)).boxed()
    }
}

/// The result of one run, and what it enqueued.
#[derive(Debug)]
pub struct Performed {
    /// The job id the context had.
    pub id: String,
    /// The job type.
    pub job: String,
    /// The attempt number the context had.
    pub attempt: u32,
    /// What the handler returned. Follow-ups carry the worker's idempotency keys.
    pub result: Result<Outcome, JobError>,
    /// Jobs passed to [`JobContext::enqueue`] and accepted, in order.
    pub enqueued: Vec<EnqueueRequest>,
    /// Calls of [`JobContext::enqueue`] that were accepted (one per batch).
    pub enqueue_calls: usize,
    /// How many of [`Performed::enqueued`] were new, i.e. not an idempotency key this kit had seen.
    pub created: usize,
    /// Tracked batches created ([`JobContext::batch`]) or added to
    /// ([`JobContext::add_to_batch`], recorded with only the added jobs), in order. Their
    /// jobs are also in [`Performed::enqueued`]; their callbacks are not (they run later).
    pub batches: Vec<crate::BatchSpec>,
    /// The first follow-up the store would refuse (checked with a registry only). The
    /// worker dead-letters a job whose follow-up is refused.
    pub rejected_follow_up: Option<EnqueueError>,
}

impl Performed {
    fn fail(&self, expected: &str) -> ! {
        let got = match &self.result {
            Ok(_) => match &self.rejected_follow_up {
                Some(e) => format!("succeeded, but the worker would dead-letter it: a follow-up was rejected: {e}"),
                None => "succeeded".to_owned(),
            },
            Err(JobError::Retryable { message, after }) => format!("failed retryably (after {after:?}): {message}"),
            Err(JobError::Permanent(m)) => format!("failed permanently: {m}"),
            Err(JobError::Defer { after, reason }) => format!("was deferred by {after:?}: {reason}"),
        };
        panic!("expected `{}` ({}) to {expected}, but it {got}", self.job, self.id)
    }

    /// The outcome of a successful run whose follow-ups the store would accept.
    ///
    /// # Panics
    /// When the handler failed, or a follow-up is rejected.
    #[track_caller]
    pub fn assert_done(&self) -> &Outcome {
        match &self.result {
            Ok(o) if self.rejected_follow_up.is_none() => o,
            _ => self.fail("succeed"),
        }
    }

    /// The message of a retryable failure.
    ///
    /// # Panics
    /// Unless the handler returned [`JobError::Retryable`].
    #[track_caller]
    pub fn assert_retry(&self) -> &str {
        match &self.result {
            Err(JobError::Retryable { message, .. }) => message,
            _ => self.fail("fail retryably"),
        }
    }

    /// The delay and reason of a deferral.
    ///
    /// # Panics
    /// Unless the handler returned [`JobError::Defer`].
    #[track_caller]
    pub fn assert_defer(&self) -> (Duration, &str) {
        match &self.result {
            Err(JobError::Defer { after, reason }) => (*after, reason),
            _ => self.fail("be deferred"),
        }
    }

    /// The reason of a permanent failure (a payload that does not deserialize is one).
    ///
    /// # Panics
    /// Unless the handler returned [`JobError::Permanent`].
    #[track_caller]
    pub fn assert_permanent(&self) -> &str {
        match &self.result {
            Err(JobError::Permanent(m)) => m,
            _ => self.fail("fail permanently"),
        }
    }

    /// The follow-ups of a successful run (empty after a failure, as in the worker).
    pub fn follow_ups(&self) -> &[EnqueueRequest] {
        self.result.as_ref().map_or(&[], |o| o.follow_ups.as_slice())
    }

    /// Everything the run leads to: jobs enqueued during the run, then follow-ups.
    pub fn all_enqueued(&self) -> impl Iterator<Item = &EnqueueRequest> {
        self.enqueued.iter().chain(self.follow_ups())
    }

    fn names(&self) -> Vec<&str> {
        self.all_enqueued().map(|r| r.job.as_str()).collect()
    }

    /// The first job of type `job` enqueued or returned as a follow-up.
    ///
    /// # Panics
    /// When there is none; the message lists what was enqueued.
    #[track_caller]
    pub fn assert_enqueued(&self, job: &str) -> &EnqueueRequest {
        self.all_enqueued()
            .find(|r| r.job == job)
            .unwrap_or_else(|| panic!("`{}` enqueued no `{job}`; it enqueued {:?}", self.job, self.names()))
    }

    /// The first job of type `job` whose payload contains `payload` (objects match when
    /// every field given matches; other values must be equal).
    ///
    /// # Panics
    /// When there is none; the message lists the payloads of type `job`.
    #[track_caller]
    pub fn assert_enqueued_with(&self, job: &str, payload: serde_json::Value) -> &EnqueueRequest {
        self.all_enqueued()
            .find(|r| r.job == job && contains(&r.payload, &payload))
            .unwrap_or_else(|| {
                let seen: Vec<_> = self
                    .all_enqueued()
                    .filter(|r| r.job == job)
                    .map(|r| &r.payload)
                    .collect();
                panic!(
                    "`{}` enqueued no `{job}` with {payload}; `{job}` payloads: {seen:?}",
                    self.job
                )
            })
    }

    /// # Panics
    /// When a job of type `job` was enqueued or returned as a follow-up.
    #[track_caller]
    pub fn refute_enqueued(&self, job: &str) {
        if let Some(r) = self.all_enqueued().find(|r| r.job == job) {
            panic!("`{}` enqueued `{job}` ({}), expected none", self.job, r.payload)
        }
    }

    /// The follow-ups of type `J`, deserialized.
    ///
    /// # Panics
    /// When one does not deserialize into `J`.
    #[track_caller]
    pub fn follow_ups_of<J: Job>(&self) -> Vec<J> {
        typed(self.follow_ups())
    }

    /// The jobs of type `J` enqueued during the run, deserialized.
    ///
    /// # Panics
    /// When one does not deserialize into `J`.
    #[track_caller]
    pub fn enqueued_of<J: Job>(&self) -> Vec<J> {
        typed(&self.enqueued)
    }
}

#[track_caller]
fn typed<J: Job>(reqs: &[EnqueueRequest]) -> Vec<J> {
    reqs.iter()
        .filter(|r| r.job == J::NAME)
        .map(|r| {
            serde_json::from_value(r.payload.clone())
                .unwrap_or_else(|e| panic!("`{}` payload {} is not a valid `{}`: {e}", r.job, r.payload, J::NAME))
        })
        .collect()
}

/// Whether `value` contains `pattern`: every field of an object pattern, recursively.
fn contains(value: &serde_json::Value, pattern: &serde_json::Value) -> bool {
    match (value, pattern) {
        (serde_json::Value::Object(v), serde_json::Value::Object(p)) => {
            p.iter().all(|(k, pv)| v.get(k).is_some_and(|vv| contains(vv, pv)))
        }
        _ => value == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_match_subsets_of_objects() {
        let v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        assert!(contains(&v, &json!({"a": 1})));
        assert!(contains(&v, &json!({"b": {"d": 3}})));
        assert!(!contains(&v, &json!({"b": {"d": 4}})));
        assert!(!contains(&v, &json!({"e": null})));
        assert!(contains(&json!([1, 2]), &json!([1, 2])));
    }
}
