//! The fault-injection soak, driven by `scripts/soak.sh`.
//!
//! Starts a throwaway `redis-server` (own port, AOF with `appendfsync always`, temp
//! dir), two `culm run` worker processes on a dedicated `soak` queue and key prefix,
//! talking to Redis through a [`FaultProxy`], and feeds them `platform.record` jobs at a
//! steady rate. During the run, at random moments: one worker is SIGKILLed five times and
//! restarted; Redis is SIGKILLed and restarted from its AOF once; Redis is frozen with
//! SIGSTOP for 20 s (longer than the lease) and resumed with SIGCONT; and the proxy drops
//! six replies after their commands ran in Redis (fetch, ack, extend in turn).
//! Afterwards every job's tag is looked up in the record set: the report gives jobs lost,
//! jobs run more than once, jobs dead-lettered, and the recovery after each fault.
//! Loopback only; bounded by `--deadline`.

use anyhow::{Context, Result, bail};
use culm_core::EnqueueRequest;
use culm_tests::faults::{DropRule, FaultProxy, WorkerEnv, redis_server_command, signal, wait_for_redis};
use culm_worker::{
    config::{Config, QueueConfig, RetryConfig},
    store::{QueueKeys, Store},
};
use redis::aio::ConnectionManager;
use std::{
    collections::HashSet,
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

const QUEUE: &str = "soak";

/// Command-line options (`--name value`).
#[derive(Debug, Clone)]
struct Opts {
    culm: PathBuf,
    jobs: u64,
    rate: u64,
    port: u16,
    concurrency: u32,
    sleep_ms: u64,
    kills: usize,
    freeze: Duration,
    drops: usize,
    seed: u64,
    deadline: Duration,
    lease_ttl: String,
    lease_extend: String,
    reap: String,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            culm: PathBuf::from("target/debug/culm"),
            jobs: 100_000,
            rate: 600,
            port: 6390,
            concurrency: 16,
            sleep_ms: 20,
            kills: 5,
            freeze: Duration::from_secs(20),
            drops: 6,
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            deadline: Duration::from_secs(600),
            lease_ttl: "3s".into(),
            lease_extend: "1s".into(),
            reap: "250ms".into(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .with_context(|| format!("{flag}: `{v}` is not a number"))
            };
            match flag.as_str() {
                "--culm" => o.culm = PathBuf::from(value),
                "--jobs" => o.jobs = num(&value)?,
                "--rate" => o.rate = num(&value)?.max(1),
                "--port" => o.port = u16::try_from(num(&value)?).context("--port")?,
                "--concurrency" => o.concurrency = u32::try_from(num(&value)?).context("--concurrency")?,
                "--sleep-ms" => o.sleep_ms = num(&value)?,
                "--kills" => o.kills = usize::try_from(num(&value)?).context("--kills")?,
                "--freeze-s" => o.freeze = Duration::from_secs(num(&value)?),
                "--drops" => o.drops = usize::try_from(num(&value)?).context("--drops")?,
                "--seed" => o.seed = num(&value)?.max(1),
                "--deadline-s" => o.deadline = Duration::from_secs(num(&value)?),
                "--lease-ttl" => o.lease_ttl = value,
                "--lease-extend-interval" => o.lease_extend = value,
                "--reap-interval" => o.reap = value,
                _ => bail!("unknown option {flag}"),
            }
        }
        if !o.culm.exists() {
            bail!(
                "{} does not exist: build culm first (cargo build -p culm-worker --bin culm)",
                o.culm.display()
            );
        }
        Ok(o)
    }
}

/// xorshift64*: reproducible from the printed seed, no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi) milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// The processes this soak started; each is killed (by its own id) when dropped.
struct Processes {
    redis: Option<Child>,
    workers: Vec<Option<Child>>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.redis))
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct World {
    opts: Opts,
    /// Between the workers and Redis.
    proxy: FaultProxy,
    dir: PathBuf,
    url: String,
    prefix: String,
    set: String,
    keys: QueueKeys,
    started: Instant,
}

impl World {
    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn spawn_redis(&self) -> Result<Child> {
        redis_server_command(self.opts.port, &self.dir)
            .spawn()
            .context("starting redis-server (is it installed?)")
    }

    fn spawn_worker(&self, n: usize) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("worker-{n}.log")))?;
        let env = WorkerEnv {
            redis_url: self.proxy.url(),
            key_prefix: self.prefix.clone(),
            queue: QUEUE.to_owned(),
            concurrency: self.opts.concurrency,
            max_attempts: 25,
            backoff: ("100ms".into(), "1s".into()),
            lease_ttl: self.opts.lease_ttl.clone(),
            lease_extend_interval: self.opts.lease_extend.clone(),
            reap_interval: self.opts.reap.clone(),
            extra: vec![("CULM__WORKER__DONE_RETENTION".into(), (self.opts.jobs * 2).to_string())],
        };
        env.command(&self.opts.culm)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.opts.culm.display()))
    }

    async fn connect(&self) -> Result<ConnectionManager> {
        let client = redis::Client::open(self.url.as_str())?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        Ok(ConnectionManager::new_with_config(client, cfg).await?)
    }

    async fn wait_for_redis(&self, timeout: Duration) -> Result<()> {
        if !wait_for_redis(&self.url, timeout).await {
            bail!("redis-server on {} did not answer within {timeout:?}", self.url);
        }
        Ok(())
    }
}

/// One (time, records) sample of progress.
type Samples = Arc<Mutex<Vec<(f64, u64)>>>;

#[derive(Debug)]
enum Fault {
    Kill {
        worker: usize,
    },
    Redis,
    /// SIGSTOP redis-server for `--freeze-s`, then SIGCONT.
    Freeze,
    /// `--drops` replies dropped by the proxy after their commands ran; what was dropped.
    Drops {
        dropped: Vec<String>,
    },
}

#[derive(Debug)]
struct FaultReport {
    fault: Fault,
    at: f64,
    /// Leases held when the worker died (both workers' jobs), or when Redis was frozen.
    leased_at_kill: usize,
    /// Of those, the ones still unfinished 1 s later (after SIGCONT for a freeze): the
    /// killed worker's (the survivor's jobs take milliseconds; the dead worker's wait for
    /// their lease).
    held_by_killed: usize,
    /// Until every job leased at the kill had finished (the dead worker's after redelivery).
    leased_done_after: Option<f64>,
    /// Down time (Redis), time until the replacement process was started (kill), the
    /// freeze, or the drop phase.
    down_for: f64,
}

impl FaultReport {
    /// A fault at `at` (s); what it did to the leased jobs is filled in later.
    fn new(fault: Fault, at: f64, down_for: f64) -> FaultReport {
        FaultReport {
            fault,
            at,
            leased_at_kill: 0,
            held_by_killed: 0,
            leased_done_after: None,
            down_for,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let opts = Opts::parse()?;
    let deadline = opts.deadline;
    let mut procs = Processes {
        redis: None,
        workers: vec![None, None],
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(deadline, soak(opts, &mut procs)) => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("the soak did not finish within its deadline of {deadline:?}")),
        },
        _ = culm_worker::cli::signals::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    drop(procs);
    let report = outcome?;
    println!("{report}");
    Ok(())
}

async fn soak(opts: Opts, procs: &mut Processes) -> Result<String> {
    if std::net::TcpListener::bind(("127.0.0.1", opts.port)).is_err() {
        bail!(
            "127.0.0.1:{} is in use; pass --port with a free port (never the shared 6379)",
            opts.port
        );
    }
    let prefix = format!("soak-{}", ulid::Ulid::new().to_string().to_lowercase());
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let world = Arc::new(World {
        url: format!("redis://127.0.0.1:{}", opts.port),
        proxy: FaultProxy::start(&format!("127.0.0.1:{}", opts.port)).await,
        set: format!("{prefix}:recorded"),
        keys: QueueKeys::new(&prefix, QUEUE),
        prefix,
        dir,
        started: Instant::now(),
        opts,
    });
    let o = &world.opts;
    eprintln!(
        "soak: {} jobs at {}/s, seed {}, redis {} (workers through the proxy on {}; dir {}), culm {}",
        o.jobs,
        o.rate,
        o.seed,
        world.url,
        world.proxy.addr,
        world.dir.display(),
        o.culm.display()
    );
    procs.redis = Some(world.spawn_redis()?);
    world.wait_for_redis(Duration::from_secs(10)).await?;
    for (i, w) in procs.workers.iter_mut().enumerate() {
        *w = Some(world.spawn_worker(i)?);
    }

    let mut config = Config::defaults()?;
    config.redis.url = world.url.clone();
    config.redis.key_prefix = world.prefix.clone();
    config.queues.insert(
        QUEUE.to_owned(),
        QueueConfig {
            tier: culm_core::Tier::Batch,
            concurrency: o.concurrency,
            max_in_flight: None,
            timeout: None,
            retry: Some(RetryConfig(culm_core::RetryPolicy::exponential(
                25,
                Duration::from_millis(100),
                Duration::from_secs(1),
            ))),
            result_ttl: None,
            description: String::new(),
        },
    );
    let store = Store::connect(&config, Arc::new(culm_jobs::registry()?)).await?;
    let conn = world.connect().await?;

    let samples: Samples = Arc::default();
    let monitor = tokio::spawn(monitor(world.clone(), conn.clone(), samples.clone()));
    let producer = tokio::spawn(produce(world.clone(), store));

    // Fault plan: one slot per fault across the production window, each fault at a
    // random moment in the first part of its slot, so recoveries do not overlap.
    let mut rng = Rng(o.seed);
    let mut special = vec![Fault::Redis];
    if !o.freeze.is_zero() {
        special.push(Fault::Freeze);
    }
    if o.drops > 0 {
        special.push(Fault::Drops { dropped: Vec::new() });
    }
    let faults = o.kills + special.len();
    let produce_ms = o.jobs * 1000 / o.rate;
    // Faults between 5 s in and 15 s before production ends, so each one's throughput
    // recovery is measured while jobs still arrive at the steady rate.
    let first = 5_000.min(produce_ms / 10);
    let last = produce_ms.saturating_sub(15_000).max(first + faults as u64 * 1_000);
    let slot = (last - first) / faults as u64;
    // The Redis, freeze and drop faults take random distinct slots (Fisher-Yates);
    // the worker kills take the rest.
    let mut order: Vec<usize> = (0..faults).collect();
    for i in (1..faults).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut kinds: Vec<Option<Fault>> = (0..faults).map(|_| None).collect();
    for (f, &s) in special.into_iter().zip(&order) {
        kinds[s] = Some(f);
    }
    let mut plan: Vec<(Duration, Fault)> = Vec::new();
    for (s, kind) in kinds.into_iter().enumerate() {
        let at = Duration::from_millis(first + s as u64 * slot) + rng.ms(0, slot / 2);
        // Always the same worker: one process is killed and restarted five times.
        plan.push((at, kind.unwrap_or(Fault::Kill { worker: 0 })));
    }

    let mut reports = Vec::new();
    // (index into `reports`, the task measuring when the jobs leased at the fault finished)
    let mut measuring = Vec::new();
    // A freeze holds up the plan by its length, so the faults after it do not bunch up.
    let mut shift = Duration::ZERO;
    for (at, fault) in plan {
        tokio::time::sleep_until(tokio::time::Instant::from_std(world.started + at + shift)).await;
        let t = world.t();
        match fault {
            Fault::Kill { worker } => {
                if let Some(mut c) = procs.workers[worker].take() {
                    c.kill().context("SIGKILL worker")?;
                    let _ = c.wait();
                }
                let leased = leases(&conn, &world.keys).await.unwrap_or_default();
                eprintln!("[{t:7.2}s] SIGKILL worker {worker} ({} jobs leased)", leased.len());
                let task = tokio::spawn(await_done(world.clone(), conn.clone(), leased, t));
                measuring.push((reports.len(), task));
                let pause = rng.ms(300, 2_000);
                tokio::time::sleep(pause).await;
                procs.workers[worker] = Some(world.spawn_worker(worker)?);
                let down = world.t() - t;
                eprintln!("[{:7.2}s] worker {worker} restarted", world.t());
                reports.push(FaultReport::new(fault, t, down));
            }
            Fault::Redis => {
                if let Some(mut c) = procs.redis.take() {
                    c.kill().context("SIGKILL redis-server")?;
                    let _ = c.wait();
                }
                eprintln!("[{t:7.2}s] SIGKILL redis-server");
                let pause = rng.ms(500, 2_000);
                tokio::time::sleep(pause).await;
                procs.redis = Some(world.spawn_redis()?);
                world.wait_for_redis(Duration::from_secs(30)).await?;
                let down = world.t() - t;
                eprintln!("[{:7.2}s] redis-server back after {down:.2}s (AOF reloaded)", world.t());
                reports.push(FaultReport::new(fault, t, down));
            }
            Fault::Freeze => {
                let pid = procs.redis.as_ref().map(Child::id).context("redis-server is running")?;
                let leased = leases(&conn, &world.keys).await.unwrap_or_default();
                signal(pid, "STOP");
                eprintln!(
                    "[{t:7.2}s] SIGSTOP redis-server for {:?} ({} jobs leased)",
                    o.freeze,
                    leased.len()
                );
                tokio::time::sleep(o.freeze).await;
                signal(pid, "CONT");
                let resumed = world.t();
                eprintln!("[{resumed:7.2}s] SIGCONT redis-server");
                let task = tokio::spawn(await_done(world.clone(), conn.clone(), leased, resumed));
                measuring.push((reports.len(), task));
                shift += o.freeze;
                reports.push(FaultReport::new(fault, t, resumed - t));
            }
            Fault::Drops { .. } => {
                let dropped = drop_replies(&world, o.drops).await;
                let down = world.t() - t;
                eprintln!(
                    "[{:7.2}s] proxy dropped {} replies after their commands ran: {}",
                    world.t(),
                    dropped.len(),
                    dropped.join("; ")
                );
                reports.push(FaultReport::new(Fault::Drops { dropped }, t, down));
            }
        }
    }
    for (i, m) in measuring {
        let (n, held, after) = m.await?;
        if let Some(r) = reports.get_mut(i) {
            r.leased_at_kill = n;
            r.held_by_killed = held;
            r.leased_done_after = after;
        }
    }
    let (enqueued, produced_at) = producer.await??;
    eprintln!(
        "[{:7.2}s] all {enqueued} jobs enqueued; waiting for the drain",
        world.t()
    );

    // Drain: every tag recorded, or give up after a minute without progress.
    let mut c = conn.clone();
    let mut last = (0u64, Instant::now());
    loop {
        let n: u64 = redis::cmd("SCARD")
            .arg(&world.set)
            .query_async(&mut c)
            .await
            .unwrap_or(last.0);
        if n >= world.opts.jobs {
            break;
        }
        if n > last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            eprintln!("no progress for 60 s at {n} recorded: stopping");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_at = world.t();
    monitor.abort();
    // Graceful stop of both workers (SIGTERM), then count.
    for c in procs.workers.iter().flatten() {
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
    }
    for w in procs.workers.iter_mut() {
        if let Some(mut c) = w.take() {
            let _ = tokio::task::spawn_blocking(move || c.wait()).await;
        }
    }
    let verdict = verdict(&world, &conn).await?;
    let samples = samples.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let report = render(&world, &reports, &samples, &verdict, produced_at, drained_at);
    if verdict.lost == 0 {
        let _ = std::fs::remove_dir_all(&world.dir);
    } else {
        eprintln!("logs and AOF kept in {}", world.dir.display());
    }
    Ok(report)
}

/// Enqueues `jobs` record jobs at `rate`/s in batches of 1/10 s. Every job carries an
/// idempotency key, so a batch retried after a Redis error does not add duplicates.
async fn produce(world: Arc<World>, store: Store) -> Result<(u64, f64)> {
    let o = &world.opts;
    let batch = (o.rate / 10).max(1);
    let mut next = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while next < o.jobs {
        tick.tick().await;
        let end = (next + batch).min(o.jobs);
        let reqs: Vec<EnqueueRequest> = (next..end)
            .map(|n| {
                EnqueueRequest::raw(
                    "platform.record",
                    serde_json::json!({"set": world.set, "sleep_ms": o.sleep_ms, "tag": n.to_string()}),
                )
                .queue(QUEUE)
                .idempotency_key(format!("soak-{n}"))
            })
            .collect();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), store.enqueue(reqs.clone())).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => eprintln!("[{:7.2}s] enqueue failed, retrying: {e}", world.t()),
                Err(_) => eprintln!("[{:7.2}s] enqueue timed out, retrying", world.t()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        next = end;
    }
    Ok((next, world.t()))
}

async fn monitor(world: Arc<World>, mut conn: ConnectionManager, samples: Samples) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            redis::cmd("SCARD").arg(&world.set).query_async::<u64>(&mut conn),
        )
        .await;
        if let Ok(Ok(n)) = r {
            samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((world.t(), n));
        }
    }
}

/// Has the proxy drop `n` replies after their commands ran in Redis: a fetch that leased
/// jobs, an ack, an extend, in turn; each waits up to 10 s for a matching reply. Returns
/// what was dropped.
async fn drop_replies(world: &World, n: usize) -> Vec<String> {
    let fetch = || DropRule::script("fetch.lua").when_reply(|r| r.items().len() > 2);
    let rules = [fetch(), DropRule::script("ack.lua"), DropRule::script("extend.lua")];
    let mut out = Vec::new();
    for rule in rules.iter().cycle().take(n) {
        let before = world.proxy.dropped().len();
        world.proxy.drop_reply(rule.clone());
        let start = Instant::now();
        while world.proxy.dropped().len() == before && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match world.proxy.dropped().get(before) {
            Some(d) if d.rule == "fetch" => out.push(format!(
                "fetch leasing {} jobs",
                d.reply.items().len().saturating_sub(2) / 3
            )),
            Some(d) => out.push(d.rule.clone()),
            None => {
                world.proxy.disarm();
                out.push(format!("no {} reply within 10 s", rule.name));
            }
        }
    }
    out
}

async fn leases(conn: &ConnectionManager, keys: &QueueKeys) -> Result<Vec<String>> {
    let mut c = conn.clone();
    // By score, below +inf: `leases` also holds a pin member scored +inf, which is no lease.
    Ok(redis::cmd("ZRANGE")
        .arg(keys.leases())
        .arg("-inf")
        .arg("(+inf")
        .arg("BYSCORE")
        .query_async(&mut c)
        .await?)
}

/// Waits until every job leased at the kill is done: (leased, still pending 1 s after the
/// kill, seconds from the kill until all were done or `None` after two minutes).
async fn await_done(
    world: Arc<World>,
    conn: ConnectionManager,
    ids: Vec<String>,
    killed_at: f64,
) -> (usize, usize, Option<f64>) {
    let n = ids.len();
    let mut held = None;
    let mut pending: HashSet<String> = ids.into_iter().collect();
    let mut c = conn;
    let done_key = world.keys.done();
    while !pending.is_empty() {
        if world.t() - killed_at > 120.0 {
            return (n, held.unwrap_or(pending.len()), None);
        }
        if held.is_none() && world.t() - killed_at >= 1.0 {
            held = Some(pending.len());
        }
        let list: Vec<&String> = pending.iter().collect();
        let mut pipe = redis::pipe();
        for id in &list {
            pipe.zscore(&done_key, *id);
        }
        if let Ok(Ok(scores)) =
            tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<Vec<Option<f64>>>(&mut c)).await
        {
            let finished: Vec<String> = list
                .iter()
                .zip(scores)
                .filter(|(_, s)| s.is_some())
                .map(|(id, _)| (*id).clone())
                .collect();
            for id in finished {
                pending.remove(&id);
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (n, held.unwrap_or(0), Some(world.t() - killed_at))
}

struct Verdict {
    lost: u64,
    recorded: u64,
    run_more_than_once: u64,
    extra_runs: u64,
    dead: u64,
    /// Dead-lettered jobs whose handler had recorded them (they succeeded).
    dead_recorded: u64,
    left: (u64, u64, u64),
}

async fn verdict(world: &World, conn: &ConnectionManager) -> Result<Verdict> {
    let mut c = conn.clone();
    let jobs = world.opts.jobs;
    let mut lost = 0u64;
    let mut n = 0u64;
    while n < jobs {
        let end = (n + 10_000).min(jobs);
        let tags: Vec<String> = (n..end).map(|i| i.to_string()).collect();
        let present: Vec<bool> = redis::cmd("SMISMEMBER")
            .arg(&world.set)
            .arg(&tags)
            .query_async(&mut c)
            .await?;
        lost += present.iter().filter(|p| !**p).count() as u64;
        n = end;
    }
    let recorded: u64 = redis::cmd("SCARD").arg(&world.set).query_async(&mut c).await?;
    let runs: Vec<u64> = redis::cmd("HVALS")
        .arg(format!("{}:runs", world.set))
        .query_async(&mut c)
        .await?;
    let k = &world.keys;
    let (dead, ready, scheduled, leased): (u64, u64, u64, u64) = redis::pipe()
        .zcard(k.dead())
        .llen(k.ready())
        .zcard(k.scheduled())
        .zcount(k.leases(), "-inf", "(+inf")
        .query_async(&mut c)
        .await?;
    // A dead job keeps its body: read its tag and look it up in the record set.
    let dead_ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(k.dead())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await?;
    let mut dead_recorded = 0;
    for id in dead_ids {
        let body: Option<String> = redis::cmd("HGET").arg(k.jobs()).arg(&id).query_async(&mut c).await?;
        let tag = body
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["payload"]["tag"].as_str().map(str::to_owned));
        if let Some(tag) = tag {
            let recorded: bool = redis::cmd("SISMEMBER")
                .arg(&world.set)
                .arg(tag)
                .query_async(&mut c)
                .await?;
            dead_recorded += u64::from(recorded);
        }
    }
    Ok(Verdict {
        lost,
        recorded,
        run_more_than_once: runs.iter().filter(|r| **r > 1).count() as u64,
        extra_runs: runs.iter().map(|r| r.saturating_sub(1)).sum(),
        dead,
        dead_recorded,
        left: (ready, scheduled, leased),
    })
}

/// Records per second over the second ending at `t`.
fn rate_at(samples: &[(f64, u64)], t: f64) -> Option<f64> {
    let at = |x: f64| samples.iter().rev().find(|(st, _)| *st <= x).map(|(_, n)| *n);
    Some((at(t)?.saturating_sub(at(t - 1.0)?)) as f64)
}

/// (lowest 1-s rate within 5 s after the fault, by when a kill's jobs are back, as a
/// fraction of the baseline; seconds from the fault until the rate is back to 90 % of
/// the baseline after the dip). The
/// baseline is the rate of the 3 s before the fault, capped at the enqueue rate (a
/// backlog draining from an earlier fault is not the steady state). Only samples taken
/// while jobs were still being enqueued count.
fn throughput_recovery(samples: &[(f64, u64)], at: f64, offered: f64, until: f64) -> Option<(f64, f64)> {
    let at_n = |x: f64| samples.iter().rev().find(|(st, _)| *st <= x).map(|(_, n)| *n);
    let baseline = ((at_n(at)?.saturating_sub(at_n(at - 3.0)?)) as f64 / 3.0).min(offered);
    if baseline <= 0.0 {
        return None;
    }
    let after: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t > at + 0.05 && *t <= (at + 15.0).min(until))
        .filter_map(|(t, _)| Some((*t, rate_at(samples, *t)?)))
        .collect();
    let (dip_t, dip) = after
        .iter()
        .filter(|(t, _)| *t <= at + 5.0)
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    if dip >= 0.9 * baseline {
        return Some((dip / baseline, 0.0));
    }
    let back = after.iter().find(|(t, r)| *t > dip_t && *r >= 0.9 * baseline)?;
    Some((dip / baseline, back.0 - at))
}

fn render(
    world: &World,
    reports: &[FaultReport],
    samples: &[(f64, u64)],
    v: &Verdict,
    produced_at: f64,
    drained_at: f64,
) -> String {
    let o = &world.opts;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "jobs: {} platform.record jobs, enqueued at {}/s in batches of {}, each sleeping {} ms; \
         2 workers (`culm run --queues soak`, concurrency {} each); seed {}",
        o.jobs,
        o.rate,
        (o.rate / 10).max(1),
        o.sleep_ms,
        o.concurrency,
        o.seed
    );
    let _ = writeln!(
        s,
        "lease settings (env): CULM__WORKER__LEASE_TTL={} CULM__WORKER__LEASE_EXTEND_INTERVAL={} \
         CULM__WORKER__REAP_INTERVAL={}",
        o.lease_ttl, o.lease_extend, o.reap
    );
    let _ = writeln!(
        s,
        "all enqueued after {produced_at:.1} s, all recorded after {drained_at:.1} s\n"
    );
    let _ = writeln!(s, "| result | value |\n|---|---|");
    let _ = writeln!(s, "| jobs lost | **{}** |", v.lost);
    let _ = writeln!(
        s,
        "| jobs run more than once | {} ({} extra runs) |",
        v.run_more_than_once, v.extra_runs
    );
    let _ = writeln!(s, "| distinct jobs recorded | {} of {} |", v.recorded, o.jobs);
    let _ = writeln!(
        s,
        "| dead-lettered | {} ({} of them recorded by their handler: they succeeded) |",
        v.dead, v.dead_recorded
    );
    let _ = writeln!(
        s,
        "| left in queue (ready / scheduled / leased) | {} / {} / {} |",
        v.left.0, v.left.1, v.left.2
    );
    let _ = writeln!(
        s,
        "\n| # | fault | at | restarted after | leased at fault | leased jobs all done after | \
         throughput dip (lowest 1 s rate in the 5 s after / baseline) | throughput back to 90 % after | \
         jobs/s in each second from 3 s before to 8 s after |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for (i, r) in reports.iter().enumerate() {
        let (what, leased, done) = match r.fault {
            Fault::Kill { worker } => (
                format!("SIGKILL worker {worker}, restarted"),
                format!("{} ({} held by the killed worker)", r.leased_at_kill, r.held_by_killed),
                r.leased_done_after
                    .map(|d| format!("{d:.2} s"))
                    .unwrap_or_else(|| "not within 120 s".into()),
            ),
            Fault::Redis => (
                "SIGKILL redis-server, restarted (AOF)".to_owned(),
                "—".into(),
                "—".into(),
            ),
            Fault::Freeze => (
                format!("SIGSTOP redis-server for {} s, then SIGCONT", o.freeze.as_secs()),
                format!(
                    "{} ({} unfinished 1 s after SIGCONT)",
                    r.leased_at_kill, r.held_by_killed
                ),
                r.leased_done_after
                    .map(|d| format!("{d:.2} s after SIGCONT"))
                    .unwrap_or_else(|| "not within 120 s".into()),
            ),
            Fault::Drops { ref dropped } => (
                format!(
                    "proxy dropped {} replies after their commands ran ({})",
                    dropped.len(),
                    dropped.join(", ")
                ),
                "—".into(),
                "—".into(),
            ),
        };
        let (dip, back) = match throughput_recovery(samples, r.at, o.rate as f64, produced_at) {
            Some((d, 0.0)) => (format!("{:.0} %", d * 100.0), "no dip below 90 %".to_owned()),
            Some((d, b)) => (format!("{:.0} %", d * 100.0), format!("{b:.2} s")),
            None => ("—".into(), "—".into()),
        };
        let rates: Vec<String> = (-2..=8)
            .map(|k| {
                rate_at(samples, r.at + f64::from(k))
                    .map(|x| format!("{x:.0}"))
                    .unwrap_or_else(|| "?".into())
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {what} | {:.1} s | {:.2} s | {leased} | {done} | {dip} | {back} | {} |",
            i + 1,
            r.at,
            r.down_for,
            rates.join(" ")
        );
    }
    s
}
