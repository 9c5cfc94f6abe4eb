//! The foundation's behaviour against the real Redis: tier isolation, retries and dead
//! letters, bad payloads, timeouts, idempotency, delays, drain and SIGKILL recovery.
use culm_core::{EnqueueRequest, now_ms};
use culm_tests::{TestEnv, culm_bin, eventually, is, next_event, queue, sigterm_and_wait, workspace_root};
use culm_worker::store::{AckKind, JobState};
use serde_json::json;
use std::{process::Stdio, time::Duration};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_one_tier_never_delays_another() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_crit".into(), queue("critical", 4, 5_000, 3));
        c.queues.insert("t_bulk".into(), queue("batch", 2, 5_000, 3));
    })
    .await;
    let backlog: Vec<_> = (0..10_000)
        .map(|_| EnqueueRequest::raw("platform.sleep", json!({"ms": 20})).queue("t_bulk"))
        .collect();
    env.store.enqueue(backlog).await.expect("backlog enqueued");
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_crit".into(), "t_bulk".into()]).expect("start");
    let crit: Vec<_> = (0..50)
        .map(|_| EnqueueRequest::raw("platform.noop", json!({})).queue("t_crit"))
        .collect();
    env.store.enqueue(crit).await.expect("critical enqueued");

    let (mut crit_done, mut bulk_done) = (0, 0);
    while crit_done < 50 {
        let e = next_event(&mut events, WAIT, |e| is("done", e)).await;
        match e.queue.as_str() {
            "t_crit" => crit_done += 1,
            _ => bulk_done += 1,
        }
    }
    let bulk = env.store.stats("t_bulk").await.expect("stats");
    assert!(
        bulk.pending > 9_000,
        "the batch backlog is still there while critical work finished: {bulk:?}"
    );
    // Both pools ran side by side: the batch queue was not starved either.
    next_event(&mut events, WAIT, |e| is("done", e) && e.queue == "t_bulk").await;
    let _ = bulk_done;
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_backoff_then_dead_letter_and_can_be_redriven() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_retry".into(), queue("third_party", 2, 5_000, 3));
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_retry".into()]).expect("start");
    let job = env
        .enqueue(EnqueueRequest::raw("platform.fail", json!({"times": 100})).queue("t_retry"))
        .await;

    for attempt in 1..=2 {
        let e = next_event(&mut events, WAIT, |e| e.id == job.id).await;
        assert_eq!(e.attempt, attempt);
        match e.kind {
            AckKind::Retry { at } => assert!(at <= now_ms() + 100, "backoff is capped at 100ms: {at}"),
            other => panic!("attempt {attempt} should retry, got {other:?}"),
        }
    }
    let e = next_event(&mut events, WAIT, |e| e.id == job.id).await;
    assert_eq!((e.attempt, e.kind.clone()), (3, AckKind::Dead));

    let dead = env.store.dead_list("t_retry", 10).await.expect("dead list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, job.id);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(
        dead[0].errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        dead[0].last_error.as_deref().is_some_and(|m| m.contains("attempt 3")),
        "{:?}",
        dead[0].last_error
    );
    assert!(dead[0].died_at >= dead[0].enqueued_at);

    // Re-drive: a fresh budget of three attempts, then dead again; then purge.
    assert_eq!(
        env.store
            .dead_retry("t_retry", std::slice::from_ref(&job.id))
            .await
            .expect("retry"),
        1
    );
    let e = next_event(&mut events, WAIT, |e| e.id == job.id).await;
    assert_eq!(e.attempt, 1, "a re-driven job starts its attempts again");
    next_event(&mut events, WAIT, |e| e.id == job.id && is("dead", e)).await;
    assert_eq!(
        env.store
            .dead_purge("t_retry", std::slice::from_ref(&job.id))
            .await
            .expect("purge"),
        1
    );
    assert!(env.store.dead_list("t_retry", 10).await.expect("list").is_empty());
    assert!(env.store.status(&job.id).await.expect("status").is_none());
    running.shutdown().await;
    env.cleanup().await;
}

/// Writes a job body straight into Redis, bypassing validation (as an older or foreign
/// producer might).
async fn push_raw(env: &TestEnv, queue: &str, body: serde_json::Value) -> String {
    let id = ulid::Ulid::new().to_string();
    let keys = env.store.keys(queue);
    let mut c = env.store.connection();
    redis::pipe()
        .hset(keys.jobs(), &id, body.to_string())
        .rpush(keys.ready(), &id)
        .exec_async(&mut c)
        .await
        .expect("raw push");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_and_unknown_types_are_dead_lettered_without_retries() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_bad".into(), queue("batch", 2, 5_000, 5));
    })
    .await;
    let now = now_ms();
    let bad = push_raw(
        &env,
        "t_bad",
        json!({"job": "platform.sleep", "payload": {"ms": "soon"}, "enqueued_at": now, "run_at": now}),
    )
    .await;
    let unknown = push_raw(
        &env,
        "t_bad",
        json!({"job": "galileo.retired_job", "payload": {}, "enqueued_at": now, "run_at": now}),
    )
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_bad".into()]).expect("start");
    for id in [&bad, &unknown] {
        let e = next_event(&mut events, WAIT, |e| &e.id == id).await;
        assert_eq!(
            (e.attempt, e.kind.clone()),
            (1, AckKind::Dead),
            "first and only attempt is dead: {e:?}"
        );
    }
    let dead = env.store.dead_list("t_bad", 10).await.expect("dead");
    let msg = |id: &str| {
        dead.iter()
            .find(|d| d.id == id)
            .and_then(|d| d.last_error.clone())
            .unwrap_or_default()
    };
    assert!(msg(&bad).contains("`ms`"), "names the field: {}", msg(&bad));
    assert!(
        msg(&unknown).contains("unknown job type `galileo.retired_job`"),
        "{}",
        msg(&unknown)
    );
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_timeout_fails_and_is_retried() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_slow".into(), queue("batch", 1, 100, 2));
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_slow".into()]).expect("start");
    let job = env
        .enqueue(EnqueueRequest::raw("platform.sleep", json!({"ms": 60_000})).queue("t_slow"))
        .await;
    let first = next_event(&mut events, WAIT, |e| e.id == job.id).await;
    assert!(
        matches!(first.kind, AckKind::Retry { .. }) && first.error.contains("timed out"),
        "{first:?}"
    );
    let last = next_event(&mut events, WAIT, |e| e.id == job.id).await;
    assert_eq!((last.attempt, last.kind.clone()), (2, AckKind::Dead));
    assert!(last.error.contains("timed out"), "{last:?}");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_failed_attempt_not_a_crash() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_panic".into(), queue("batch", 1, 5_000, 2));
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_panic".into()]).expect("start");
    let job = env
        .enqueue(EnqueueRequest::raw("platform.panic", json!({})).queue("t_panic"))
        .await;
    let e = next_event(&mut events, WAIT, |e| e.id == job.id && is("dead", e)).await;
    assert!(e.error.contains("panicked"), "{e:?}");
    // The pool still works.
    let ok = env
        .enqueue(EnqueueRequest::raw("platform.noop", json!({})).queue("t_panic"))
        .await;
    next_event(&mut events, WAIT, |e| e.id == ok.id && is("done", e)).await;
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_returns_the_first_job() {
    let env = TestEnv::new(|_| {}).await;
    let req = EnqueueRequest::raw("platform.noop", json!({})).idempotency_key("order-42");
    let first = env.enqueue(req.clone()).await;
    let second = env.enqueue(req.clone()).await;
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.id, second.id);
    // Within one batch too.
    let batch = env
        .store
        .enqueue(vec![req.clone().idempotency_key("k2"), req.idempotency_key("k2")])
        .await
        .expect("batch");
    assert_eq!(batch[0].id, batch[1].id);
    assert_eq!(env.store.stats("platform").await.expect("stats").pending, 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_does_not_run_before_its_time() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_delay".into(), queue("batch", 2, 5_000, 2));
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_delay".into()]).expect("start");
    let run_at = now_ms() + 1_500;
    let job = env
        .enqueue(
            EnqueueRequest::raw("platform.noop", json!({}))
                .queue("t_delay")
                .at_ms(run_at),
        )
        .await;
    let status = env.store.status(&job.id).await.expect("status").expect("known");
    assert_eq!(status.state, JobState::Scheduled);
    next_event(&mut events, WAIT, |e| e.id == job.id && is("done", e)).await;
    assert!(now_ms() >= run_at, "ran before its time");
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuations_chain_steps_without_blocking() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_chain".into(), queue("batch", 1, 5_000, 2));
    })
    .await;
    let set = env.key("chain");
    let rt = env.runtime();
    let running = rt.start(&["t_chain".into()]).expect("start");
    env.enqueue(EnqueueRequest::raw("platform.chain", json!({"set": set, "steps": 4})).queue("t_chain"))
        .await;
    eventually(WAIT, "all four chain steps", || async {
        let m = env.members(&set).await;
        (m.len() == 4).then_some(())
    })
    .await;
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_jobs_then_hands_back_the_rest() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_drain".into(), queue("batch", 2, 60_000, 3));
    })
    .await;
    let set = env.key("drained");
    let rt = env.runtime();
    let running = rt.start(&["t_drain".into()]).expect("start");
    let started = env.key("started");
    for _ in 0..2 {
        let payload = json!({"set": set, "sleep_ms": 700, "started": started});
        env.enqueue(EnqueueRequest::raw("platform.record", payload).queue("t_drain"))
            .await;
    }
    // Wait for the handlers themselves, not just the leases: a job leased but not yet
    // started when shutdown begins is handed back, which is the second half of this test.
    eventually(WAIT, "both jobs running", || async {
        (env.members(&started).await.len() == 2).then_some(())
    })
    .await;
    let report = running.shutdown().await;
    assert_eq!(report.handed_back, 0);
    assert_eq!(
        env.members(&set).await.len(),
        2,
        "in-flight jobs finished during the drain"
    );
    let stats = env.store.stats("t_drain").await.expect("stats");
    assert_eq!((stats.pending, stats.running), (0, 0));

    // A drain timeout shorter than the job: the job is handed back, attempt refunded.
    let mut short = env.config.clone();
    short.worker.drain_timeout = Duration::from_millis(200);
    let rt = culm_worker::runtime::Runtime::new(
        std::sync::Arc::new(short),
        env.store.clone(),
        culm_core::Deps::default(),
    );
    let running = rt.start(&["t_drain".into()]).expect("start");
    let job = env
        .enqueue(EnqueueRequest::raw("platform.sleep", json!({"ms": 60_000})).queue("t_drain"))
        .await;
    eventually(WAIT, "the long job running", || async {
        (env.store.status(&job.id).await.ok()??.state == JobState::Running).then_some(())
    })
    .await;
    let report = running.shutdown().await;
    assert_eq!((report.timed_out_pools, report.handed_back), (1, 1));
    let s = env.store.status(&job.id).await.expect("status").expect("known");
    assert_eq!((s.state.as_str(), s.attempts), ("pending", 0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_job_redelivers_to_another_process_and_loses_nothing() {
    let env = TestEnv::new(|_| {}).await;
    let set = env.key("killed");
    let jobs: Vec<_> = (0..20)
        .map(|_| EnqueueRequest::raw("platform.record", json!({"set": set, "sleep_ms": 400})).queue("platform"))
        .collect();
    let ids = culm_tests::enqueue_ids(&env.store, jobs).await;
    let spawn = || {
        std::process::Command::new(culm_bin())
            .current_dir(workspace_root())
            .args(["run", "--queues", "platform"])
            .env("CULM_REDIS_URL", culm_tests::redis_url())
            .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
            .env("CULM__WORKER__LEASE_TTL", "2s")
            .env("CULM__WORKER__LEASE_EXTEND_INTERVAL", "500ms")
            .env("CULM__WORKER__REAP_INTERVAL", "200ms")
            .env("CULM__ADMIN__ENABLED", "false")
            .env("CULM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("culm starts")
    };
    let mut first = spawn();
    eventually(WAIT, "the first process to be mid-job", || async {
        (env.store.stats("platform").await.ok()?.running > 0).then_some(())
    })
    .await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let in_flight_at_kill = env.store.stats("platform").await.expect("stats").running;
    assert!(in_flight_at_kill > 0, "the killed process held leases");

    let mut second = spawn();
    eventually(Duration::from_secs(60), "every job recorded", || async {
        (env.members(&set).await.len() == ids.len()).then_some(())
    })
    .await;
    let recorded = env.members(&set).await;
    for id in &ids {
        assert!(recorded.contains(id), "job {id} was lost");
    }
    // Graceful exit on SIGTERM.
    let exit = sigterm_and_wait(&mut second);
    assert!(exit.success(), "culm exits 0 after SIGTERM: {exit:?}");
    env.cleanup().await;
}

#[test]
fn check_names_a_misrouted_job_type_and_fails() {
    let dir = std::env::temp_dir().join(format!("culm-check-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(workspace_root().join("config/default.toml"), dir.join("default.toml")).expect("copy");
    std::fs::write(dir.join("misrouted.toml"), "[routes]\n\"platform.noop\" = \"unit22\"\n").expect("write");
    let out = std::process::Command::new(culm_bin())
        .args([
            "--config-dir",
            dir.to_str().expect("utf-8"),
            "--env",
            "misrouted",
            "check",
        ])
        .output()
        .expect("culm check runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("platform.noop") && stderr.contains("unit22"),
        "{stderr}"
    );

    let ok = std::process::Command::new(culm_bin())
        .args(["--config-dir", dir.to_str().expect("utf-8"), "check"])
        .output()
        .expect("runs");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_unreachable_redis_is_one_clear_line() {
    let out = std::process::Command::new(culm_bin())
        .args(["queues"])
        .env("CULM_REDIS_URL", "redis://:s3cret@127.0.0.1:1")
        .env("CULM__REDIS__CONNECT_TIMEOUT", "500ms")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("127.0.0.1:1") && stderr.contains("CULM_REDIS_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_password_in_a_url_query_never_reaches_the_output() {
    for (var, url, args) in [
        (
            "CULM_DATABASE_URL",
            "postgres://app@127.0.0.1:1/culm?password=s3cret",
            vec!["migrate"],
        ),
        (
            "CULM_REDIS_URL",
            "redis://127.0.0.1:1/0?password=s3cret",
            vec!["queues"],
        ),
    ] {
        let out = std::process::Command::new(culm_bin())
            .args(&args)
            .env(var, url)
            .env("CULM__REDIS__CONNECT_TIMEOUT", "500ms")
            .env("CULM__DATABASE__CONNECT_TIMEOUT", "500ms")
            .output()
            .expect("runs");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?} fails: {all}");
        assert!(all.contains("127.0.0.1:1"), "the error names where it dialled: {all}");
        assert!(!all.contains("s3cret"), "the password leaked: {all}");
    }
}

/// A job type's own retry policy and timeout win over its queue's: `[job_types]` in the
/// configuration here (the job type's code sits between the two; the config tests check
/// the whole order). Three job types in one queue, each under a different override.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_types_retry_policy_and_timeout_override_its_queues() {
    use culm_core::RetryPolicy;
    use culm_worker::config::{JobTypeConfig, RetryConfig};
    let env = TestEnv::new(|c| {
        // The queue: 5 attempts, backoff at most 100 ms, 5 s per attempt.
        c.queues.insert("t_policy".into(), queue("batch", 4, 5_000, 5));
        let mut over = |job: &str, retry: Option<RetryPolicy>, timeout: Option<Duration>| {
            c.job_types.insert(
                job.into(),
                JobTypeConfig {
                    retry: retry.map(RetryConfig),
                    timeout,
                },
            );
        };
        // Explicit delays: three attempts in all.
        static DELAYS: &[Duration] = &[Duration::from_millis(10), Duration::from_millis(20)];
        over("platform.fail", Some(RetryPolicy::delays(DELAYS)), None);
        // The seed's "3 retries, 30 s apart".
        over(
            "platform.panic",
            Some(RetryPolicy::fixed(4, Duration::from_secs(30))),
            None,
        );
        // An attempt may run 100 ms, not the queue's 5 s; one attempt only.
        over(
            "platform.sleep",
            Some(RetryPolicy::fixed(1, Duration::from_secs(1))),
            Some(Duration::from_millis(100)),
        );
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_policy".into()]).expect("start");
    let listed = env
        .enqueue(EnqueueRequest::raw("platform.fail", json!({"times": 100})).queue("t_policy"))
        .await;
    let fixed = env
        .enqueue(EnqueueRequest::raw("platform.panic", json!({})).queue("t_policy"))
        .await;
    let slow = env
        .enqueue(EnqueueRequest::raw("platform.sleep", json!({"ms": 60_000})).queue("t_policy"))
        .await;

    // The three settle in any order: take each one's first final or retry event.
    let (mut dead, mut retry, mut timed_out) = (None, None, None);
    while dead.is_none() || retry.is_none() || timed_out.is_none() {
        let e = next_event(&mut events, WAIT, |_| true).await;
        if e.id == listed.id && is("dead", &e) {
            dead = Some(e);
        } else if e.id == fixed.id {
            retry = retry.or(Some(e));
        } else if e.id == slow.id {
            timed_out = timed_out.or(Some(e));
        }
    }
    let (Some(dead), Some(retry), Some(timed_out)) = (dead, retry, timed_out) else {
        unreachable!("the loop ends once all three are in");
    };
    assert_eq!(
        dead.attempt, 3,
        "two listed delays: three attempts, not the queue's five"
    );
    assert!(dead.error.contains("attempt 3 of 3"), "{dead:?}");
    match retry.kind {
        // The queue's backoff would be at most 100 ms; the fixed policy waits 30 s.
        AckKind::Retry { at } => assert!(at > now_ms() + 20_000, "retry in {} ms", at - now_ms()),
        other => panic!("a panic under a fixed policy retries, got {other:?}"),
    }
    assert_eq!(timed_out.kind, AckKind::Dead, "{timed_out:?}");
    assert!(timed_out.error.contains("timed out after 100ms"), "{timed_out:?}");
    running.shutdown().await;
    env.cleanup().await;
}

/// Celery's `expires`: a job not started by its `expires_at` is not run at all and ends
/// `expired` (not dead): neither its first attempt nor a retry starts late. A job whose
/// expiry is still ahead runs as usual, and one that would expire before it may run is
/// refused at enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_not_started_by_its_expiry_is_not_run_and_ends_expired() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_expiry".into(), queue("batch", 2, 5_000, 100));
    })
    .await;
    let set = env.key("ran");
    env.store.pause("t_expiry").await.expect("pause");
    let stale = env
        .enqueue(
            EnqueueRequest::raw("platform.record", json!({"set": set}))
                .queue("t_expiry")
                .expires_in(Duration::from_millis(300)),
        )
        .await;
    let fresh = env
        .enqueue(
            EnqueueRequest::raw("platform.record", json!({"set": set}))
                .queue("t_expiry")
                .expires_in(Duration::from_secs(3600)),
        )
        .await;
    // Fails every attempt; its expiry ends the retries instead of the attempt budget.
    let failing = env
        .enqueue(
            EnqueueRequest::raw("platform.fail", json!({"times": 1000}))
                .queue("t_expiry")
                .expires_in(Duration::from_secs(1)),
        )
        .await;
    let stale_expires = now_ms() + 300;
    // The paused queue keeps the stale job waiting past its expiry.
    eventually(WAIT, "the stale job's expiry passes", || async {
        (now_ms() > stale_expires).then_some(())
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_expiry".into()]).expect("start");
    env.store.resume("t_expiry").await.expect("resume");

    let (mut expired, mut done, mut failing_end) = (None, None, None);
    while expired.is_none() || done.is_none() || failing_end.is_none() {
        let e = next_event(&mut events, WAIT, |_| true).await;
        if e.id == stale.id {
            expired = Some(e);
        } else if e.id == fresh.id {
            done = Some(e);
        } else if e.id == failing.id && !is("retry", &e) {
            failing_end = Some(e);
        }
    }
    let (Some(expired), Some(done), Some(failing_end)) = (expired, done, failing_end) else {
        unreachable!("the loop ends once all three are in");
    };
    assert_eq!(expired.kind, AckKind::Expired, "{expired:?}");
    assert!(expired.error.contains("expired at"), "{expired:?}");
    assert_eq!(done.kind, AckKind::Done, "{done:?}");
    assert_eq!(
        env.members(&set).await,
        vec![fresh.id.clone()],
        "only the fresh job ran"
    );
    assert_eq!(failing_end.kind, AckKind::Expired, "{failing_end:?}");
    assert!(failing_end.attempt > 1, "it retried until it expired: {failing_end:?}");

    let status = env.store.status(&stale.id).await.expect("status").expect("known");
    assert_eq!(status.state, JobState::Expired);
    assert!(env.store.dead_list("t_expiry", 10).await.expect("dead").is_empty());

    let refused = env
        .store
        .enqueue(vec![
            EnqueueRequest::raw("platform.noop", json!({}))
                .queue("t_expiry")
                .delay(Duration::from_secs(60))
                .expires_in(Duration::from_secs(1)),
        ])
        .await
        .expect_err("expires before it may run");
    assert!(refused.to_string().contains("expires_at"), "{refused}");
    running.shutdown().await;
    env.cleanup().await;
}
