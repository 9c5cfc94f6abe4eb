//! Wires the integration clients (culm-jobs' `http` stack) into a process: resolves
//! `[integrations.*]` over `[integration_defaults]` and puts the clients, next to the
//! Redis connection, into the `Deps` every handler can reach.
use crate::{config::Config, store::Store};
use culm_core::Deps;
use culm_jobs::http::{BuildError, Integrations, config::IntegrationSettings};

/// The integration clients configured in `config`, sharing limiter state through `store`'s Redis.
pub fn clients(config: &Config, store: &Store) -> Result<Integrations, BuildError> {
    Integrations::new(
        IntegrationSettings::all(&config.integrations, &config.integration_defaults),
        store.connection(),
        &config.redis.key_prefix,
    )
}

/// The dependencies handlers get: the Redis connection and the integration clients.
pub fn deps(config: &Config, store: &Store) -> Result<Deps, BuildError> {
    Ok(Deps::default().with(store.connection()).with(clients(config, store)?))
}
