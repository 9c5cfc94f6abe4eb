//! The replica registry: every `culm run` process writes a heartbeat (what it runs and
//! how busy it is) that expires unless renewed, so a replica that dies leaves the list
//! by itself. Both keys live in the `{<prefix>}` slot ([`super::keys::ProcessKeys`]).
use super::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One queue a replica runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueueLoad {
    /// Queue name.
    pub queue: String,
    /// Jobs this replica holds a lease on (running, or settled and being written).
    pub busy: u32,
    /// The pool's size.
    pub capacity: u32,
}

/// A live `culm run` replica, as its last heartbeat described it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// `<host>-<pid>-<suffix>`, unique per process start.
    pub id: String,
    /// Host name (the pod's name on Kubernetes).
    pub host: String,
    /// culm's version.
    pub version: String,
    /// Its pools.
    pub queues: Vec<QueueLoad>,
    /// Sum of `busy` over its pools.
    pub busy: u32,
    /// Sum of `capacity` over its pools.
    pub capacity: u32,
    /// When the process started, ms (RFC 3339 in JSON).
    #[serde(
        serialize_with = "culm_core::time::serialize_rfc3339",
        deserialize_with = "ms_or_rfc3339"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    /// The last heartbeat, ms (RFC 3339 in JSON).
    #[serde(
        serialize_with = "culm_core::time::serialize_rfc3339",
        deserialize_with = "ms_or_rfc3339"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub last_heartbeat: i64,
}

/// Stored as JSON with RFC 3339 times (what the API shows); read back either way.
fn ms_or_rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        Ms(i64),
        Text(String),
    }
    match T::deserialize(d)? {
        T::Ms(ms) => Ok(ms),
        T::Text(s) => chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp_millis())
            .map_err(serde::de::Error::custom),
    }
}

impl Store {
    /// Writes `info` as this replica's heartbeat, kept for `ttl`.
    pub async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> Result<(), StoreError> {
        let keys = self.process_keys();
        let json = serde_json::to_string(info).map_err(|e| StoreError::Corrupt {
            key: keys.worker(&info.id),
            message: e.to_string(),
        })?;
        let mut conn = self.inner.conn.clone();
        redis::pipe()
            .cmd("SET")
            .arg(keys.worker(&info.id))
            .arg(json)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .ignore()
            .zadd(keys.workers(), &info.id, info.last_heartbeat)
            .ignore()
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes a replica from the registry (on a clean shutdown).
    pub async fn deregister(&self, id: &str) -> Result<(), StoreError> {
        let keys = self.process_keys();
        let mut conn = self.inner.conn.clone();
        redis::pipe()
            .del(keys.worker(id))
            .ignore()
            .zrem(keys.workers(), id)
            .ignore()
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Every live replica, most recently started first. Replicas whose heartbeat expired
    /// are dropped from the registry on the way.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let keys = self.process_keys();
        let mut conn = self.inner.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys.workers())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::pipe();
        for id in &ids {
            get.get(keys.worker(id));
        }
        let bodies: Vec<Option<String>> = get.query_async(&mut conn).await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, body) in ids.iter().zip(bodies) {
            match body.and_then(|b| serde_json::from_str::<WorkerInfo>(&b).ok()) {
                Some(w) => out.push(w),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: () = redis::cmd("ZREM")
                .arg(keys.workers())
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
        out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}
