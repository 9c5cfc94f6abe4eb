//! Test support for the job catalog (feature `testing`): a [`TestKit`] that knows every
//! job type ([`kit`]), and [`TestIntegrations`], which points integration clients at a
//! fake upstream such as a `wiremock::MockServer`, so a handler's HTTP calls can be
//! checked with `.expect(n)`.
//!
//! **Redis is needed for HTTP.** Every [`crate::http::Client`] call reserves a slot from
//! the shared rate limiter, a Lua script on Redis, even on an endpoint without a limit
//! (a 429 moves that endpoint's next slot). The kit does not fake it: [`TestIntegrations::connect`]
//! uses the real Redis at `CULM_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`), as
//! the rest of the test suite does, under a key prefix of its own, so limits and
//! push-back behave as in production. Handlers that call no integration need no Redis:
//! [`kit`] alone is enough for them.
use crate::http::{BuildError, Integrations, config::BreakerConfig, config::IntegrationSettings};
use culm_core::{Deps, testing::TestKit};
use redis::aio::ConnectionManager;
use std::{collections::BTreeMap, time::Duration};

/// A [`TestKit`] that validates enqueued jobs and follow-ups against the whole catalog
/// ([`crate::registry`]) and can run follow-ups with [`TestKit::perform_request`].
///
/// # Panics
/// When the catalog does not register (a duplicate name), which every test would hit.
pub fn kit() -> TestKit {
    TestKit::new().with_registry(crate::registry().unwrap_or_else(|e| panic!("the job catalog registers: {e}")))
}

/// Settings of integration `name` calling `base_url`, with test-friendly values: no rate
/// limits, no transport retries (each request the upstream sees is one the handler made),
/// short timeouts, and a breaker that opens after 5 failures. Adjust the public fields
/// (e.g. `limits`) and pass the result to [`TestIntegrations::with`].
pub fn settings(name: &str, base_url: &str) -> IntegrationSettings {
    IntegrationSettings {
        name: name.to_owned(),
        base_url: base_url.trim_end_matches('/').to_owned(),
        api_key_env: String::new(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        max_wait: Duration::from_secs(2),
        guard: Duration::ZERO,
        transport_retries: 0,
        recover_after: Duration::from_secs(5),
        default_retry_after: Duration::from_secs(1),
        breaker: BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        },
        limits: BTreeMap::new(),
    }
}

/// The Redis URL of the test suite: `CULM_TEST_REDIS_URL`, default the local server.
pub fn redis_url() -> String {
    std::env::var("CULM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Integration clients for a test, on the real Redis under a fresh key prefix.
#[derive(Clone)]
pub struct TestIntegrations {
    redis: ConnectionManager,
    prefix: String,
    settings: BTreeMap<String, IntegrationSettings>,
}

impl std::fmt::Debug for TestIntegrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIntegrations")
            .field("prefix", &self.prefix)
            .field("integrations", &self.settings.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TestIntegrations {
    /// Connects to [`redis_url`] with the key prefix `culmtest-kit-<random>`; no integration
    /// is configured yet.
    pub async fn connect() -> Result<Self, redis::RedisError> {
        let redis = redis::Client::open(redis_url())?.get_connection_manager().await?;
        Ok(Self {
            redis,
            prefix: format!("culmtest-kit-{:016x}", rand::random::<u64>()),
            settings: BTreeMap::new(),
        })
    }

    /// Sends integration `name`'s calls to `base_url` (e.g. `server.uri()`), with
    /// [`settings`]; the client appends its paths (`/orders`) to it.
    pub fn point(self, name: &str, base_url: &str) -> Self {
        self.with(settings(name, base_url))
    }

    /// Adds or replaces one integration's settings.
    pub fn with(mut self, settings: IntegrationSettings) -> Self {
        self.settings.insert(settings.name.clone(), settings);
        self
    }

    /// The clients, as the worker builds them (API keys read from `api_key_env`).
    pub fn integrations(&self) -> Result<Integrations, BuildError> {
        Integrations::new(
            self.settings.values().cloned().collect(),
            self.redis.clone(),
            &self.prefix,
        )
    }

    /// What the worker puts in `Deps`: the Redis connection and the clients.
    ///
    /// # Panics
    /// When a client cannot be built (an API key that is not a valid header value).
    pub fn deps(&self) -> Deps {
        let clients = self.integrations().unwrap_or_else(|e| panic!("{e}"));
        Deps::default().with(self.redis.clone()).with(clients)
    }

    /// [`kit`] with these clients as dependencies.
    pub fn kit(&self) -> TestKit {
        kit().with_deps(self.deps())
    }

    /// This test's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A key under this test's prefix, as handlers build them (`Integrations::key`).
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// A connection to the test Redis.
    pub fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Deletes every key under this test's prefix (limiter state, recorded results).
    pub async fn cleanup(&self) {
        let mut c = self.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
        }
    }
}
