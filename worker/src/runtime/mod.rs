//! The worker runtime: one apalis worker per selected queue, each with its own pool,
//! plus the process-wide wake-up listener. Owns start-up of pools and graceful drain.
mod backend;
mod dispatch;
mod grouped;
mod heartbeat;
mod inflight;
mod pool;
mod settle;

use crate::{config::Config, store::Store};
use apalis_core::worker::builder::WorkerBuilder;
use culm_core::{Deps, Enqueuer};
use futures::StreamExt;
use pool::PoolShared;
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::{
    sync::{Notify, broadcast, mpsc, watch},
    task::JoinHandle,
};

pub use heartbeat::{HEARTBEAT_INTERVAL, HEARTBEAT_TTL};
pub use settle::{Completion, JobEvent};

/// A start-up problem.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A selected queue is not declared.
    #[error("unknown queue `{0}`")]
    UnknownQueue(String),
    /// Nothing to run.
    #[error("no queues selected")]
    NothingSelected,
}

/// Builds and starts worker pools.
#[derive(Clone)]
pub struct Runtime {
    config: Arc<Config>,
    store: Store,
    deps: Deps,
    events: crate::events::Events<JobEvent>,
    ledger: Option<crate::db::ledger::Ledger>,
}

struct PoolHandle {
    shared: Arc<PoolShared>,
    worker: JoinHandle<()>,
    fetcher: JoinHandle<()>,
    acker: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

/// Running pools. Dropping this without [`Running::shutdown`] leaves leases to expire.
pub struct Running {
    stop: watch::Sender<bool>,
    finish: watch::Sender<bool>,
    abort: watch::Sender<bool>,
    pools: Vec<PoolHandle>,
    listener: JoinHandle<()>,
    /// Renews this replica's registry entry; removes it when `finish` fires.
    heartbeat: JoinHandle<()>,
    drain_timeout: Duration,
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Queues whose in-flight jobs did not finish within the drain timeout.
    pub timed_out_pools: usize,
    /// Jobs handed back to their queues.
    pub handed_back: usize,
}

impl Runtime {
    /// A runtime over `store` with `deps` available to handlers.
    pub fn new(config: Arc<Config>, store: Store, deps: Deps) -> Self {
        // Sized for tests and `culm bench`, which watch every job; created only when one
        // subscribes.
        let events = crate::events::Events::new(65_536);
        Self {
            config,
            store,
            deps,
            events,
            ledger: None,
        }
    }

    /// Records every run in the job ledger (PostgreSQL), off the hot path.
    pub fn with_ledger(mut self, ledger: crate::db::ledger::Ledger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Subscribes to acknowledgement events (tests wait on these instead of sleeping).
    pub fn events(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a pool for each queue in `queues`.
    pub fn start(&self, queues: &[String]) -> Result<Running, RuntimeError> {
        if queues.is_empty() {
            return Err(RuntimeError::NothingSelected);
        }
        // Runs are counted wherever they happen (the pools keep their metric handles,
        // which stay inert if taken before a recorder is installed).
        crate::telemetry::install();
        let all = self.config.queue_settings(self.store.registry());
        let (stop, stop_rx) = watch::channel(false);
        let (finish, finish_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let worker_id = format!("{}-{}", hostname(), std::process::id());
        let mut wakes = HashMap::new();
        let mut pools = Vec::new();
        for name in queues {
            let settings = Arc::new(
                all.get(name)
                    .cloned()
                    .ok_or_else(|| RuntimeError::UnknownQueue(name.clone()))?,
            );
            crate::telemetry::capacity(name, settings.tier.as_str(), settings.concurrency);
            let wake = Arc::new(Notify::new());
            wakes.insert(self.store.wake_channel(name), wake.clone());
            let (shared, ack_rx) = PoolShared::new(
                settings.clone(),
                self.store.clone(),
                self.config.worker.clone(),
                wake,
                self.events.clone(),
                self.ledger.clone(),
                Arc::from(worker_id.as_str()),
            );
            let (tx, rx) = mpsc::channel(settings.concurrency as usize);
            let backend = backend::QueueBackend {
                rx,
                shared: shared.clone(),
            };
            let dispatcher = dispatch::Dispatcher {
                registry: self.store.registry().clone(),
                settings: settings.clone(),
                enqueuer: Arc::new(self.store.clone()) as Arc<dyn Enqueuer>,
                deps: self.deps.clone(),
                pool: shared.clone(),
                groups: Arc::default(),
            };
            let worker = WorkerBuilder::new(format!("{name}@{worker_id}"))
                .backend(backend)
                .build(dispatcher);
            let queue = name.clone();
            let mut stopped = stop_rx.clone();
            let stopped_after = stop_rx.clone();
            let pool_shared = shared.clone();
            let worker = tokio::spawn(async move {
                // On stop, apalis stops polling the backend and waits for in-flight jobs.
                let signal = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                    Ok::<(), std::io::Error>(())
                };
                if let Err(e) = worker.run_until(signal).await {
                    tracing::error!(queue = %queue, "worker stopped: {e}");
                }
                // Stopped without being asked to: nothing will run what this pool still
                // holds, so hand it back now rather than extend its leases for ever.
                if !*stopped_after.borrow() {
                    let n = pool::release_held(&pool_shared).await;
                    tracing::error!(queue = %queue, handed_back = n, "worker pool stopped on its own; its leased jobs were handed back");
                }
            });
            pools.push(PoolHandle {
                fetcher: tokio::spawn(pool::fetch_loop(shared.clone(), tx, stop_rx.clone())),
                acker: tokio::spawn(pool::ack_loop(
                    shared.clone(),
                    ack_rx,
                    finish_rx.clone(),
                    abort_rx.clone(),
                )),
                upkeep: tokio::spawn(pool::upkeep_loop(shared.clone(), stop_rx.clone())),
                shared,
                worker,
            });
        }
        let me = heartbeat::Identity {
            id: format!("{worker_id}-{}", &ulid::Ulid::new().to_string().to_lowercase()[20..]),
            host: hostname(),
            started_at: culm_core::now_ms(),
        };
        let heartbeat = tokio::spawn(heartbeat::heartbeat_loop(
            self.store.clone(),
            me,
            pools.iter().map(|p| p.shared.clone()).collect(),
            // Listed while it drains: it leaves the registry once its workers are gone.
            finish_rx,
        ));
        let listener = tokio::spawn(wake_listener(self.store.pubsub().clone(), wakes, stop_rx));
        tracing::info!(queues = %queues.join(","), worker = %worker_id, "worker pools started");
        Ok(Running {
            stop,
            finish,
            abort,
            pools,
            listener,
            heartbeat,
            drain_timeout: self.config.worker.drain_timeout,
        })
    }
}

impl Running {
    /// Stops fetching, lets in-flight jobs finish for up to the drain timeout, hands back
    /// whatever did not finish (and jobs fetched but not started), then returns.
    pub async fn shutdown(self) -> ShutdownReport {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let mut pools = self.pools;
        let finished = futures::future::join_all(
            pools
                .iter_mut()
                .map(|p| tokio::time::timeout_at(deadline, &mut p.worker)),
        )
        .await;
        let mut report = ShutdownReport::default();
        for (p, done) in pools.iter_mut().zip(finished) {
            if done.is_err() {
                report.timed_out_pools += 1;
                tracing::warn!(queue = %p.shared.queue, "drain timeout reached; handing back unfinished jobs");
                p.worker.abort();
                let _ = (&mut p.worker).await;
            }
        }
        // Let a fetch that is already in Redis finish and record what it leased, so those
        // jobs are handed back below instead of waiting for their leases to expire. The
        // fetchers saw `stop` and end after that call; a hung one is cut off.
        let fetched = futures::future::join_all(
            pools
                .iter_mut()
                .map(|p| tokio::time::timeout(Duration::from_secs(5), &mut p.fetcher)),
        )
        .await;
        for (p, done) in pools.iter().zip(fetched) {
            if done.is_err() {
                p.fetcher.abort();
            }
        }
        // Workers are gone: ackers write what is left, then end.
        let _ = self.finish.send(true);
        let flushed = futures::future::join_all(
            pools
                .iter_mut()
                .map(|p| tokio::time::timeout(Duration::from_secs(5), &mut p.acker)),
        )
        .await;
        if flushed.iter().any(Result::is_err) {
            let _ = self.abort.send(true);
        }
        for p in &pools {
            p.acker.abort();
        }
        let released = futures::future::join_all(pools.iter().map(|p| pool::release_held(&p.shared))).await;
        // Upkeep kept extending what was still held until now, so a slow final flush
        // never lets a finished run's lease expire and count as a lost attempt.
        for p in &pools {
            p.upkeep.abort();
        }
        report.handed_back = released.into_iter().sum();
        self.listener.abort();
        // It saw `finish` and removes this replica from the registry.
        let mut heartbeat = self.heartbeat;
        if tokio::time::timeout(Duration::from_secs(5), &mut heartbeat)
            .await
            .is_err()
        {
            heartbeat.abort();
        }
        tracing::info!(handed_back = report.handed_back, "worker pools stopped");
        report
    }
}

/// Subscribes to the queues' wake channels and wakes their idle fetchers. Reconnects on
/// failure (to the next node in Cluster mode, the new master in Sentinel mode); fetchers
/// fall back to polling meanwhile.
async fn wake_listener(
    source: crate::store::PubSubSource,
    wakes: HashMap<String, Arc<Notify>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut pubsub = source.client().await?.get_async_pubsub().await?;
            for channel in wakes.keys() {
                pubsub.subscribe(channel).await?;
            }
            // Anything pushed while we were (re)connecting.
            wakes.values().for_each(|n| n.notify_waiters());
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                if let Some(n) = wakes.get(msg.get_channel_name()) {
                    n.notify_waiters();
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            r = attempt => {
                if let Err(e) = r {
                    tracing::warn!("wake-up subscription failed, polling until it reconnects: {e}");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "culm".to_owned())
}
