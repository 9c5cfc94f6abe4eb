//! Grouped runs of batch job types (`culm_core::BatchJob`): the deliveries of one job
//! type that a pool holds at the same moment go to one handler call.
//!
//! Each delivery stays its own apalis task, with its own lease (extended by upkeep),
//! `culm.job` span, cancellation signal and settlement: the task hands its item to
//! [`Groups::run`] and waits for its own answer, then settles exactly as a single run
//! does (`settle::decide` with its own attempt number, through the acker, fenced by its
//! own lease token). Only the handler call is shared. The first item of a group leads
//! it: it waits up to the job type's linger for others (or until the group is full),
//! closes the group and makes the call in its own task, under the job type's timeout and
//! `catch_unwind`; a timeout or a panic ends every item of the call that way. If the
//! leading task is dropped (a hard shutdown), the other items get
//! [`CallEnd::Abandoned`] and are retried like a failed run, never left waiting.
//!
//! Groups never exceed the job type's `MAX_BATCH` nor the pool's free slots (each item
//! holds a slot of its own), and never mix job types.
use culm_core::{JobContext, JobSpec, RunResult, TraceContext};
use futures::FutureExt;
use serde_json::value::RawValue;
use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::sync::{Notify, oneshot};
use tracing::Instrument;

/// The text of a caught panic.
pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// How one item's part of a grouped call ended.
#[derive(Debug)]
pub(super) enum CallEnd {
    /// The call returned; this is the item's own answer.
    Returned(RunResult),
    /// The call ran past the job type's timeout.
    TimedOut(Duration),
    /// The call panicked.
    Panicked(String),
    /// The call was dropped before it answered (its leading task was stopped).
    Abandoned,
}

/// One delivery waiting for its group's call.
struct Item {
    payload: Box<RawValue>,
    ctx: JobContext,
    trace: Option<TraceContext>,
    answer: oneshot::Sender<CallEnd>,
}

/// A group still taking items: shared by the open-groups map and its leader.
type Open = Arc<Mutex<Vec<Item>>>;

struct Entry {
    items: Open,
    full: Arc<Notify>,
}

/// The open groups of one pool, one per batch job type at most.
#[derive(Default)]
pub(super) struct Groups {
    open: Mutex<HashMap<&'static str, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Closes its group when dropped, so no later item joins a group nobody will run; the
/// items still in it are dropped with their answer channels ([`CallEnd::Abandoned`]).
struct Lead<'a> {
    groups: &'a Groups,
    job: &'static str,
    items: Open,
}

impl Lead<'_> {
    /// Closes the group and takes its items.
    fn close(&self) -> Vec<Item> {
        {
            let mut open = lock(&self.groups.open);
            if open.get(self.job).is_some_and(|e| Arc::ptr_eq(&e.items, &self.items)) {
                open.remove(self.job);
            }
        }
        std::mem::take(&mut *lock(&self.items))
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        drop(self.close());
    }
}

impl Groups {
    /// Runs one delivery of a batch job type as part of a group: joins the open group of
    /// its job type, or opens one and leads it. Answers this item's part of the call.
    pub(super) async fn run(
        &self,
        spec: &JobSpec,
        timeout: Duration,
        payload: Box<RawValue>,
        ctx: JobContext,
        trace: Option<TraceContext>,
    ) -> CallEnd {
        let max = spec.max_batch.unwrap_or(1).max(1);
        let linger = spec.batch_linger().unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        let item = Item {
            payload,
            ctx,
            trace,
            answer: tx,
        };
        let lead = {
            let mut open = lock(&self.open);
            match open.get(spec.name) {
                Some(e) => {
                    let mut items = lock(&e.items);
                    items.push(item);
                    if items.len() >= max {
                        // Full: nobody else joins; the leader starts at once.
                        drop(items);
                        if let Some(e) = open.remove(spec.name) {
                            e.full.notify_one();
                        }
                    }
                    None
                }
                None => {
                    let items: Open = Arc::new(Mutex::new(vec![item]));
                    let full = Arc::new(Notify::new());
                    if max > 1 {
                        open.insert(
                            spec.name,
                            Entry {
                                items: items.clone(),
                                full: full.clone(),
                            },
                        );
                    }
                    Some((items, full))
                }
            }
        };
        if let Some((items, full)) = lead {
            let lead = Lead {
                groups: self,
                job: spec.name,
                items,
            };
            if max > 1 {
                // `notify_one` keeps a permit, so a group filled before this wait starts
                // is not missed.
                let _ = tokio::time::timeout(linger, full.notified()).await;
            }
            call(spec, timeout, lead.close()).await;
        }
        rx.await.unwrap_or(CallEnd::Abandoned)
    }
}

/// Makes one handler call for `items` and sends each item its answer.
async fn call(spec: &JobSpec, timeout: Duration, items: Vec<Item>) {
    let size = items.len();
    // The call runs under the stored trace context of the group's first item: partner
    // calls made for the whole group land in that job's trace.
    let trace = items.first().and_then(|i| i.trace.clone());
    let mut answers = Vec::with_capacity(size);
    let run = {
        let inputs = items
            .iter()
            .map(|i| (i.payload.get(), i.ctx.clone()))
            .collect::<Vec<_>>();
        spec.run_many(inputs)
    };
    for i in items {
        answers.push(i.answer);
    }
    let run = match trace {
        None if !crate::otel::enabled() => run,
        trace => culm_core::trace::scope(trace, run).boxed(),
    };
    let span = tracing::info_span!("grouped_call", job = spec.name, size);
    let result = tokio::time::timeout(timeout, AssertUnwindSafe(run).catch_unwind())
        .instrument(span)
        .await;
    match result {
        Err(_) => {
            for a in answers {
                let _ = a.send(CallEnd::TimedOut(timeout));
            }
        }
        Ok(Err(panic)) => {
            let message = panic_message(panic.as_ref());
            for a in answers {
                let _ = a.send(CallEnd::Panicked(message.clone()));
            }
        }
        Ok(Ok(results)) => {
            // `JobSpec::run_many` answers one result per item; a shorter answer still
            // leaves no item waiting (the rest are abandoned, so retried).
            for (a, r) in answers.into_iter().zip(results) {
                let _ = a.send(CallEnd::Returned(r));
            }
        }
    }
}
