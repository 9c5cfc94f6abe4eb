//! Test support: each test gets its own Redis key prefix, its own config and, when it
//! needs PostgreSQL, its own database ([`TestDb`]); it starts culm in-process or as a
//! child `culm` binary, and waits on conditions or job events instead of sleeping.
use culm_core::{EnqueueRequest, Enqueued, RetryPolicy};
use culm_worker::{
    config::{Config, QueueConfig, RetryConfig},
    runtime::{JobEvent, Runtime},
    store::{Ack, AckKind, Delivery, Store},
};
use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::broadcast;

pub mod faults;
mod postgres;
pub use postgres::{TestDb, database_server_url, ledger_for};

/// The README's Rust examples, compiled (and run, where they have a body to run) by
/// `cargo test --doc`, which `scripts/test.sh` runs after nextest (nextest skips
/// doctests). This crate sees every culm crate and the test kits, as the examples need.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// A test's isolated world: a unique key prefix on the real Redis.
pub struct TestEnv {
    /// The test's configuration.
    pub config: Config,
    pub store: Store,
    /// This test's own prefix: no other test reads or writes its keys.
    pub prefix: String,
}

/// Redis URL for tests (`CULM_TEST_REDIS_URL`, default local).
pub fn redis_url() -> String {
    std::env::var("CULM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A queue declaration for tests.
pub fn queue(tier: &str, concurrency: u32, timeout_ms: u64, max_attempts: u32) -> QueueConfig {
    QueueConfig {
        tier: tier.parse().expect("valid tier"),
        concurrency,
        timeout: Some(Duration::from_millis(timeout_ms)),
        max_in_flight: None,
        retry: Some(RetryConfig(RetryPolicy::exponential(
            max_attempts,
            Duration::from_millis(20),
            Duration::from_millis(100),
        ))),
        result_ttl: None,
        description: String::new(),
    }
}

impl TestEnv {
    /// Defaults with a unique prefix and short leases, adjusted by `adjust`.
    pub async fn new(adjust: impl FnOnce(&mut Config)) -> TestEnv {
        Self::with_registry(culm_jobs::registry().expect("registry"), adjust).await
    }

    /// Like [`TestEnv::new`] with a custom job registry (tests that add job types).
    pub async fn with_registry(registry: culm_core::Registry, adjust: impl FnOnce(&mut Config)) -> TestEnv {
        let mut config = Config::defaults().expect("built-in defaults load");
        let prefix = format!("culmtest-{}", ulid::Ulid::new().to_string().to_lowercase());
        config.redis.url = redis_url();
        config.redis.key_prefix = prefix.clone();
        config.worker.lease_ttl = Duration::from_secs(2);
        config.worker.lease_extend_interval = Duration::from_millis(500);
        config.worker.reap_interval = Duration::from_millis(200);
        config.worker.drain_timeout = Duration::from_secs(10);
        adjust(&mut config);
        let registry = Arc::new(registry);
        let store = Store::connect(&config, registry)
            .await
            .expect("Redis is reachable for tests");
        store
            .open_handler_connection(&config)
            .await
            .expect("Redis is reachable for tests");
        TestEnv { config, store, prefix }
    }

    /// A runtime over this env (handlers get a Redis connection as their dependency).
    pub fn runtime(&self) -> Runtime {
        let deps = culm_worker::integrations::deps(&self.config, &self.store).expect("integration clients build");
        Runtime::new(Arc::new(self.config.clone()), self.store.clone(), deps)
    }

    /// Enqueues one job.
    pub async fn enqueue(&self, req: EnqueueRequest) -> Enqueued {
        self.store.enqueue(vec![req]).await.expect("enqueue").remove(0)
    }

    /// A Redis key under this test's prefix (for record sets).
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Members of a Redis set.
    pub async fn members(&self, set: &str) -> Vec<String> {
        let mut c = self.store.connection();
        redis::cmd("SMEMBERS")
            .arg(set)
            .query_async(&mut c)
            .await
            .expect("SMEMBERS")
    }

    /// Deletes every key of this test.
    pub async fn cleanup(&self) {
        let mut c = self.store.connection();
        let pattern = format!("*{}*", self.prefix);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
        }
    }
}

/// Enqueues `reqs` in one batch and returns the job ids, in order.
pub async fn enqueue_ids(store: &Store, reqs: Vec<EnqueueRequest>) -> Vec<String> {
    store
        .enqueue(reqs)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the first event matching `pred` (job events, schedule events, ...).
pub async fn next_event<E: Clone>(rx: &mut broadcast::Receiver<E>, timeout: Duration, pred: impl Fn(&E) -> bool) -> E {
    tokio::time::timeout(timeout, async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await
    .expect("expected event did not arrive in time")
}

/// Whether an event is the final outcome of a run.
pub fn is(kind: &str, e: &JobEvent) -> bool {
    matches!(
        (kind, &e.kind),
        ("done", AckKind::Done)
            | ("dead", AckKind::Dead)
            | ("retry", AckKind::Retry { .. })
            | ("defer", AckKind::Defer { .. })
            | ("expired", AckKind::Expired)
            | ("cancelled", AckKind::Cancelled)
    )
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path to the `culm` binary of this build profile, building it if needed.
pub fn culm_bin() -> PathBuf {
    // current_exe is target/<profile>/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_path_buf();
    let bin = profile_dir.join("culm");
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.current_dir(workspace_root())
            .args(["build", "-p", "culm-worker", "--bin", "culm"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo runs").success(), "building culm failed");
    }
    bin
}

/// A TCP forwarder in front of a real service, which a test can cut to simulate an
/// outage without touching the service itself.
pub struct TcpProxy {
    /// `127.0.0.1:<port>` to connect to instead of the service.
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl TcpProxy {
    /// Forwards connections from an ephemeral loopback port to `target` ("host:port").
    pub async fn start(target: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let target = target.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    continue; // dropped at once: the service looks down
                }
                let target = target.clone();
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        TcpProxy { addr, cut }
    }

    /// Drops every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}

/// Kills the child process if the test fails before stopping it.
pub struct KillOnDrop(pub Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl KillOnDrop {
    /// Sends SIGTERM and waits for the child to exit.
    pub fn sigterm(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("child still running");
        sigterm_and_wait(&mut child)
    }
}

/// Sends SIGTERM to a child process and waits for it to exit.
pub fn sigterm_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {} failed", child.id());
    child.wait().expect("wait")
}

/// Serves the admin API over `state` on an ephemeral loopback port, as `culm run` does.
/// Returns its base URL (`http://127.0.0.1:<port>`) and the sender that stops it; dropping
/// the sender stops it too.
pub async fn serve_admin(state: culm_worker::admin::AdminState) -> (String, tokio::sync::watch::Sender<bool>) {
    let (router, _) = culm_worker::admin::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(culm_worker::admin::serve(listener, router, stop_rx));
    (base, stop)
}

/// The acknowledgement of `d`'s run as `kind` (with `error`), as a pool's acker sends it,
/// without the `finished` entry or a tracked batch.
pub fn ack(d: &Delivery, kind: AckKind, error: &str) -> Ack {
    Ack {
        id: d.id.clone(),
        token: d.token,
        kind,
        error: error.to_owned(),
        expired_only: false,
        finished: None,
        batch: None,
    }
}
