//! The delivery contract against the real Redis: lease tokens never repeat, so a stale
//! or replayed acknowledgement can never settle a newer run; a lease whose holder never
//! received it does not spend an attempt; a Redis outage longer than a lease does not
//! make reapers take jobs from live workers.
use culm_core::{EnqueueRequest, now_ms};
use culm_tests::{TcpProxy, TestEnv, ack, eventually, is, next_event, queue, redis_url};
use culm_worker::store::{AckBatch, AckKind, Delivery};
use serde_json::json;
use std::{sync::Arc, time::Duration};

const WAIT: Duration = Duration::from_secs(30);
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Leases one job of `queue` with a lease of `ttl`, as a worker would.
async fn lease_one(env: &TestEnv, queue: &str, ttl: Duration) -> Delivery {
    let q: Arc<str> = Arc::from(queue);
    let f = env.store.fetch(&q, 1, ttl).await.expect("fetch");
    assert_eq!(f.jobs.len(), 1, "one job leased from {queue}");
    f.jobs.into_iter().next().expect("one job")
}

/// Waits until the job is in `state` (as `culm jobs get` reports it).
async fn wait_state(env: &TestEnv, id: &str, state: &str) {
    eventually(WAIT, &format!("job {id} to be {state}"), || async {
        let s = env.store.status(id).await.expect("status")?;
        let now = s.state.to_string();
        (now == state).then_some(())
    })
    .await;
}

/// Enqueues a `platform.record` job on `queue` that sleeps `sleep_ms`, and waits until its
/// handler has started. Returns the job, its record set and its start set.
async fn start_recorded(env: &TestEnv, queue: &str, sleep_ms: u64) -> (culm_core::Enqueued, String, String) {
    let set = env.key("ran");
    let started = env.key("started");
    let job = env
        .enqueue(
            EnqueueRequest::raw(
                "platform.record",
                json!({"set": set, "started": started, "sleep_ms": sleep_ms}),
            )
            .queue(queue),
        )
        .await;
    eventually(WAIT, "the handler to start", || async {
        env.members(&started).await.contains(&job.id).then_some(())
    })
    .await;
    (job, set, started)
}

/// How many times the handler of `id` started, by its own count.
async fn starts(env: &TestEnv, started: &str, id: &str) -> Option<u32> {
    let mut c = env.store.connection();
    redis::cmd("HGET")
        .arg(format!("{started}:runs"))
        .arg(id)
        .query_async(&mut c)
        .await
        .expect("starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_from_before_a_redrive_cannot_settle_the_new_run() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_fence".into(), queue("critical", 1, 5_000, 1));
    })
    .await;
    let job = env
        .enqueue(EnqueueRequest::raw("platform.noop", json!({})).queue("t_fence"))
        .await;
    // A worker leases the job on its only attempt, extends the lease once (it has the
    // job and is running it), then stalls past its lease.
    let stale = lease_one(&env, "t_fence", Duration::from_secs(30)).await;
    let lost = env
        .store
        .extend("t_fence", &[(stale.id.clone(), stale.token)], Duration::from_millis(1))
        .await
        .expect("extend");
    assert!(lost.is_empty(), "the worker still held its lease: {lost:?}");
    // A reaper (a running pool of this queue) dead-letters it: that was the last attempt.
    let rt = env.runtime();
    let running = rt.start(&["t_fence".into()]).expect("start");
    wait_state(&env, &job.id, "dead").await;
    running.shutdown().await;

    // An operator re-drives it and another worker leases it again, on attempt 1 again.
    assert_eq!(
        env.store
            .dead_retry("t_fence", std::slice::from_ref(&job.id))
            .await
            .expect("retry"),
        1
    );
    let fresh = lease_one(&env, "t_fence", Duration::from_secs(30)).await;
    assert_eq!(fresh.id, job.id);
    assert_eq!(fresh.attempt, 1, "a re-driven job starts its attempts again");
    assert_ne!(
        fresh.token, stale.token,
        "a new lease never carries an earlier lease's token"
    );

    // The first worker wakes up and reports a failure: it must change nothing.
    let late = ack(&stale, AckKind::Retry { at: now_ms() }, "stale worker woke up");
    let applied = env
        .store
        .ack("t_fence", &AckBatch::first(), &[late])
        .await
        .expect("ack");
    assert_eq!(applied, vec![false], "the stale ack was fenced off");
    let s = env.store.status(&job.id).await.expect("status").expect("known");
    assert_eq!(
        s.state.to_string(),
        "running",
        "the new run still holds its lease: {s:?}"
    );

    // The new run's own ack settles it.
    let applied = env
        .store
        .ack("t_fence", &AckBatch::first(), &[ack(&fresh, AckKind::Done, "")])
        .await
        .expect("ack");
    assert_eq!(applied, vec![true]);
    wait_state(&env, &job.id, "done").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_defer_ack_cannot_settle_the_next_run() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_replay".into(), queue("critical", 1, 5_000, 3));
    })
    .await;
    let job = env
        .enqueue(EnqueueRequest::raw("platform.noop", json!({})).queue("t_replay"))
        .await;
    let first = lease_one(&env, "t_replay", Duration::from_secs(30)).await;
    let defer = ack(&first, AckKind::Defer { at: now_ms() }, "upstream busy");
    let batch = AckBatch::first();
    // The deferral is applied, but its reply is lost on the way back.
    assert_eq!(
        env.store
            .ack("t_replay", &batch, std::slice::from_ref(&defer))
            .await
            .expect("ack"),
        vec![true]
    );
    // The job is due again at once and is leased by the next run; the deferral refunded
    // the attempt, so this is attempt 1 again.
    let second = lease_one(&env, "t_replay", Duration::from_secs(30)).await;
    assert_eq!((second.id.as_str(), second.attempt), (job.id.as_str(), 1));
    assert_ne!(second.token, first.token);
    // The acker resends the batch whose reply it never saw: it learns the first write's
    // answer, and nothing is written again.
    assert_eq!(
        env.store
            .ack("t_replay", &batch, std::slice::from_ref(&defer))
            .await
            .expect("resent ack"),
        vec![true],
        "a resent batch answers with its first write's result"
    );
    // Replayed any other way (a stale acker, a duplicated command), the ack is fenced by
    // the token of the lease it was fetched under.
    assert_eq!(
        env.store
            .ack("t_replay", &AckBatch::first(), &[defer])
            .await
            .expect("replayed ack"),
        vec![false],
    );
    let s = env.store.status(&job.id).await.expect("status").expect("known");
    assert_eq!(
        s.state.to_string(),
        "running",
        "the next run still holds its lease: {s:?}"
    );
    assert_eq!(
        env.store
            .ack("t_replay", &AckBatch::first(), &[ack(&second, AckKind::Done, "")])
            .await
            .expect("ack"),
        vec![true]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_fetch_reply_was_lost_does_not_spend_an_attempt() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_lost".into(), queue("critical", 1, 5_000, 1));
    })
    .await;
    let job = env
        .enqueue(EnqueueRequest::raw("platform.noop", json!({})).queue("t_lost"))
        .await;
    // The fetch reached Redis and created a lease, but its reply never reached the
    // worker: nobody holds the job, and its handler never started.
    let _lost = lease_one(&env, "t_lost", Duration::from_millis(1)).await;

    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_lost".into()]).expect("start");
    let e = next_event(&mut events, WAIT, |e| {
        e.id == job.id && (is("done", e) || is("dead", e))
    })
    .await;
    assert!(
        is("done", &e),
        "the job's only attempt was spent on a run that never happened: {e:?}"
    );
    assert_eq!(e.attempt, 1, "the orphaned lease did not count as an attempt");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_longer_than_the_lease_does_not_take_jobs_from_live_workers() {
    let proxy = TcpProxy::start(redis_url().trim_start_matches("redis://")).await;
    let env = TestEnv::new(|c| {
        c.redis.url = format!("redis://{}", proxy.addr);
        c.worker.lease_ttl = Duration::from_secs(1);
        c.worker.lease_extend_interval = Duration::from_millis(250);
        c.worker.reap_interval = Duration::from_millis(100);
        c.queues.insert("t_outage".into(), queue("critical", 2, 20_000, 1));
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_outage".into()]).expect("start");
    let (job, set, _) = start_recorded(&env, "t_outage", 4_000).await;
    // Redis is unreachable for twice the lease: nobody can extend, nobody can reap.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    let e = next_event(&mut events, WAIT, |e| e.id == job.id && !is("defer", e)).await;
    assert!(is("done", &e), "a live worker's job was taken during an outage: {e:?}");
    let mut c = redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("direct connection");
    let runs: Option<u32> = redis::cmd("HGET")
        .arg(format!("{set}:runs"))
        .arg(&job.id)
        .query_async(&mut c)
        .await
        .expect("runs");
    assert_eq!(runs, Some(1), "the job ran exactly once");
    assert!(env.store.dead_list("t_outage", 10).await.expect("dead").is_empty());
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_ahead_does_not_reap_live_jobs() {
    let env = TestEnv::new(|c| {
        c.worker.lease_ttl = Duration::from_secs(1);
        c.worker.lease_extend_interval = Duration::from_millis(250);
        c.queues.insert("t_skew".into(), queue("critical", 1, 20_000, 1));
    })
    .await;
    // This process runs a long job under a 1 s lease, extending it on time.
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_skew".into()]).expect("start");
    let (job, set, started) = start_recorded(&env, "t_skew", 4_000).await;
    // A second replica whose clock is a minute ahead joins the queue.
    assert!(
        std::path::Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: install Debian's faketime package (.ci/run does)"
    );
    let ahead = culm_tests::KillOnDrop(Some(
        std::process::Command::new(culm_tests::culm_bin())
            // libfaketime (Debian's faketime package) shifts this process's clocks.
            .env("LD_PRELOAD", FAKETIME_LIB)
            .env("FAKETIME", "+60s")
            .current_dir(culm_tests::workspace_root())
            .args(["run", "--queues", "t_skew", "--no-scheduler"])
            .env("CULM_REDIS_URL", redis_url())
            .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
            .env("CULM__QUEUES__T_SKEW__TIER", "critical")
            .env("CULM__QUEUES__T_SKEW__CONCURRENCY", "1")
            .env("CULM__WORKER__LEASE_TTL", "1s")
            .env("CULM__WORKER__LEASE_EXTEND_INTERVAL", "250ms")
            .env("CULM__WORKER__REAP_INTERVAL", "100ms")
            .env("CULM__ADMIN__ENABLED", "false")
            .env("CULM_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("culm starts"),
    ));
    // It is running (and reaping) once it has run a job of its own: this process's only
    // slot is busy.
    let marker = env
        .enqueue(EnqueueRequest::raw("platform.record", json!({"set": set})).queue("t_skew"))
        .await;
    eventually(WAIT, "the skewed replica to run a job", || async {
        env.members(&set).await.contains(&marker.id).then_some(())
    })
    .await;

    let e = next_event(&mut events, WAIT, |e| e.id == job.id).await;
    assert!(
        is("done", &e),
        "the live job was taken by a replica with a fast clock: {e:?}"
    );
    let mut c = env.store.connection();
    let runs: Option<u32> = redis::cmd("HGET")
        .arg(format!("{set}:runs"))
        .arg(&job.id)
        .query_async(&mut c)
        .await
        .expect("runs");
    assert_eq!(runs, Some(1), "the job ran exactly once");
    wait_state(&env, &job.id, "done").await;
    // Once it is done, count the handler's own starts: a reaped job would have started
    // again on the other replica.
    assert_eq!(
        starts(&env, &started, &job.id).await,
        Some(1),
        "the live job was started a second time"
    );
    drop(ahead);
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_body_is_settled_like_any_dead_run() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_corrupt".into(), queue("batch", 2, 5_000, 5));
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_corrupt".into()]).expect("start");
    // A body no culm version wrote (a foreign producer, a bad restore).
    let id = ulid::Ulid::new().to_string();
    let base = env.store.base_key("t_corrupt");
    let mut c = env.store.connection();
    redis::pipe()
        .hset(format!("{base}:jobs"), &id, "{not json")
        .rpush(format!("{base}:ready"), &id)
        .exec_async(&mut c)
        .await
        .expect("raw push");
    // The settle step dead-letters it and says so, as for every other fate.
    let e = next_event(&mut events, WAIT, |e| e.id == id).await;
    assert!(is("dead", &e), "{e:?}");
    assert!(e.error.contains("corrupt"), "{e:?}");
    wait_state(&env, &id, "dead").await;
    // And it is listed with the other dead letters, not an error for the whole list.
    let dead = env
        .store
        .dead_list("t_corrupt", 10)
        .await
        .expect("the list still reads");
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id.as_str(), dead[0].job.as_str()), (id.as_str(), "unknown"));
    running.shutdown().await;
    env.cleanup().await;
}

/// Succeeds, asking for a follow-up in queue `t_elsewhere`.
#[derive(serde::Serialize, serde::Deserialize)]
struct HandsOn {}

impl culm_core::Job for HandsOn {
    const NAME: &'static str = "test.hands_on";
    const QUEUE: &'static str = "t_parent";
    const TIERS: &'static [culm_core::Tier] = &culm_core::Tier::ALL;
    async fn run(self, _ctx: culm_core::JobContext) -> Result<culm_core::Outcome, culm_core::JobError> {
        let next = EnqueueRequest::raw("platform.noop", json!({})).queue("t_elsewhere");
        Ok(culm_core::Outcome::done().then(next))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_that_cannot_be_stored_spend_the_retry_budget() {
    let mut registry = culm_jobs::registry().expect("registry");
    registry.register::<HandsOn>().expect("register");
    let env = TestEnv::with_registry(registry, |c| {
        c.queues.insert("t_parent".into(), queue("batch", 1, 5_000, 1));
        c.queues.insert("t_elsewhere".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    // The follow-up's queue cannot be written (its ready list is not a list).
    let mut c = env.store.connection();
    redis::cmd("SET")
        .arg(format!("{}:ready", env.store.base_key("t_elsewhere")))
        .arg("x")
        .exec_async(&mut c)
        .await
        .expect("SET");
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_parent".into()]).expect("start");
    let job = env
        .enqueue(EnqueueRequest::raw("test.hands_on", json!({})).queue("t_parent"))
        .await;
    // Its only attempt is used up: it is dead-lettered, not retried past its budget.
    let e = next_event(&mut events, WAIT, |e| e.id == job.id).await;
    assert!(is("dead", &e), "the follow-up failure retried past the budget: {e:?}");
    assert!(e.error.contains("follow-up"), "{e:?}");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_finishing_during_the_drain_keeps_its_lease() {
    let env = TestEnv::new(|c| {
        c.worker.lease_ttl = Duration::from_secs(1);
        c.worker.lease_extend_interval = Duration::from_millis(250);
        c.worker.reap_interval = Duration::from_millis(100);
        c.worker.drain_timeout = Duration::from_secs(10);
        c.queues.insert("t_drain".into(), queue("batch", 1, 20_000, 3));
    })
    .await;
    let draining = env.runtime().start(&["t_drain".into()]).expect("start");
    let (job, _, started) = start_recorded(&env, "t_drain", 3_000).await;
    // Another replica works the same queue, reaping what it finds expired.
    let other = env.runtime();
    let mut events = other.events();
    let other = other.start(&["t_drain".into()]).expect("start");
    // This replica is asked to stop while its job runs for three more leases.
    let report = draining.shutdown().await;
    assert_eq!(report.timed_out_pools, 0, "the job finished within the drain timeout");
    wait_state(&env, &job.id, "done").await;
    assert_eq!(
        starts(&env, &started, &job.id).await,
        Some(1),
        "the draining job's lease expired and it ran again"
    );
    assert!(
        events.try_recv().is_err(),
        "the other replica settled nothing of this job"
    );
    other.shutdown().await;
    env.cleanup().await;
}
