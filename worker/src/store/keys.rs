//! The one owner of culm's Redis key layout, and the Lua scripts over it.
//!
//! Every key of a queue shares the hash tag `{<prefix>:<queue>}` ([`QueueKeys`]); the
//! scheduler's own keys share `{<prefix>}` ([`SchedulerKeys`]). Every script declares
//! **every key it touches** in `KEYS`: the queue's fixed keys first, in the order of
//! [`QUEUE_KEYS`] (`lua/common.lua`, prepended to every queue script, names them from
//! those positions; a test below compares the two), then the script's own keys
//! (idempotency, acker, tick claim, schedule). While a queue's slot migrates between
//! Redis Cluster nodes, a node that holds only part of them answers `TRYAGAIN` (or `ASK`)
//! and the cluster client retries, instead of running the script on a partial queue.
use redis::{Script, ScriptInvocation};
use std::sync::LazyLock;

macro_rules! script {
    ($name:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/common.lua"),
                "\n",
                include_str!(concat!("lua/", $name))
            ))
        })
    };
}

pub(super) static PUSH: LazyLock<Script> = script!("push.lua");
pub(super) static FETCH: LazyLock<Script> = script!("fetch.lua");
pub(super) static ACK: LazyLock<Script> = script!("ack.lua");
pub(super) static EXTEND: LazyLock<Script> = script!("extend.lua");
pub(super) static REAP: LazyLock<Script> = script!("reap.lua");
pub(super) static RELEASE: LazyLock<Script> = script!("release.lua");
pub(super) static DEAD: LazyLock<Script> = script!("dead.lua");
pub(super) static STATUS: LazyLock<Script> = script!("status.lua");
pub(super) static STATS: LazyLock<Script> = script!("stats.lua");
pub(super) static CANCEL: LazyLock<Script> = script!("cancel.lua");
/// A tracked batch's creation, closing and callback record, in its home queue's slot.
pub(super) static BATCH: LazyLock<Script> = script!("batch.lua");
/// A schedule's tick: claim, overlap check and push, in the target queue's slot.
pub(super) static FIRE: LazyLock<Script> = script!("fire.lua");
/// A schedule's state, in the scheduler's slot (no queue keys, so no common.lua).
pub(super) static RECORD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/record.lua")));

/// The fixed keys of a queue, as suffixes of its base key, in the order every queue
/// script receives them as `KEYS[1..=14]`.
pub const QUEUE_KEYS: [&str; 14] = [
    "ready",
    "scheduled",
    "leases",
    "jobs",
    "attempts",
    "seq",
    "errors",
    "dead",
    "done",
    "paused",
    "reaper",
    "finished",
    "ready:high",
    "ready:low",
];

/// The key names of one queue (ARCHITECTURE.md, "Redis key layout", says what each holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    base: String,
}

impl QueueKeys {
    /// The keys of `queue` under `prefix`.
    pub fn new(prefix: &str, queue: &str) -> QueueKeys {
        QueueKeys {
            base: format!("{{{prefix}:{queue}}}"),
        }
    }

    /// `{prefix:queue}`: the hash tag every key of the queue starts with. No key has
    /// this name.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.base)
    }

    /// The fixed keys in script order ([`QUEUE_KEYS`]).
    pub fn fixed(&self) -> [String; 14] {
        QUEUE_KEYS.map(|s| self.key(s))
    }

    /// List: ids due now at priority normal.
    pub fn ready(&self) -> String {
        self.key("ready")
    }
    /// List: ids due now at `priority`, in the order a fetch takes them.
    pub fn ready_at(&self, priority: culm_core::Priority) -> String {
        match priority {
            culm_core::Priority::High => self.key("ready:high"),
            culm_core::Priority::Normal => self.ready(),
            culm_core::Priority::Low => self.key("ready:low"),
        }
    }
    /// Zset: id → run_at ms.
    pub fn scheduled(&self) -> String {
        self.key("scheduled")
    }
    /// Zset: id → lease deadline ms.
    pub fn leases(&self) -> String {
        self.key("leases")
    }
    /// Hash: id → envelope.
    pub fn jobs(&self) -> String {
        self.key("jobs")
    }
    /// Hash: attempts, lease tokens and refunded leases per job.
    pub fn attempts(&self) -> String {
        self.key("attempts")
    }
    /// Counter: the last lease token.
    pub fn seq(&self) -> String {
        self.key("seq")
    }
    /// Hash: id → the last errors.
    pub fn errors(&self) -> String {
        self.key("errors")
    }
    /// Zset: id → died_at ms.
    pub fn dead(&self) -> String {
        self.key("dead")
    }
    /// Zset: id → finished_at ms.
    pub fn done(&self) -> String {
        self.key("done")
    }
    /// String: exists while the queue is paused.
    pub fn paused(&self) -> String {
        self.key("paused")
    }
    /// Hash: the last reap and the outage hold.
    pub fn reaper(&self) -> String {
        self.key("reaper")
    }
    /// Hash: id → a done or cancelled job's type, attempts, enqueue time and result.
    pub fn finished(&self) -> String {
        self.key("finished")
    }
    /// The pub/sub channel on which `ack.lua` and `cancel.lua` publish the ids that
    /// reached a final state (not a key); long-polls wait on it.
    pub fn settled(&self) -> String {
        self.key("settled")
    }
    /// The pub/sub channel that wakes the queue's idle workers (not a key).
    pub fn wake(&self) -> String {
        self.key("wake")
    }
    /// String: the first job id for an idempotency key.
    pub fn idem(&self, key: &str) -> String {
        self.key(&format!("idem:{key}"))
    }
    /// String: the live job holding a uniqueness key (stale once that job finished).
    pub fn unique(&self, key: &str) -> String {
        self.key(&format!("unique:{key}"))
    }
    /// Hash: the queue's per-minute history for the hour `hour` (ms / 3,600,000): fields
    /// `<minute>:p` processed, `:f` failed, `:w` summed wait ms, `:n` runs waited, where
    /// `<minute>` is ms / 60,000. Written by `ack.lua`, expires 25 h after its last write.
    pub fn history(&self, hour: i64) -> String {
        self.key(&format!("history:{hour}"))
    }
    /// String: an acker's last batch and its answer.
    pub fn acker(&self, acker: &str) -> String {
        self.key(&format!("acker:{acker}"))
    }
    /// String: a schedule tick's claim; `claim` is `<name>:<tick_ms>` or
    /// `<name>:manual:<id>`.
    pub fn tick(&self, claim: &str) -> String {
        self.key(&format!("tick:{claim}"))
    }
    /// Hash: the last tick of schedule `name` decided in this slot and its last job.
    pub fn schedule(&self, name: &str) -> String {
        self.key(&format!("schedule:{name}"))
    }

    /// Hash: tracked batch `bid`, whose home is this queue: its counters (total, pending,
    /// succeeded, dead, cancelled, expired), `open` (the creator's hold), `created_at`,
    /// `completed_at`, `retention`, the callback requests and, once enqueued, the
    /// callback job ids (`callbacks`), and `description`.
    pub fn batch(&self, bid: &str) -> String {
        self.key(&format!("batch:{bid}"))
    }
    /// List: the member ids of tracked batch `bid`, in the order they were added.
    pub fn batch_jobs(&self, bid: &str) -> String {
        self.key(&format!("batch:{bid}:jobs"))
    }
    /// Zset: batch id → completed_at ms, for completed batches whose callbacks are not
    /// confirmed enqueued yet.
    pub fn batches_firing(&self) -> String {
        self.key("batches:firing")
    }
    /// Zset: batch id → created_at ms, the newest batches of this home queue (bounded).
    pub fn batches(&self) -> String {
        self.key("batches")
    }

    /// A call of `script` with this queue's fixed keys declared; the caller adds the
    /// script's own keys and its arguments.
    pub(super) fn invoke<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        self.declare(&mut inv);
        inv
    }

    /// Declares the fixed keys on `inv` (push.lua takes one group per queue).
    pub(super) fn declare(&self, inv: &mut ScriptInvocation<'_>) {
        for k in self.fixed() {
            inv.key(k);
        }
    }
}

/// The scheduler's keys, in its own slot `{<prefix>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerKeys {
    base: String,
}

impl SchedulerKeys {
    /// The scheduler's keys under `prefix`.
    pub fn new(prefix: &str) -> SchedulerKeys {
        SchedulerKeys {
            base: format!("{{{prefix}}}"),
        }
    }

    /// Hash: what happened to schedule `name`'s ticks.
    pub fn state(&self, name: &str) -> String {
        format!("{}:schedules:state:{name}", self.base)
    }

    /// List: schedule `name`'s last ticks with their outcome, newest first (JSON entries,
    /// bounded by `record.lua`).
    pub fn ticks(&self, name: &str) -> String {
        format!("{}:schedules:ticks:{name}", self.base)
    }

    /// Hash: schedule name → paused-at ms.
    pub fn paused(&self) -> String {
        format!("{}:schedules:paused", self.base)
    }

    /// Hash: schedule name → its queue, for every schedule that has state, so state of
    /// schedules removed from the catalog can be found and deleted.
    pub fn names(&self) -> String {
        format!("{}:schedules:names", self.base)
    }
}

/// Keys of the process registry in the `{<prefix>}` slot: which `culm run` replicas are
/// alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessKeys {
    base: String,
}

impl ProcessKeys {
    /// The registry's keys under `prefix`.
    pub fn new(prefix: &str) -> ProcessKeys {
        ProcessKeys {
            base: format!("{{{prefix}}}"),
        }
    }

    /// Zset: replica id → last heartbeat ms. Members whose `worker` key expired are
    /// dropped by whoever lists them.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.base)
    }

    /// String: a replica's `WorkerInfo` JSON; expires unless its heartbeat renews it.
    pub fn worker(&self, id: &str) -> String {
        format!("{}:worker:{id}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `K_<NAME> = KEYS[o + <n>]` lines of common.lua.
    fn lua_layout() -> Vec<(String, usize)> {
        include_str!("lua/common.lua")
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.trim().strip_prefix("K_")?.split_once(" = KEYS[o + ")?;
                let n = rest.split_once(']')?.0.parse().ok()?;
                Some((name.to_lowercase().replace('_', ":"), n))
            })
            .collect()
    }

    #[test]
    fn common_lua_names_the_queue_keys_in_the_order_rust_declares_them() {
        let lua = lua_layout();
        let rust: Vec<(String, usize)> = QUEUE_KEYS
            .iter()
            .enumerate()
            .map(|(i, s)| ((*s).to_owned(), i + 1))
            .collect();
        assert_eq!(lua, rust, "common.lua's KEYS positions differ from keys::QUEUE_KEYS");
        let count = include_str!("lua/common.lua")
            .lines()
            .find_map(|l| l.trim().strip_prefix("local QUEUE_KEYS = "))
            .and_then(|n| n.split_whitespace().next()?.parse::<usize>().ok());
        assert_eq!(count, Some(QUEUE_KEYS.len()));
        let k = QueueKeys::new("culm", "galileo");
        assert_eq!(k.fixed()[0], "{culm:galileo}:ready");
        assert_eq!(k.fixed()[10], k.reaper());
    }

    #[test]
    fn every_script_declares_the_keys_it_names() {
        // A script may only build key names from KEYS; `..` on a key name would name an
        // undeclared key (only the wake channel, which is not a key, is built that way).
        for (name, src) in [
            ("common.lua", include_str!("lua/common.lua")),
            ("push.lua", include_str!("lua/push.lua")),
            ("fetch.lua", include_str!("lua/fetch.lua")),
            ("ack.lua", include_str!("lua/ack.lua")),
            ("extend.lua", include_str!("lua/extend.lua")),
            ("reap.lua", include_str!("lua/reap.lua")),
            ("release.lua", include_str!("lua/release.lua")),
            ("dead.lua", include_str!("lua/dead.lua")),
            ("stats.lua", include_str!("lua/stats.lua")),
            ("status.lua", include_str!("lua/status.lua")),
            ("cancel.lua", include_str!("lua/cancel.lua")),
            ("batch.lua", include_str!("lua/batch.lua")),
            ("fire.lua", include_str!("lua/fire.lua")),
            ("record.lua", include_str!("lua/record.lua")),
        ] {
            for l in src.lines().filter(|l| !l.trim_start().starts_with("--")) {
                let built = l.contains("base ..") || l.contains("KEYS[1] ..") || l.contains("b .. ':");
                assert!(!built, "{name} builds a key name instead of declaring it: {l}");
            }
        }
    }
}
