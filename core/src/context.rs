//! What a handler receives besides its payload.
use crate::{EnqueueError, EnqueueRequest, Enqueued, Enqueuer};
use std::{
    any::{Any, TypeId},
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// Shared dependencies handlers look up by type (HTTP clients, Redis handles, config).
/// Built once at start-up; cheap to clone.
#[derive(Clone, Default)]
pub struct Deps(Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl Deps {
    /// Returns a copy with `value` added (replacing any earlier value of the same type).
    pub fn with<T: Send + Sync + 'static>(self, value: T) -> Self {
        let mut map: HashMap<_, _> = (*self.0).clone();
        map.insert(TypeId::of::<T>(), Arc::new(value) as Arc<dyn Any + Send + Sync>);
        Deps(Arc::new(map))
    }

    /// The dependency of type `T`, if one was provided.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|a| a.downcast::<T>().ok())
    }
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deps({} entries)", self.0.len())
    }
}

/// An operator's request that a running job stop (`POST /v1/jobs/{id}/cancel`). The
/// worker raises it; the handler sees it through [`JobContext::is_cancelled`] or
/// [`JobContext::cancelled`]. A handler that returns after seeing it ends `cancelled`
/// (whatever it returned; its follow-ups are not enqueued); one that never looks
/// finishes normally.
#[derive(Clone, Default)]
pub struct Cancellation(Arc<CancelState>);

#[derive(Default)]
struct CancelState {
    requested: AtomicBool,
    /// The handler looked and saw the request.
    observed: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cancellation {
    /// A signal not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal (idempotent) and wakes a handler awaiting
    /// [`JobContext::cancelled`].
    pub fn cancel(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether the signal was raised (without counting as the handler seeing it).
    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Whether the handler saw the raised signal.
    pub fn observed(&self) -> bool {
        self.0.observed.load(Ordering::SeqCst)
    }

    fn check(&self) -> bool {
        let raised = self.is_requested();
        if raised {
            self.0.observed.store(true, Ordering::SeqCst);
        }
        raised
    }
}

impl std::fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancellation")
            .field("requested", &self.is_requested())
            .field("observed", &self.observed())
            .finish()
    }
}

/// The running job's identity and the platform services a handler may use.
#[derive(Clone)]
pub struct JobContext {
    /// Job id (a ULID).
    pub id: String,
    /// Job type name.
    pub job: String,
    /// Queue the job was fetched from.
    pub queue: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The queue's attempt budget.
    pub max_attempts: u32,
    /// When the job was enqueued (ms since the epoch).
    pub enqueued_at_ms: i64,
    enqueuer: Arc<dyn Enqueuer>,
    deps: Deps,
    origin: Option<String>,
    cancel: Cancellation,
    /// The tracked batch this job is a member (or the callback) of.
    batch: Option<String>,
    /// Batch calls made by this run: numbers them, so a retried run derives the same ids
    /// and idempotency keys.
    batch_calls: Arc<std::sync::atomic::AtomicU32>,
}

/// The enqueue idempotency key of a re-drive from the archive, which runs as a new job:
/// `redrive:<origin>:<died_at ms>`, where `origin` is the id of the job first enqueued
/// (kept through re-drives of re-drives), so the upstream key survives.
pub fn redrive_key(origin: &str, died_at_ms: i64) -> String {
    format!("redrive:{origin}:{died_at_ms}")
}

/// The original job id of a re-drive's enqueue idempotency key (see [`redrive_key`]).
pub fn redrive_origin(key: &str) -> Option<&str> {
    key.strip_prefix("redrive:")
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(origin, _)| origin)
        .filter(|o| !o.is_empty())
}

impl JobContext {
    /// Builds a context; the worker does this for every run, tests through `culm_core::testing` (feature `testing`).
    #[allow(clippy::too_many_arguments, reason = "one argument per field of the context")]
    pub fn new(
        id: String,
        job: String,
        queue: String,
        attempt: u32,
        max_attempts: u32,
        enqueued_at_ms: i64,
        enqueuer: Arc<dyn Enqueuer>,
        deps: Deps,
    ) -> Self {
        Self {
            id,
            job,
            queue,
            attempt,
            max_attempts,
            enqueued_at_ms,
            enqueuer,
            deps,
            origin: None,
            cancel: Cancellation::new(),
            batch: None,
            batch_calls: Arc::default(),
        }
    }

    /// The tracked batch this job is a member of, or whose callback it is (the worker
    /// sets it from the stored job).
    pub fn with_batch(mut self, batch: Option<String>) -> Self {
        self.batch = batch;
        self
    }

    /// The tracked batch this job belongs to: the batch it is a member of, or, for an
    /// `on_complete` / `on_success` callback, the batch that completed (its members and
    /// results: `GET /v1/batches/{id}/jobs`).
    pub fn batch_id(&self) -> Option<&str> {
        self.batch.as_deref()
    }

    fn next_batch_call(&self) -> u32 {
        self.batch_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a tracked batch of `jobs` (all going to one queue): add callbacks with
    /// [`BatchBuilder::on_success`] / [`BatchBuilder::on_complete`], then
    /// [`BatchBuilder::create`]. The batch id and the members' idempotency keys derive
    /// from this job's id and the call's index within the run, so a retried handler
    /// finds the batch it created before and adds nothing twice.
    pub fn batch(&self, jobs: Vec<EnqueueRequest>) -> BatchBuilder<'_> {
        BatchBuilder {
            ctx: self,
            spec: crate::BatchSpec {
                jobs,
                ..crate::BatchSpec::default()
            },
        }
    }

    /// Adds jobs to this job's own batch (it is pending itself, so the batch cannot
    /// complete meanwhile). Refused when this job is in no batch, or is a callback of a
    /// batch that completed. Idempotent under retry of this job, like [`JobContext::batch`].
    pub async fn add_to_batch(&self, mut jobs: Vec<EnqueueRequest>) -> Result<crate::CreatedBatch, EnqueueError> {
        let batch = self.batch.clone().ok_or_else(|| EnqueueError::InvalidRequest {
            field: "batch".into(),
            message: "this job is not in a tracked batch".into(),
        })?;
        let n = self.next_batch_call();
        crate::trace::inherit(&mut jobs, crate::trace::current());
        self.enqueuer
            .add_to_batch(batch, jobs, format!("{}:{n}", self.id))
            .await
    }

    /// Uses `cancel` as this run's cancellation signal (the worker keeps a clone to raise
    /// it).
    pub fn with_cancellation(mut self, cancel: Cancellation) -> Self {
        self.cancel = cancel;
        self
    }

    /// Whether an operator asked this job to stop. Checking it between steps of a long
    /// handler and returning when it is `true` ends the job `cancelled`: nothing is
    /// retried and no follow-up is enqueued.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.check()
    }

    /// Resolves once an operator asks this job to stop (use in a `select!` with the
    /// handler's own work); returning afterwards ends the job `cancelled`.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.cancel.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.cancel.check() {
                return;
            }
            notified.await;
        }
    }

    /// The job this one re-runs under a new id (a re-drive from the archive): upstream
    /// idempotency keys are then the original job's, so a re-driven payment cannot pay twice.
    pub fn with_origin(mut self, origin: Option<String>) -> Self {
        self.origin = origin.filter(|o| *o != self.id);
        self
    }

    /// The dependency of type `T`.
    pub fn dep<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.deps.get::<T>()
    }

    /// Enqueues jobs now (for fan-out inside a long handler). Prefer returning follow-ups
    /// from [`crate::Outcome::then`] when the jobs should only exist if this one succeeds.
    /// Each job without a trace context of its own continues this run's trace.
    pub async fn enqueue(&self, mut jobs: Vec<EnqueueRequest>) -> Result<Vec<Enqueued>, EnqueueError> {
        crate::trace::inherit(&mut jobs, crate::trace::current());
        self.enqueuer.enqueue_batch(jobs).await
    }

    /// The key for upstream idempotency headers (`culm-<id>`): the same across retries and
    /// redeliveries of this job, and across re-drives from the archive (which run under
    /// a new id but keep the original's key). `Call::idempotent` sends this key.
    pub fn idempotency_key(&self) -> String {
        format!("culm-{}", self.origin.as_deref().unwrap_or(&self.id))
    }
}

/// A tracked batch being built by a handler ([`JobContext::batch`]).
#[must_use = "a batch is created only by `create`"]
pub struct BatchBuilder<'a> {
    ctx: &'a JobContext,
    spec: crate::BatchSpec,
}

impl BatchBuilder<'_> {
    /// Enqueued once every job of the batch succeeded.
    pub fn on_success(mut self, job: EnqueueRequest) -> Self {
        self.spec.on_success = Some(job);
        self
    }

    /// Enqueued once every job of the batch reached a final state (done, dead,
    /// cancelled or expired).
    pub fn on_complete(mut self, job: EnqueueRequest) -> Self {
        self.spec.on_complete = Some(job);
        self
    }

    /// Shown by `culm batches` and the dashboard.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.spec.description = Some(text.into());
        self
    }

    /// Creates the batch and its jobs; the callbacks fire once they are all final.
    pub async fn create(mut self) -> Result<crate::CreatedBatch, EnqueueError> {
        let n = self.ctx.next_batch_call();
        self.spec.id = format!("{}-b{n}", self.ctx.id);
        self.spec.member_keys = "m".to_owned();
        crate::trace::inherit(&mut self.spec.jobs, crate::trace::current());
        self.ctx.enqueuer.create_batch(self.spec).await
    }
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("job", &self.job)
            .field("queue", &self.queue)
            .field("attempt", &self.attempt)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancellation_counts_as_seen_only_once_the_handler_looked() {
        let c = Cancellation::new();
        let ctx = JobContext::new(
            "01J".into(),
            "t.job".into(),
            "q".into(),
            1,
            3,
            0,
            Arc::new(NoEnqueue),
            Deps::default(),
        )
        .with_cancellation(c.clone());
        assert!(!ctx.is_cancelled());
        let waiting = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.cancelled().await }
        });
        c.cancel();
        waiting.await.expect("wakes on cancel");
        assert!(c.observed());
        let fresh = Cancellation::new();
        fresh.cancel();
        assert!(!fresh.observed(), "raised but never looked at");
    }

    struct NoEnqueue;
    impl Enqueuer for NoEnqueue {
        fn enqueue_batch(
            &self,
            _jobs: Vec<EnqueueRequest>,
        ) -> futures::future::BoxFuture<'_, Result<Vec<Enqueued>, EnqueueError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    #[test]
    fn redrive_keys_name_their_origin() {
        assert_eq!(
            redrive_origin(&redrive_key("01ORIG", 1_700_000_000_000)),
            Some("01ORIG")
        );
        assert_eq!(redrive_origin("redrive::5"), None);
        assert_eq!(redrive_origin("01PARENT:then:0"), None);
    }
}
