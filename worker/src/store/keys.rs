//! The Redis key layout of a queue and the Lua scripts over it. Every key of a queue
//! shares the hash tag `{<prefix>:<queue>}`, so each script touches one Cluster slot;
//! `lua/common.lua`, prepended to every script, names the keys.
use super::Store;
use redis::Script;
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

impl Store {
    /// The queue's base key, `{prefix:queue}`.
    pub fn base_key(&self, queue: &str) -> String {
        format!("{{{}:{}}}", self.inner.prefix, queue)
    }

    /// The pub/sub channel that wakes a queue's idle workers.
    pub fn wake_channel(&self, queue: &str) -> String {
        format!("{}:wake", self.base_key(queue))
    }
}
