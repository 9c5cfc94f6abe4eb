//! Fault injection against real `culm run` processes. Each test starts its own
//! `redis-server` (free loopback port, AOF with `appendfsync always`, temp dir), puts a
//! [`FaultProxy`] between it and two `culm run` worker processes, enqueues
//! `platform.record` jobs, injects one kind of fault while jobs are in flight, and then
//! checks the delivery contract:
//!
//! - **no job lost**: every enqueued job ran to done, by the handler's own records (a set
//!   and a per-job run counter the handler writes, not culm's bookkeeping) and by culm's
//!   queue state (`Store::status` is `done`; nothing left ready, scheduled or leased);
//! - **no successful job dead-lettered**: no job the handler recorded as finished is in
//!   the dead set;
//! - **repeated runs bounded**: extra handler starts ≤ the jobs in flight where each fault
//!   hit (the pool concurrency of the processes the fault reached).
//!
//! Faults of the infrastructure must not spend a job's attempts, so the tests whose fault
//! never reaches a handler as an error (a dropped reply, a Redis freeze shorter than the
//! command timeout) run with `max_attempts = 1`: any attempt the fault spends shows up as a
//! dead or lost job. Where handlers' own Redis writes fail (cut connections, delayed
//! replies, Redis restart, a killed worker), the queue allows a few attempts.
use culm_core::EnqueueRequest;
use culm_tests::{
    culm_bin, enqueue_ids, eventually,
    faults::{DropRule, FaultProxy, Resp, ThrowawayRedis, WorkerEnv, humantime_ms},
    queue,
};
use culm_worker::{
    config::Config,
    store::{Ack, AckBatch, AckKind, QueueKeys, Store},
};
use serde_json::json;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    process::Child,
    sync::Arc,
    time::{Duration, Instant},
};

const QUEUE: &str = "faults";
const LEASE_TTL: Duration = Duration::from_secs(2);
const LEASE_EXTEND_INTERVAL: Duration = Duration::from_millis(500);
const REAP_INTERVAL: Duration = Duration::from_millis(200);
/// culm's Redis command (response) timeout: `RESPONSE_TIMEOUT` in worker/src/store/conn.rs,
/// not configurable, so the delay test has to hold replies longer than this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(30);
/// How long the jobs may take to settle after the last fault.
const SETTLE: Duration = Duration::from_secs(45);

/// The shape of one test's workload.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    processes: usize,
    concurrency: u32,
    jobs: usize,
    sleep_ms: u64,
    max_attempts: u32,
}

impl Scenario {
    fn new(name: &'static str, max_attempts: u32) -> Scenario {
        Scenario {
            name,
            processes: 2,
            concurrency: 4,
            jobs: 96,
            sleep_ms: 300,
            max_attempts,
        }
    }

    /// Jobs the processes can hold at once.
    fn capacity(&self) -> u64 {
        self.processes as u64 * u64::from(self.concurrency)
    }
}

/// A fault as injected: what, how many jobs it could have caught in flight, and how many
/// leases Redis held just before.
struct Injected {
    what: String,
    in_flight: u64,
    leased: u64,
}

/// One test's world: its Redis, the proxy, the worker processes and the jobs.
struct Rig {
    s: Scenario,
    redis: ThrowawayRedis,
    proxy: FaultProxy,
    /// Straight to Redis, not through the proxy.
    store: Store,
    keys: QueueKeys,
    set: String,
    started: String,
    ids: Vec<String>,
    env: WorkerEnv,
    workers: Vec<Option<Child>>,
    faults: Vec<Injected>,
    begun: Instant,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in self.workers.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Rig {
    /// Redis, proxy and jobs, then the worker processes.
    async fn start(s: Scenario) -> Rig {
        let begun = Instant::now();
        let redis = ThrowawayRedis::start().await;
        let proxy = FaultProxy::start(&redis.addr()).await;
        let prefix = format!("faults-{}-{}", s.name, ulid::Ulid::new().to_string().to_lowercase());
        let mut config = Config::defaults().expect("built-in defaults");
        config.redis.url = redis.url();
        config.redis.key_prefix = prefix.clone();
        config
            .queues
            .insert(QUEUE.into(), queue("batch", s.concurrency, 60_000, s.max_attempts));
        let store = Store::connect(&config, Arc::new(culm_jobs::registry().expect("registry")))
            .await
            .expect("the throwaway Redis answers");
        let set = format!("{prefix}:recorded");
        let started = format!("{prefix}:started");
        let jobs = (0..s.jobs)
            .map(|_| {
                EnqueueRequest::raw(
                    "platform.record",
                    json!({"set": set, "started": started, "sleep_ms": s.sleep_ms}),
                )
                .queue(QUEUE)
            })
            .collect();
        let ids = enqueue_ids(&store, jobs).await;
        let env = WorkerEnv {
            redis_url: proxy.url(),
            key_prefix: prefix,
            queue: QUEUE.into(),
            concurrency: s.concurrency,
            max_attempts: s.max_attempts,
            backoff: ("50ms".into(), "200ms".into()),
            lease_ttl: humantime_ms(LEASE_TTL),
            lease_extend_interval: humantime_ms(LEASE_EXTEND_INTERVAL),
            reap_interval: humantime_ms(REAP_INTERVAL),
            extra: vec![("CULM__WORKER__DRAIN_TIMEOUT".into(), "5s".into())],
        };
        let mut rig = Rig {
            keys: store.keys(QUEUE),
            s,
            redis,
            proxy,
            store,
            set,
            started,
            ids,
            env,
            workers: (0..s.processes).map(|_| None).collect(),
            faults: Vec::new(),
            begun,
        };
        for i in 0..s.processes {
            rig.spawn(i);
        }
        rig
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.redis.dir.join(format!("worker-{i}.log")))
            .expect("worker log");
        let child = self
            .env
            .command(&culm_bin())
            .stderr(log)
            .spawn()
            .expect("culm run starts");
        self.workers[i] = Some(child);
    }

    fn sigkill(&mut self, i: usize) {
        let mut c = self.workers[i].take().expect("worker running");
        c.kill().expect("SIGKILL");
        let _ = c.wait();
    }

    async fn count(&self, cmd: &str, key: &str) -> Option<u64> {
        let mut c = self.store.connection();
        redis::cmd(cmd).arg(key).query_async(&mut c).await.ok()
    }

    async fn recorded(&self) -> u64 {
        self.count("SCARD", &self.set).await.unwrap_or(0)
    }

    async fn leased(&self) -> u64 {
        self.leased_now().await.unwrap_or(0)
    }

    /// Leases held now. `leases` also holds a pin member scored +inf, which is no lease.
    async fn leased_now(&self) -> Option<u64> {
        let mut c = self.store.connection();
        redis::cmd("ZCOUNT")
            .arg(self.keys.leases())
            .arg("-inf")
            .arg("(+inf")
            .query_async(&mut c)
            .await
            .ok()
    }

    /// Waits until at least `min_recorded` jobs finished and handlers are running, and
    /// checks enough work is left for the fault to hit.
    async fn wait_mid_run(&self, min_recorded: u64) {
        eventually(WAIT, "jobs finishing and others in flight", || async {
            let recorded = self.count("SCARD", &self.set).await?;
            let leased = self.leased_now().await?;
            (recorded >= min_recorded && leased > 0).then_some(())
        })
        .await;
        let left = self.ids.len() as u64 - self.recorded().await;
        assert!(
            left >= self.s.capacity(),
            "only {left} jobs left before the fault: make the `{}` scenario longer",
            self.s.name
        );
    }

    fn injected(&mut self, what: impl Into<String>, in_flight: u64, leased: u64) {
        let what = what.into();
        eprintln!(
            "[{}] {:6.2}s {what} ({leased} leased)",
            self.s.name,
            self.begun.elapsed().as_secs_f64()
        );
        self.faults.push(Injected {
            what,
            in_flight,
            leased,
        });
    }

    /// Whether every job is done or dead and nothing is ready, scheduled or leased.
    async fn settled(&self) -> Option<()> {
        let stats = self.store.stats(QUEUE).await.ok()?;
        let done = self.count("ZCARD", &self.keys.done()).await?;
        (stats.pending == 0 && stats.scheduled == 0 && stats.running == 0 && done + stats.dead >= self.ids.len() as u64)
            .then_some(())
    }

    /// Waits for the queue to settle, checks the contract, stops the workers.
    async fn finish(mut self) {
        let settled = tokio::time::timeout(SETTLE, eventually(SETTLE * 2, "the queue to settle", || self.settled()))
            .await
            .is_ok();
        let alive: Vec<bool> = self
            .workers
            .iter_mut()
            .map(|w| w.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))))
            .collect();
        let verdict = self.verdict(settled, &alive).await;
        for c in self.workers.iter().flatten() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        for w in &mut self.workers {
            if let Some(mut c) = w.take() {
                let _ = tokio::task::spawn_blocking(move || c.wait()).await;
            }
        }
        let took = self.begun.elapsed().as_secs_f64();
        if verdict.1.is_empty() {
            eprintln!("[{}] passed after {took:.1}s\n{}", self.s.name, verdict.0);
        }
        assert!(verdict.1.is_empty(), "{}\n{}", verdict.1.join("\n"), verdict.0);
    }

    /// (report, problems).
    async fn verdict(&self, settled: bool, alive: &[bool]) -> (String, Vec<String>) {
        let mut c = self.store.connection();
        let recorded: BTreeSet<String> = redis::cmd("SMEMBERS")
            .arg(&self.set)
            .query_async(&mut c)
            .await
            .expect("SMEMBERS");
        let starts: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(format!("{}:runs", self.started))
            .query_async(&mut c)
            .await
            .expect("HGETALL");
        let completions: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(format!("{}:runs", self.set))
            .query_async(&mut c)
            .await
            .expect("HGETALL");
        let dead: BTreeSet<String> = redis::cmd("ZRANGE")
            .arg(self.keys.dead())
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .expect("ZRANGE");
        let mut states: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in &self.ids {
            let state = match self.store.status(id).await {
                Ok(Some(s)) if s.state == culm_worker::store::JobState::Done => s.state.to_string(),
                Ok(Some(s)) => format!("{} (attempts {})", s.state, s.attempts),
                Ok(None) => "unknown to culm".to_owned(),
                Err(e) => format!("status failed: {e}"),
            };
            states.entry(state).or_default().push(id.clone());
        }
        let not_done: Vec<(&String, &String)> = states
            .iter()
            .filter(|(s, _)| !s.starts_with("done"))
            .flat_map(|(s, ids)| ids.iter().map(move |id| (id, s)))
            .collect();
        let unrecorded: Vec<&String> = self.ids.iter().filter(|id| !recorded.contains(*id)).collect();
        let dead_succeeded: Vec<&String> = dead.iter().filter(|id| recorded.contains(*id)).collect();
        // The same queue as `culm queues` shows it.
        let mut direct = self.env.clone();
        direct.redis_url = self.redis.url();
        let out = direct
            .culm(&culm_bin(), &["queues", "--json"])
            .output()
            .expect("culm queues runs");
        let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let row = cli
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == QUEUE))
            .cloned()
            .unwrap_or_default();
        let cli_open = ["pending", "scheduled", "running"]
            .iter()
            .map(|k| row[k].as_u64().unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add);
        let extra_starts: u64 = starts.values().map(|n| n.saturating_sub(1)).sum();
        let repeated_jobs = starts.values().filter(|n| **n > 1).count();
        let extra_completions: u64 = completions.values().map(|n| n.saturating_sub(1)).sum();
        let bound: u64 = self.faults.iter().map(|f| f.in_flight).sum();

        let s = &self.s;
        let mut r = String::new();
        let _ = writeln!(
            r,
            "scenario `{}`: {} platform.record jobs ({} ms each), {} `culm run` processes × {} slots, \
             max_attempts {}, lease_ttl {:?}, extend every {:?}, reap every {:?}",
            s.name,
            s.jobs,
            s.sleep_ms,
            s.processes,
            s.concurrency,
            s.max_attempts,
            LEASE_TTL,
            LEASE_EXTEND_INTERVAL,
            REAP_INTERVAL
        );
        for f in &self.faults {
            let _ = writeln!(
                r,
                "  fault: {} — {} leased at the time, up to {} in flight",
                f.what, f.leased, f.in_flight
            );
        }
        let _ = writeln!(
            r,
            "  queue settled: {settled}; worker processes alive at the end: {alive:?}"
        );
        let _ = writeln!(
            r,
            "  handler recorded {} of {} jobs; culm states: {}",
            recorded.len(),
            self.ids.len(),
            states
                .iter()
                .map(|(s, ids)| format!("{} {s}", ids.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            r,
            "  handler starts beyond the first: {extra_starts} over {repeated_jobs} jobs (bound {bound}); \
             completions beyond the first: {extra_completions}"
        );
        let _ = writeln!(
            r,
            "  `culm queues --json`: {}",
            if row.is_null() {
                format!("no `{QUEUE}` row: {}", String::from_utf8_lossy(&out.stderr).trim())
            } else {
                row.to_string()
            }
        );
        let _ = writeln!(r, "  logs: {}", self.redis.dir.display());

        let mut problems = Vec::new();
        if !unrecorded.is_empty() || !not_done.is_empty() {
            problems.push(format!(
                "LOST: {} jobs never recorded by their handler {unrecorded:?}; {} jobs not done in culm {not_done:?}",
                unrecorded.len(),
                not_done.len()
            ));
        }
        if cli_open > 0 {
            problems.push(format!(
                "NOT SETTLED: `culm queues` still shows jobs pending, scheduled or running: {row}"
            ));
        }
        if !dead_succeeded.is_empty() {
            problems.push(format!(
                "DEAD BUT SUCCEEDED: {} dead-lettered jobs whose handler recorded success {dead_succeeded:?}",
                dead_succeeded.len()
            ));
        }
        if extra_starts > bound {
            problems.push(format!(
                "REPEATED: {extra_starts} repeated handler runs, more than the {bound} jobs in flight when the faults hit"
            ));
        }
        if !alive.iter().all(|a| *a) {
            problems.push(format!("CRASHED: worker processes alive at the end: {alive:?}"));
        }
        (r, problems)
    }
}

/// The job ids a fetch reply carried (`ok`, next due, then id, attempt, envelope per job).
fn fetched_ids(reply: &Resp) -> Vec<String> {
    // fetch.lua answers status, next due, then id, attempt, token, envelope per job.
    reply.items().iter().skip(2).step_by(4).filter_map(Resp::text).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_lose_no_job() {
    let mut rig = Rig::start(Scenario::new("cut", 5)).await;
    // One cut shorter than the lease, one longer.
    for (n, hold) in [LEASE_TTL / 2, LEASE_TTL + LEASE_TTL / 2].into_iter().enumerate() {
        rig.wait_mid_run((n as u64 + 1) * rig.s.capacity()).await;
        let leased = rig.leased().await;
        rig.proxy.cut();
        eventually(WAIT, "every proxied connection closed", || async {
            (rig.proxy.connections() == 0).then_some(())
        })
        .await;
        // The fault's duration, not a synchronisation.
        tokio::time::sleep(hold).await;
        rig.proxy.restore();
        let cap = rig.s.capacity();
        rig.injected(format!("every connection cut and refused for {hold:?}"), cap, leased);
    }
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_delayed_past_the_command_timeout_lose_no_job() {
    let mut rig = Rig::start(Scenario::new("delay", 3)).await;
    rig.wait_mid_run(rig.s.capacity()).await;
    let leased = rig.leased().await;
    let delay = COMMAND_TIMEOUT + Duration::from_secs(3);
    rig.proxy.delay_replies(delay);
    // Replies arriving in this window (fetches, extends, reaps, acks, handlers' writes)
    // are held past the timeout; later ones queue behind them.
    tokio::time::sleep(LEASE_EXTEND_INTERVAL * 2).await;
    rig.proxy.delay_replies(Duration::ZERO);
    let cap = rig.s.capacity();
    rig.injected(
        format!(
            "replies arriving during {:?} held for {delay:?} (command timeout {COMMAND_TIMEOUT:?})",
            LEASE_EXTEND_INTERVAL * 2
        ),
        cap,
        leased,
    );
    eventually(delay + WAIT, "the delayed replies to be passed on", || async {
        (rig.proxy.held() == 0).then_some(())
    })
    .await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_dropped_after_the_command_ran_lose_no_job() {
    let mut rig = Rig::start(Scenario {
        jobs: 160,
        ..Scenario::new("drop", 1)
    })
    .await;
    rig.wait_mid_run(rig.s.capacity()).await;
    let rules = || {
        [
            DropRule::script("fetch.lua").when_reply(|r| !fetched_ids(r).is_empty()),
            DropRule::script("ack.lua"),
            DropRule::script("extend.lua"),
        ]
    };
    for rule in rules().into_iter().chain(rules()) {
        rig.wait_mid_run(0).await;
        let leased = rig.leased().await;
        let before = rig.proxy.dropped().len();
        let name = rule.name.clone();
        rig.proxy.drop_reply(rule);
        let dropped = eventually(WAIT, &format!("the proxy to drop a {name} reply"), || async {
            rig.proxy.dropped().get(before).cloned()
        })
        .await;
        let what = match name.as_str() {
            "fetch" => format!(
                "fetch reply leasing {:?} dropped after it ran",
                fetched_ids(&dropped.reply)
            ),
            _ => format!("{name} reply dropped after it ran"),
        };
        // A lost reply reaches the jobs of one process.
        let per_process = u64::from(rig.s.concurrency);
        rig.injected(what, per_process, leased);
    }
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_longer_than_the_lease_loses_no_job() {
    // Jobs longer than the freeze, so handlers are still running once Redis answers again
    // (they keep their leases alive only by extending them).
    let freeze = LEASE_TTL + LEASE_TTL / 2;
    let mut rig = Rig::start(Scenario {
        jobs: 32,
        sleep_ms: 5_000,
        ..Scenario::new("freeze", 1)
    })
    .await;
    assert!(freeze < COMMAND_TIMEOUT, "the freeze must not make commands time out");
    rig.wait_mid_run(rig.s.capacity()).await;
    // Every slot is running a handler, mid-sleep.
    eventually(WAIT, "every slot running a handler", || async {
        let started = rig.count("SCARD", &rig.started).await?;
        let recorded = rig.count("SCARD", &rig.set).await?;
        (started >= recorded + rig.s.capacity()).then_some(())
    })
    .await;
    let leased = rig.leased().await;
    rig.redis.freeze();
    // The fault's duration, not a synchronisation. Late in the freeze, a reaper on another
    // replica ticks (as the workers' own reapers do every reap_interval); its call waits
    // for Redis like every other command and runs as soon as Redis does.
    tokio::time::sleep(freeze - REAP_INTERVAL).await;
    let store = rig.store.clone();
    // As a pool's reaper does: look for expired leases, then settle each (here, on
    // the only attempt, as dead) only if its lease is still expired.
    let reaper = tokio::spawn(async move {
        let found = store.reap(QUEUE, LEASE_TTL - LEASE_EXTEND_INTERVAL, LEASE_TTL).await?;
        let acks: Vec<Ack> = found
            .expired
            .iter()
            .map(|e| Ack {
                id: e.id.clone(),
                token: e.token,
                kind: AckKind::Dead,
                error: "lease expired during the freeze".into(),
                expired_only: true,
                finished: None,
                batch: None,
            })
            .collect();
        let applied = store.ack(QUEUE, &AckBatch::first(), &acks).await?;
        Ok::<_, culm_worker::store::StoreError>((found.held, applied.iter().filter(|a| **a).count()))
    });
    tokio::time::sleep(REAP_INTERVAL).await;
    rig.redis.thaw();
    let reaped = match reaper.await.expect("reaper task") {
        Ok((true, _)) => "nothing: reaping held off after the outage".to_owned(),
        Ok((false, n)) => format!("{n} jobs"),
        Err(e) => format!("error: {e}"),
    };
    let cap = rig.s.capacity();
    rig.injected(
        format!("redis-server SIGSTOPped for {freeze:?}, then SIGCONT; a reap called during the freeze took {reaped}"),
        cap,
        leased,
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_lose_no_job() {
    let mut rig = Rig::start(Scenario::new("sigkill", 3)).await;
    for i in 0..rig.s.processes {
        rig.wait_mid_run((i as u64 + 1) * rig.s.capacity()).await;
        let leased = rig.leased().await;
        rig.sigkill(i);
        let connections = rig.proxy.accepted();
        rig.spawn(i);
        let per_process = u64::from(rig.s.concurrency);
        rig.injected(format!("worker {i} SIGKILLed and started again"), per_process, leased);
        // The new process is connected (commands and wake-ups) before the next kill.
        eventually(WAIT, "the restarted worker connected", || async {
            (rig.proxy.accepted() >= connections + 2).then_some(())
        })
        .await;
    }
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_from_its_aof_loses_no_job() {
    let mut rig = Rig::start(Scenario::new("restart", 3)).await;
    rig.wait_mid_run(rig.s.capacity()).await;
    let leased = rig.leased().await;
    let t = Instant::now();
    rig.redis.kill();
    // The fault's duration, not a synchronisation: down for half a lease.
    tokio::time::sleep(LEASE_TTL / 2).await;
    rig.redis.restart().await;
    let cap = rig.s.capacity();
    rig.injected(
        format!(
            "redis-server SIGKILLed, restarted from its AOF, answering again after {:.2}s",
            t.elapsed().as_secs_f64()
        ),
        cap,
        leased,
    );
    rig.finish().await;
}
