//! The replica's heartbeat in the registry (`Store::heartbeat`): every
//! [`HEARTBEAT_INTERVAL`], what this process runs and how busy each pool is. The entry
//! expires after [`HEARTBEAT_TTL`] without a renewal, so a SIGKILLed replica leaves the
//! list by itself; a clean shutdown removes it at once.
use super::pool::PoolShared;
use crate::store::{QueueLoad, Store, WorkerInfo};
use culm_core::now_ms;
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;

/// How often a replica renews its entry.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long an entry outlives its last renewal: three missed heartbeats.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// What this replica is, apart from the counts each heartbeat reads.
pub(super) struct Identity {
    pub id: String,
    pub host: String,
    pub started_at: i64,
}

fn describe(me: &Identity, pools: &[Arc<PoolShared>]) -> WorkerInfo {
    let queues: Vec<QueueLoad> = pools
        .iter()
        .map(|p| QueueLoad {
            queue: p.queue.to_string(),
            busy: p.busy(),
            capacity: p.settings.concurrency,
        })
        .collect();
    WorkerInfo {
        id: me.id.clone(),
        host: me.host.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        busy: queues.iter().map(|q| q.busy).sum(),
        capacity: queues.iter().map(|q| q.capacity).sum(),
        queues,
        started_at: me.started_at,
        last_heartbeat: now_ms(),
    }
}

/// Renews the entry until `stop` fires, then removes it. A failed write is logged and
/// tried again next interval (the entry outlives two misses).
pub(super) async fn heartbeat_loop(
    store: Store,
    me: Identity,
    pools: Vec<Arc<PoolShared>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = store.heartbeat(&describe(&me, &pools), HEARTBEAT_TTL).await {
            tracing::warn!(worker = %me.id, "writing the replica heartbeat failed: {e}");
        }
    }
    if let Err(e) = store.deregister(&me.id).await {
        tracing::warn!(worker = %me.id, "removing the replica from the registry failed: {e}");
    }
}
