//! Wires the integration clients (culm-jobs' `http` stack) into a process: resolves
//! `[integrations.*]` over `[integration_defaults]` and puts the clients, next to the
//! Redis connection, into the `Deps` every handler can reach.
use crate::{
    config::Config,
    store::{RedisConn, Store},
};
use culm_core::Deps;
use culm_jobs::http::{BuildError, Integrations, config::IntegrationSettings, conn::Conn};

/// The handlers' Redis connection in the shape the client stack takes.
pub fn conn(store: &Store) -> Conn {
    match store.handler_connection() {
        RedisConn::Standalone(c) => Conn::Manager(c),
        RedisConn::Cluster(c) => Conn::Cluster(c),
        RedisConn::Sentinel(s) => Conn::Manager(s.current()),
    }
}

/// The integration clients configured in `config`, sharing limiter state through `store`'s Redis.
pub fn clients(config: &Config, store: &Store) -> Result<Integrations, BuildError> {
    Integrations::new(
        IntegrationSettings::all(&config.integrations, &config.integration_defaults),
        conn(store),
        &config.redis.key_prefix,
    )
}

/// The dependencies handlers get: the store's Redis connection (`Store::handler_deps`)
/// and the integration clients.
pub fn deps(config: &Config, store: &Store) -> Result<Deps, BuildError> {
    Ok(store.handler_deps().with(clients(config, store)?))
}
