//! The leases one pool holds in this process, and the pool's free slots, which are
//! derived from them: a slot is taken exactly when a lease is recorded and returned
//! exactly when that lease is forgotten, so the two can never drift apart.
//!
//! Leases are keyed by their token, not the job id: the same job can be held twice for a
//! moment (its deferral was written, it fell due and this process fetched it again before
//! the acker forgot the first run), and each run must keep its own entry.
use culm_core::Cancellation;
use std::{collections::HashMap, sync::Mutex};

struct Lease {
    id: String,
    /// The handler has not returned yet.
    running: bool,
    /// Raised when an operator cancels the job while this run holds it.
    cancel: Cancellation,
}

/// A pool's held leases and its capacity.
pub(super) struct Inflight {
    capacity: usize,
    leases: Mutex<HashMap<u64, Lease>>,
}

impl Inflight {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            leases: Mutex::new(HashMap::with_capacity(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lease>> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // critical section is a single insert or remove), so a poisoned lock is usable.
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Slots not holding a lease.
    pub(super) fn free(&self) -> usize {
        self.capacity.saturating_sub(self.lock().len())
    }

    /// Records newly fetched leases, taking a slot each.
    pub(super) fn hold(&self, leases: impl Iterator<Item = (String, u64)>) {
        let mut m = self.lock();
        for (id, token) in leases {
            let previous = m.insert(
                token,
                Lease {
                    id,
                    running: true,
                    cancel: Cancellation::new(),
                },
            );
            debug_assert!(previous.is_none(), "lease token {token} handed out twice");
        }
        debug_assert!(
            m.len() <= self.capacity,
            "{} leases held by a pool of {}",
            m.len(),
            self.capacity
        );
    }

    /// The handler of this lease has returned; its ack may still be on its way.
    pub(super) fn finished(&self, token: u64) {
        if let Some(l) = self.lock().get_mut(&token) {
            l.running = false;
        }
    }

    /// The cancellation signal of the run holding `token` (a fresh one if the lease is
    /// not held, which cannot be raised).
    pub(super) fn cancellation(&self, token: u64) -> Cancellation {
        self.lock().get(&token).map(|l| l.cancel.clone()).unwrap_or_default()
    }

    /// Raises the cancellation signal of every running lease of `ids`; returns how many
    /// runs were told for the first time.
    pub(super) fn cancel(&self, ids: &[String]) -> usize {
        let m = self.lock();
        let mut n = 0;
        for l in m.values().filter(|l| l.running && ids.contains(&l.id)) {
            if !l.cancel.is_requested() {
                l.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    /// Whether the lease's handler is still running.
    pub(super) fn running(&self, token: u64) -> bool {
        self.lock().get(&token).is_some_and(|l| l.running)
    }

    /// Ids and tokens of every lease held.
    pub(super) fn held(&self) -> Vec<(String, u64)> {
        self.lock().iter().map(|(t, l)| (l.id.clone(), *t)).collect()
    }

    /// Forgets settled or handed-back leases, returning their slots; says how many were
    /// held here.
    pub(super) fn forget(&self, tokens: impl Iterator<Item = u64>) -> usize {
        let mut m = self.lock();
        tokens.filter(|t| m.remove(t).is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_fetched_again_before_its_previous_run_is_forgotten_keeps_both_leases() {
        let pool = Inflight::new(2);
        pool.hold([("job-x".to_owned(), 1)].into_iter());
        // The first run's deferral is written; the job is due again and this process
        // fetches it before the acker has forgotten the first run.
        pool.hold([("job-x".to_owned(), 2)].into_iter());
        assert_eq!(pool.free(), 0);
        assert_eq!(pool.forget([1].into_iter()), 1);
        assert_eq!(
            pool.held(),
            vec![("job-x".to_owned(), 2)],
            "the second run is still held, so its lease is extended"
        );
        assert_eq!(pool.forget([2].into_iter()), 1, "the second run's slot comes back");
        assert_eq!(pool.free(), 2, "every slot is free again");
        assert!(pool.held().is_empty());
    }

    #[test]
    fn forgetting_a_lease_twice_returns_its_slot_once() {
        let pool = Inflight::new(1);
        pool.hold([("a".to_owned(), 7)].into_iter());
        assert_eq!(pool.forget([7].into_iter()), 1);
        assert_eq!(pool.forget([7].into_iter()), 0, "a replayed forget frees nothing");
        assert_eq!(pool.free(), 1);
    }
}
