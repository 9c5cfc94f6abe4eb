//! The apalis side of a queue: [`QueueBackend`] (apalis-core's `Backend`, fed by the
//! pool's fetcher) and [`AckLayer`], the backend's middleware that turns each run's
//! [`Completion`] into an acknowledgement for the pool's batching acker.
use super::{
    pool::PoolShared,
    settle::{self, Completion, RunEnd, Settlement},
};
use crate::store::{AckKind, Delivery, StoreError};
use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    error::BoxDynError,
    task::{Task, task_id::RandomId},
    worker::context::WorkerContext,
};
use culm_core::EnqueueError;
use futures::{FutureExt, future::BoxFuture};
use std::{
    sync::Arc,
    task::{Context, Poll},
};
use tokio::sync::mpsc;
use tower_layer::Layer;
use tower_service::Service;

/// A queue as apalis sees it: a stream of leased [`Delivery`]s. Fetching happens in the
/// pool's fetcher task, which leases only as many jobs as the pool has free slots, so
/// this backend never hoards work another replica could run.
pub struct QueueBackend {
    pub(super) rx: mpsc::Receiver<Task<Delivery>>,
    pub(super) shared: Arc<PoolShared>,
}

impl Backend for QueueBackend {
    type Task = Task<Delivery>;
    type Error = StoreError;

    fn poll_ready(&mut self, _cx: &mut Context<'_>, _w: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>, _w: &WorkerContext) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        // Fetch errors never reach apalis (a backend error stops the worker for good): the
        // fetcher retries them itself. `None` means the fetcher stopped: shut down.
        self.rx.poll_recv(cx).map(|t| t.map(Ok))
    }

    fn poll_close(&mut self, _cx: &mut Context<'_>, _w: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        self.rx.close();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for QueueBackend {
    type Args = Delivery;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        AckLayer {
            shared: self.shared.clone(),
        }
    }
}

/// Wraps the handler service: enqueues follow-ups, then hands the acknowledgement to the
/// acker, which writes it in a batch.
#[derive(Clone)]
pub struct AckLayer {
    shared: Arc<PoolShared>,
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See [`AckLayer`].
#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    shared: Arc<PoolShared>,
}

impl<S> Service<Task<Delivery>> for AckService<S>
where
    S: Service<Task<Delivery>, Response = Completion>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Delivery>) -> Self::Future {
        let shared = self.shared.clone();
        let fut = self.inner.call(task);
        async move {
            let mut c = fut.await.map_err(Into::into)?;
            if c.verdict.kind == AckKind::Done && !c.follow_ups.is_empty() {
                enqueue_follow_ups(&shared, &mut c).await;
            }
            shared.complete(Settlement::from_run(c));
            Ok(())
        }
        .boxed()
    }
}

/// Enqueues a successful run's follow-ups before it is acknowledged. Keys derived from the
/// parent id make a redelivered parent's second enqueue a no-op.
async fn enqueue_follow_ups(shared: &PoolShared, c: &mut Completion) {
    let mut jobs = std::mem::take(&mut c.follow_ups);
    culm_core::key_follow_ups(&c.id, &mut jobs);
    culm_core::trace::inherit(&mut jobs, c.trace.take());
    let failed = match shared.store.enqueue(jobs).await {
        Ok(_) => return,
        Err(EnqueueError::Storage(error)) => RunEnd::FollowUpsFailed { storage: true, error },
        Err(e) => RunEnd::FollowUpsFailed {
            storage: false,
            error: e.to_string(),
        },
    };
    c.verdict = settle::decide(&shared.settings.policy(&c.job).retry, c.attempt, failed);
    tracing::warn!(job_id = %c.id, job = %c.job, "{}", c.verdict.error);
}
