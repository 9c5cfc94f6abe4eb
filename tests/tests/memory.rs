//! Redis memory stays bounded: a workload that completes, defers, dead-letters and (with
//! PostgreSQL cut) spills ledger rows reaches a plateau of `used_memory`, read with
//! `INFO memory` on a `redis-server` of the test's own so other tests do not move the
//! reading. `measure_redis_memory_per_job` (ignored; run it by name) prints the figures
//! quoted in docs/operations.md.
use culm_core::{EnqueueRequest, Job, JobContext, JobError, Outcome, Tier, now_ms};
use culm_tests::{TcpProxy, TestDb, TestEnv, eventually, faults::ThrowawayRedis, ledger_for, queue};
use culm_worker::{db::ledger, store::Store};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const Q: &str = "t_mem";
const WAIT: Duration = Duration::from_secs(30);

/// A payment-like job of typical payload size (about 200 bytes of JSON): `mode` says
/// whether it succeeds (`ok`), defers until `until_ms` (`defer`) or always fails with a
/// retryable error (`fail`, dead once its attempts are spent).
#[derive(Serialize, Deserialize)]
struct Payment {
    account_id: String,
    amount_cents: u64,
    currency: String,
    reference: String,
    mode: String,
    until_ms: i64,
}

impl Job for Payment {
    const NAME: &'static str = "test.payment";
    const QUEUE: &'static str = Q;
    const TIERS: &'static [Tier] = &[Tier::Batch];
    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        match self.mode.as_str() {
            "defer" if now_ms() < self.until_ms => Err(JobError::defer(
                Duration::from_millis(u64::try_from(self.until_ms - now_ms()).unwrap_or(0)),
                "the partner's window is not open yet",
            )),
            "fail" => Err(JobError::retryable(format!(
                "partner answered 503 Service Unavailable for {} (upstream timeout after 30s, request id 7f3a9c2e)",
                self.reference
            ))),
            _ => Ok(Outcome::done()),
        }
    }
}

fn payment(i: usize, mode: &str, until_ms: i64) -> EnqueueRequest {
    let p = Payment {
        account_id: format!("acc_01HZX3K5Q8W2N7M4R6T9V{i:06}"),
        amount_cents: 125_000 + i as u64,
        currency: "EUR".into(),
        reference: format!("invoice 2024-{i:06} for order 88231, customer 4411"),
        mode: mode.into(),
        until_ms,
    };
    EnqueueRequest::raw(Payment::NAME, serde_json::to_value(p).expect("json")).queue(Q)
}

/// A test env on `redis` (AOF off: only memory matters here).
async fn env_on(redis: &ThrowawayRedis, adjust: impl FnOnce(&mut culm_worker::config::Config)) -> TestEnv {
    let mut c = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("throwaway redis");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .query_async(&mut c)
        .await
        .expect("CONFIG SET");
    let mut registry = culm_jobs::registry().expect("registry");
    registry.register::<Payment>().expect("register");
    let url = redis.url();
    TestEnv::with_registry(registry, move |c| {
        c.redis.url = url;
        c.worker.idle_poll_interval = Duration::from_millis(50);
        adjust(c);
    })
    .await
}

async fn used_memory(store: &Store) -> i64 {
    let mut c = store.connection();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// Every key with its type, length and `MEMORY USAGE`, for the failure message.
async fn key_report(store: &Store) -> String {
    let mut c = store.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await.expect("KEYS");
    let mut out = Vec::new();
    for k in keys {
        let bytes: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap_or(None);
        out.push((bytes.unwrap_or(0), k));
    }
    out.sort();
    out.reverse();
    out.truncate(12);
    format!("{} idempotency keys; largest: {out:?}", {
        let idem: Vec<String> = redis::cmd("KEYS")
            .arg("*:idem:*")
            .query_async(&mut c)
            .await
            .expect("KEYS");
        idem.len()
    })
}

/// Waits until the queue has nothing ready, scheduled or leased (`leases` also holds a
/// pin member scored +inf, which is no lease).
async fn settled(store: &Store) {
    let base = store.base_key(Q);
    eventually(WAIT, "the round settled", || async {
        let mut c = store.connection();
        let (ready, scheduled, leases): (i64, i64, i64) = redis::pipe()
            .cmd("LLEN")
            .arg(format!("{base}:ready"))
            .cmd("ZCARD")
            .arg(format!("{base}:scheduled"))
            .cmd("ZCOUNT")
            .arg(format!("{base}:leases"))
            .arg("-inf")
            .arg("(+inf")
            .query_async(&mut c)
            .await
            .expect("counts");
        (ready + scheduled + leases == 0).then_some(())
    })
    .await;
}

/// Purges the queue's dead letters (this branch has no dead-letter retention in Redis).
async fn purge_dead(store: &Store) -> usize {
    let ids: Vec<String> = store
        .dead_list(Q, 10_000)
        .await
        .expect("dead list")
        .into_iter()
        .map(|d| d.id)
        .collect();
    store.dead_purge(Q, &ids).await.expect("purge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_memory_plateaus_under_a_workload_that_completes_defers_dead_letters_and_spills() {
    const DONE_RETENTION: u64 = 200;
    const SPILL_MAX: u64 = 300;
    const WARMUP: usize = 8;
    const MORE: usize = 16;
    let redis = ThrowawayRedis::start().await;
    let tdb = TestDb::new();
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let env = env_on(&redis, |c| {
        c.database.url = tdb.via(&proxy);
        c.database.connect_timeout = Duration::from_secs(1);
        c.database.ledger.flush_interval = Duration::from_millis(50);
        c.database.ledger.flush_batch = 100;
        c.database.ledger.spill_max_rows = SPILL_MAX;
        c.worker.done_retention = DONE_RETENTION;
        c.worker.idempotency_ttl = Duration::from_secs(1);
        c.queues.insert(Q.into(), queue("batch", 8, 5_000, 2));
    })
    .await;
    let (db, ledger, writer) = ledger_for(&env).await;
    let counters = ledger.counters().clone();
    proxy.cut();
    let running = env.runtime().with_ledger(ledger).start(&[Q.to_owned()]).expect("start");

    // One round: 100 jobs that succeed, 30 that defer for 100 ms first, 30 that die
    // after 2 attempts; every job has an idempotency key of its own. Dead letters are
    // purged at the end of the round.
    let mut seq = 0;
    let mut round = || {
        let until = now_ms() + 100;
        let mut reqs = Vec::new();
        for (n, mode) in [(100, "ok"), (30, "defer"), (30, "fail")] {
            for _ in 0..n {
                seq += 1;
                let mut r = payment(seq, mode, until);
                r.idempotency_key = Some(format!("mem-{seq}"));
                reqs.push(r);
            }
        }
        let store = env.store.clone();
        async move {
            store.enqueue(reqs).await.expect("enqueue");
            settled(&store).await;
            assert_eq!(purge_dead(&store).await, 30, "30 dead letters per round");
        }
    };
    // Idempotency keys of the last round expire (ttl 1 s) before each reading.
    let reading = || async {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        used_memory(&env.store).await
    };
    for _ in 0..WARMUP {
        round().await;
    }
    let warm = reading().await;
    let spill = ledger::spill_key(&env.prefix);
    let mut c = env.store.connection();
    let spill_len: u64 = redis::cmd("XLEN").arg(&spill).query_async(&mut c).await.expect("XLEN");
    for _ in 0..MORE {
        round().await;
    }
    let after = reading().await;
    let report = key_report(&env.store).await;
    let grown = after - warm;
    eprintln!(
        "used_memory after {WARMUP} rounds: {warm} B; after {} rounds: {after} B ({grown:+} B, {} jobs more); {} ledger rows spilled, {} dropped; {report}",
        WARMUP + MORE,
        MORE * 160,
        counters.spilled.load(std::sync::atomic::Ordering::Relaxed),
        counters.dropped.load(std::sync::atomic::Ordering::Relaxed),
    );
    // Readings on a plateau vary by about ±5 KB. With the spill unbounded, the last 16
    // rounds left 1.8 MB more (its ~600 B per row), and idempotency keys that never
    // expired or an uncapped `done` set would add about 100 B per job.
    assert!(
        grown < 128 * 1024,
        "Redis memory kept growing: {warm} B after the warm-up, {after} B after {MORE} more rounds; {report}"
    );
    assert_eq!(spill_len, SPILL_MAX, "the warm-up filled the spill to its bound");
    running.shutdown().await;
    writer.shutdown(Duration::from_secs(5)).await;
    db.pool().close().await;
}

/// Prints Redis memory per pending job and per dead job (3 attempts, so 3 errors in its
/// history), with the payload above. Run:
/// `cargo test -p culm-tests --test memory -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for docs/operations.md, not a check"]
async fn measure_redis_memory_per_job() {
    const N: usize = 10_000;
    let redis = ThrowawayRedis::start().await;
    let env = env_on(&redis, |c| {
        c.queues.insert(Q.into(), queue("batch", 16, 5_000, 3));
    })
    .await;
    let per_job = |before: i64, after: i64, n: usize| (after - before) as f64 / n as f64;
    let payload_bytes = serde_json::to_vec(&payment(1, "ok", 0).payload).expect("json").len();

    let before = used_memory(&env.store).await;
    env.store
        .enqueue((0..N).map(|i| payment(i, "ok", 0)).collect())
        .await
        .expect("enqueue");
    let pending = per_job(before, used_memory(&env.store).await, N);

    let before = used_memory(&env.store).await;
    env.store
        .enqueue(
            (N..2 * N)
                .map(|i| {
                    let mut r = payment(i, "ok", 0);
                    r.idempotency_key = Some(format!("payment-{i}"));
                    r
                })
                .collect(),
        )
        .await
        .expect("enqueue");
    let pending_idem = per_job(before, used_memory(&env.store).await, N);
    env.cleanup().await;

    let dead_n = 2_000;
    let before = used_memory(&env.store).await;
    let running = env.runtime().start(&[Q.to_owned()]).expect("start");
    env.store
        .enqueue((0..dead_n).map(|i| payment(i, "fail", 0)).collect())
        .await
        .expect("enqueue");
    settled(&env.store).await;
    running.shutdown().await;
    let dead = env.store.dead_list(Q, dead_n).await.expect("dead list");
    assert_eq!(dead.len(), dead_n);
    assert_eq!(dead[0].errors.len(), 3);
    // Only what stays per dead job: the worker's own bookkeeping keys are gone by now.
    let dead_bytes = per_job(before, used_memory(&env.store).await, dead_n);
    eprintln!(
        "payload {payload_bytes} B of JSON: pending job {pending:.0} B, pending job with an idempotency key \
         {pending_idem:.0} B, dead job with 3 errors {dead_bytes:.0} B"
    );
    env.cleanup().await;
}
