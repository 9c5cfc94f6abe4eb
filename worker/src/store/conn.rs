//! How culm reaches Redis: one server, a Redis Cluster or a Sentinel-managed master
//! (`[redis] mode`). Owns [`RedisConn`], the multiplexed connection every store and
//! scheduler call goes through, and [`PubSubSource`], which hands the wake-up listener a
//! server to subscribe on.
//!
//! Standalone stays the fast path: [`RedisConn`] is an enum whose standalone arm hands the
//! call straight to redis-rs' `ConnectionManager`, so the only added cost is one match.
//!
//! Cluster works because every script and pipeline touches one hash slot (all keys of a
//! queue share `{prefix:queue}`, the scheduler's own keys share `{prefix}`). Wake-ups use
//! classic `PUBLISH`, which Redis Cluster forwards to every node over the cluster bus, so
//! the listener subscribes on any one node and moves to the next if that node fails.
use crate::config::{RedisConfig, RedisMode};
use redis::{
    Client, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// Commands slower than this fail (and are retried by the caller's loop).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A multiplexed, self-reconnecting connection to culm's Redis, whatever its topology.
/// Cheap to clone.
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Standalone(ConnectionManager),
    /// Redis Cluster; commands are routed by hash slot and follow MOVED/ASK.
    Cluster(ClusterConnection),
    /// The master a set of sentinels names, re-resolved after a failover.
    Sentinel(SentinelConn),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Standalone(_) => "RedisConn::Standalone",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
            RedisConn::Sentinel(_) => "RedisConn::Sentinel",
        })
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.current().get_db(),
        }
    }
}

/// Why a connection could not be set up (the caller adds the redacted URL).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A URL in `[redis]` does not parse.
    #[error("{key} is not a valid redis:// or rediss:// URL")]
    BadUrl {
        /// The config key.
        key: &'static str,
    },
    /// The server did not answer in time.
    #[error("no answer within {0}")]
    Timeout(String),
    /// Redis answered with an error, or refused the connection.
    #[error("{0}")]
    Redis(#[from] RedisError),
}

/// Where the wake-up listener subscribes.
#[derive(Clone)]
pub enum PubSubSource {
    /// The one server.
    Standalone(Client),
    /// Any node: classic PUBLISH reaches every node of a cluster. Rotates on each call, so
    /// a failed node is skipped on reconnect.
    Cluster {
        /// One client per seed node.
        nodes: Arc<Vec<Client>>,
        /// The next node to try.
        next: Arc<AtomicUsize>,
    },
    /// The current master.
    Sentinel(SentinelConn),
}

impl PubSubSource {
    /// A client to subscribe through (resolving the master anew in Sentinel mode).
    pub async fn client(&self) -> Result<Client, RedisError> {
        match self {
            PubSubSource::Standalone(c) => Ok(c.clone()),
            PubSubSource::Cluster { nodes, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % nodes.len().max(1);
                nodes
                    .get(i)
                    .cloned()
                    .ok_or_else(|| RedisError::from((redis::ErrorKind::Client, "no cluster nodes configured")))
            }
            PubSubSource::Sentinel(s) => s.shared.sentinel.lock().await.async_get_client().await,
        }
    }
}

/// A connection and the place to subscribe for wake-ups, for `config`.
pub async fn connect(config: &RedisConfig) -> Result<(RedisConn, PubSubSource), ConnectError> {
    let timeout = config.connect_timeout;
    let url_info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|_| ConnectError::BadUrl { key: "redis.url" })?;
    match config.mode {
        RedisMode::Standalone => {
            let client = Client::open(url_info).map_err(|_| ConnectError::BadUrl { key: "redis.url" })?;
            let conn = within(timeout, manager(client.clone(), timeout)).await?;
            Ok((RedisConn::Standalone(conn), PubSubSource::Standalone(client)))
        }
        RedisMode::Cluster => {
            let seeds: Vec<&str> = if config.cluster_nodes.is_empty() {
                vec![config.url.as_str()]
            } else {
                config.cluster_nodes.iter().map(String::as_str).collect()
            };
            let settings = url_info.redis_settings();
            let mut nodes = Vec::with_capacity(seeds.len());
            for seed in &seeds {
                let mut info = seed.into_connection_info().map_err(|_| ConnectError::BadUrl {
                    key: "redis.cluster_nodes",
                })?;
                if info.redis_settings().password().is_none()
                    && let Some(p) = settings.password()
                {
                    let mut rs = info.redis_settings().clone().set_password(p);
                    if let Some(u) = settings.username() {
                        rs = rs.set_username(u);
                    }
                    info = info.set_redis_settings(rs);
                }
                nodes.push(info);
            }
            let pubsub = nodes
                .iter()
                .cloned()
                .map(Client::open)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ConnectError::BadUrl {
                    key: "redis.cluster_nodes",
                })?;
            let mut builder = ClusterClient::builder(nodes)
                .connection_timeout(timeout)
                .response_timeout(RESPONSE_TIMEOUT);
            if let Some(p) = settings.password() {
                builder = builder.password(p);
            }
            if let Some(u) = settings.username() {
                builder = builder.username(u);
            }
            let client = builder.build()?;
            let conn = within(timeout, client.get_async_connection()).await?;
            Ok((
                RedisConn::Cluster(conn),
                PubSubSource::Cluster {
                    nodes: Arc::new(pubsub),
                    next: Arc::new(AtomicUsize::new(0)),
                },
            ))
        }
        RedisMode::Sentinel => {
            let sentinels = config
                .sentinel_nodes
                .iter()
                .map(|s| s.as_str().into_connection_info())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ConnectError::BadUrl {
                    key: "redis.sentinel_nodes",
                })?;
            let node_info =
                SentinelNodeConnectionInfo::default().set_redis_connection_info(url_info.redis_settings().clone());
            let mut sentinel = SentinelClient::build(
                sentinels,
                config.sentinel_master.clone(),
                Some(node_info),
                SentinelServerType::Master,
            )?;
            let master = within(timeout, sentinel.async_get_client()).await?;
            let conn = within(timeout, manager(master, timeout)).await?;
            let s = SentinelConn {
                shared: Arc::new(SentinelShared {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    current: RwLock::new(conn),
                    refreshing: AtomicBool::new(false),
                    timeout,
                }),
            };
            Ok((RedisConn::Sentinel(s.clone()), PubSubSource::Sentinel(s)))
        }
    }
}

/// Runs a connection attempt under three connect timeouts (DNS, TCP, then the handshake).
async fn within<T>(
    timeout: Duration,
    attempt: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(timeout * 3, attempt)
        .await
        .map_err(|_| ConnectError::Timeout(humantime::format_duration(timeout * 3).to_string()))?
        .map_err(ConnectError::from)
}

async fn manager(client: Client, timeout: Duration) -> Result<ConnectionManager, RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config).await
}

/// A `ConnectionManager` to the master the sentinels name. After an error that suggests
/// a failover (the server went away, or answers `READONLY` because it was demoted), it
/// asks the sentinels again in the background and swaps in a connection to the new master.
/// Commands that failed meanwhile fail once; culm's loops retry them.
#[derive(Clone)]
pub struct SentinelConn {
    shared: Arc<SentinelShared>,
}

struct SentinelShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<ConnectionManager>,
    refreshing: AtomicBool,
    timeout: Duration,
}

impl SentinelConn {
    /// The connection to the master as last resolved.
    pub fn current(&self) -> ConnectionManager {
        match self.shared.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn after_error(&self, e: &RedisError) {
        let failover = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.code().is_some_and(|c| c == "READONLY" || c == "MASTERDOWN");
        if !failover || self.shared.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let resolved = async {
                let client = shared.sentinel.lock().await.async_get_client().await?;
                tokio::time::timeout(shared.timeout * 3, manager(client, shared.timeout))
                    .await
                    .map_err(|_| RedisError::from((redis::ErrorKind::Io, "timed out connecting to the new master")))?
            };
            match resolved.await {
                Ok(conn) => {
                    match shared.current.write() {
                        Ok(mut c) => *c = conn,
                        Err(poisoned) => *poisoned.into_inner() = conn,
                    }
                    tracing::info!("redis sentinel: reconnected to the current master");
                }
                Err(e) => tracing::warn!("redis sentinel: cannot resolve the master yet: {e}"),
            }
            shared.refreshing.store(false, Ordering::Release);
        });
    }

    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let this = self.clone();
        Box::pin(async move {
            let mut c = this.current();
            let r = c.req_packed_command(cmd).await;
            if let Err(e) = &r {
                this.after_error(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let this = self.clone();
        Box::pin(async move {
            let mut c = this.current();
            let r = c.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &r {
                this.after_error(e);
            }
            r
        })
    }
}
