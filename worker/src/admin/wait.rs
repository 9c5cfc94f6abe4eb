//! Long-polls on a job (`GET /v1/jobs/{id}?wait=10s`): woken by the job's completion,
//! never by polling Redis. `ack.lua` (and `cancel.lua`) publish the ids that reached a
//! final state on each queue's `settled` channel, once per batch; one listener per
//! admin server subscribes to every queue's channel (started by the first long-poll)
//! and wakes the requests waiting on those ids. While the subscription reconnects, every
//! waiter is woken to read its job again, so nothing is missed.
use crate::store::Store;
use futures::StreamExt;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::sync::Notify;

/// The longest wait a request may ask for.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(60);

type Map = Arc<Mutex<HashMap<String, Arc<Notify>>>>;

/// Requests waiting on job ids.
#[derive(Default)]
pub(super) struct Waiters {
    by_id: Map,
    listener: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Waiters {
    fn drop(&mut self) {
        if let Some(l) = self.listener.get() {
            l.abort();
        }
    }
}

/// One request's registration; dropping it unregisters.
pub(super) struct Waiting {
    by_id: Map,
    id: String,
    pub(super) notify: Arc<Notify>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map's reference and ours are left: nobody else waits on this id.
        if Arc::strong_count(&self.notify) <= 2 {
            map.remove(&self.id);
        }
    }
}

impl Waiters {
    /// Registers interest in `id`. Call before reading the job's state and enable the
    /// `notified()` future first, so a completion between the read and the wait is not
    /// missed. Starts the listener on first use.
    pub(super) fn register(&self, store: &Store, id: &str) -> Waiting {
        self.listener
            .get_or_init(|| tokio::spawn(listen(store.clone(), self.by_id.clone())).abort_handle());
        let notify = self
            .by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone();
        Waiting {
            by_id: self.by_id.clone(),
            id: id.to_owned(),
            notify,
        }
    }
}

fn wake_all(map: &Map) {
    for n in map.lock().unwrap_or_else(|e| e.into_inner()).values() {
        n.notify_waiters();
    }
}

async fn listen(store: Store, map: Map) {
    let channels: Vec<String> = store.routing().queues.keys().map(|q| store.keys(q).settled()).collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut pubsub = store.pubsub().client().await?.get_async_pubsub().await?;
            for c in &channels {
                pubsub.subscribe(c).await?;
            }
            // Anything that finished while (re)connecting: every waiter reads again.
            wake_all(&map);
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let Ok(ids) = msg.get_payload::<String>() else { continue };
                let map = map.lock().unwrap_or_else(|e| e.into_inner());
                if map.is_empty() {
                    continue;
                }
                for id in ids.split(',') {
                    if let Some(n) = map.get(id) {
                        n.notify_waiters();
                    }
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        if let Err(e) = attempt.await {
            tracing::warn!("job completion subscription failed, reconnecting: {e}");
        }
        wake_all(&map);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
