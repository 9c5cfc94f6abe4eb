//! Broadcast channels of in-process events (`JobEvent`s of the runtime, `ScheduleEvent`s
//! of the scheduler) that exist only once something subscribes. Tests and `culm bench`
//! subscribe to watch jobs settle; a production `culm run` never does, so it should not
//! carry a buffer sized for them: tokio's broadcast channel allocates and initialises
//! every slot up front (65,536 `JobEvent` slots are about 10 MB of resident memory).
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

/// A broadcast channel created on the first [`Events::subscribe`]. Clones share it.
#[derive(Debug)]
pub struct Events<T> {
    capacity: usize,
    tx: Arc<OnceLock<broadcast::Sender<T>>>,
}

impl<T> Clone for Events<T> {
    fn clone(&self) -> Self {
        Events {
            capacity: self.capacity,
            tx: self.tx.clone(),
        }
    }
}

impl<T: Clone> Events<T> {
    /// A channel that will buffer up to `capacity` events per subscriber once it exists.
    pub fn new(capacity: usize) -> Self {
        Events {
            capacity,
            tx: Arc::new(OnceLock::new()),
        }
    }

    /// Subscribes, creating the channel on the first call. A subscriber sees the events
    /// sent after it subscribed.
    pub fn subscribe(&self) -> broadcast::Receiver<T> {
        self.tx.get_or_init(|| broadcast::channel(self.capacity).0).subscribe()
    }

    /// Whether anyone is listening now: the sender builds an event only then.
    pub fn wanted(&self) -> bool {
        self.tx.get().is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Sends `event` to the current subscribers, if any.
    pub fn send(&self, event: T) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_allocated_or_sent_until_someone_subscribes() {
        let events: Events<u32> = Events::new(8);
        assert!(!events.wanted());
        events.send(1);
        assert!(events.tx.get().is_none(), "a send without subscribers made the channel");
        let mut rx = events.clone().subscribe();
        assert!(events.wanted());
        events.send(2);
        assert_eq!(rx.recv().await.expect("event"), 2);
    }
}
