//! The Redis connection the client stack uses for the shared limiter: a
//! `ConnectionManager` (standalone, or the current Sentinel master) or a Redis Cluster
//! connection. Every limiter script touches one key, so it runs unchanged on a cluster.
use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
};

/// A Redis connection for integration state; cheap to clone.
#[derive(Clone)]
pub enum Conn {
    /// One server (or a Sentinel-resolved master).
    Manager(ConnectionManager),
    /// A Redis Cluster: the limiter's key lives in one slot per endpoint.
    Cluster(ClusterConnection),
}

impl From<ConnectionManager> for Conn {
    fn from(c: ConnectionManager) -> Self {
        Conn::Manager(c)
    }
}

impl From<ClusterConnection> for Conn {
    fn from(c: ClusterConnection) -> Self {
        Conn::Cluster(c)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
