//! Tracked batches against the real Redis: counters and completion, callbacks fired
//! once, replayed pushes and acks, cancel and dead-letter re-drive accounting, members
//! adding jobs, refusals; and several `culm run` processes, one SIGKILLed mid-batch.
use culm_core::{EnqueueRequest, JobContext, JobError, Outcome};
use culm_tests::{KillOnDrop, TestEnv, culm_bin, eventually, queue, redis_url};
use culm_worker::store::{Ack, AckBatch, AckKind, BatchError, BatchStatus, Delivery, NewBatch, Store};
use serde_json::json;
use std::{sync::Arc, time::Duration};

const WAIT: Duration = Duration::from_secs(30);

fn noop(q: &str) -> EnqueueRequest {
    EnqueueRequest::raw("platform.noop", json!({})).queue(q)
}

fn record(q: &str, set: &str) -> EnqueueRequest {
    EnqueueRequest::raw("platform.record", json!({ "set": set })).queue(q)
}

fn ack(d: &Delivery, kind: AckKind) -> Ack {
    // What the settle step keeps for a final run that is not dead.
    let finished = |flag: Option<&str>| {
        let mut f = json!({ "job": d.envelope.job, "attempts": d.attempt, "enqueued_at": d.envelope.enqueued_at });
        if let Some(flag) = flag {
            f[flag] = json!(true);
        }
        Some(f.to_string())
    };
    Ack {
        finished: match kind {
            AckKind::Done => finished(None),
            AckKind::Cancelled => finished(Some("cancelled")),
            AckKind::Expired => finished(Some("expired")),
            _ => None,
        },
        id: d.id.clone(),
        token: d.token,
        kind,
        error: "boom".into(),
        expired_only: false,
        batch: d.envelope.batch.as_deref().map(Arc::from),
    }
}

/// Leases the `n` jobs `q` holds (asking for more: a fetch skips, but counts, the ids of
/// cancelled jobs left in `ready`).
async fn fetch(store: &Store, q: &str, n: usize) -> Vec<Delivery> {
    let f = store
        .fetch(&Arc::from(q), n + 8, Duration::from_secs(30))
        .await
        .expect("fetch");
    assert_eq!(f.jobs.len(), n, "fetched every member");
    f.jobs
}

async fn status(store: &Store, id: &str) -> BatchStatus {
    store.batch(id).await.expect("read batch").expect("batch exists")
}

fn counts(b: &BatchStatus) -> [u64; 6] {
    [b.total, b.pending, b.succeeded, b.dead, b.cancelled, b.expired]
}

async fn pending(store: &Store, q: &str) -> u64 {
    store.stats(q).await.expect("stats").pending
}

fn two_queues(c: &mut culm_worker::config::Config) {
    c.queues.insert("t_bq".into(), queue("critical", 4, 5_000, 1));
    c.queues.insert("t_cb".into(), queue("critical", 4, 5_000, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_completes_when_its_members_are_final_and_fires_its_callbacks_once() {
    let env = TestEnv::new(two_queues).await;
    let store = &env.store;
    let b = store
        .create_batch(NewBatch {
            jobs: vec![noop("t_bq"), noop("t_bq"), noop("t_bq"), noop("t_bq")],
            on_complete: Some(noop("t_cb")),
            on_success: Some(noop("t_cb")),
            description: Some("four".into()),
            ..NewBatch::default()
        })
        .await
        .expect("create");
    assert_eq!(b.queue, "t_bq");
    assert_eq!(b.jobs.len(), 4);
    let s = status(store, &b.id).await;
    assert_eq!((s.state.as_str(), counts(&s)), ("running", [4, 4, 0, 0, 0, 0]));

    let ds = fetch(store, "t_bq", 4).await;
    assert!(ds.iter().all(|d| d.envelope.batch.as_deref() == Some(b.id.as_str())));
    // A retry is not final; done, cancelled-while-running and expired are, each counted
    // as itself.
    let r = store
        .ack_waited(
            "t_bq",
            &AckBatch::first(),
            &[
                ack(&ds[0], AckKind::Done),
                ack(
                    &ds[1],
                    AckKind::Retry {
                        at: culm_core::now_ms(),
                    },
                ),
                ack(&ds[2], AckKind::Cancelled),
                ack(&ds[3], AckKind::Expired),
            ],
            Default::default(),
        )
        .await
        .expect("ack");
    assert_eq!(r.applied, vec![true; 4]);
    assert!(r.completed.is_empty(), "a member is still pending");
    let s = status(store, &b.id).await;
    assert_eq!(counts(&s), [4, 1, 1, 0, 1, 1]);

    // The retried member dies: the batch completes, and the ack says so.
    let d = fetch(store, "t_bq", 1).await.remove(0);
    let r = store
        .ack_waited(
            "t_bq",
            &AckBatch::first(),
            &[ack(&d, AckKind::Dead)],
            Default::default(),
        )
        .await
        .expect("ack");
    assert_eq!(r.completed, vec![b.id.clone()]);
    let s = status(store, &b.id).await;
    assert_eq!((s.state.as_str(), counts(&s)), ("complete", [4, 0, 1, 1, 1, 1]));
    assert!(s.completed_at.is_some());

    // Any number of firings, from the acker and from upkeep: one callback job.
    let first = store.fire_batch("t_bq", &b.id).await.expect("fire");
    let again = store.fire_batch("t_bq", &b.id).await.expect("fire again");
    assert_eq!(first.len(), 1, "on_complete only: not every member succeeded");
    assert_eq!(first, again);
    // A firer SIGKILLed after enqueueing the callbacks but before recording them leaves
    // the batch in `firing` without callback ids: re-firing finds the same job.
    let keys = store.keys("t_bq");
    redis::pipe()
        .hdel(keys.batch(&b.id), "callbacks")
        .zadd(keys.batches_firing(), &b.id, 0)
        .exec_async(&mut store.connection())
        .await
        .expect("undo the record");
    assert_eq!(store.refire_batches("t_bq", 0).await.expect("refire"), 1);
    assert_eq!(store.fire_batch("t_bq", &b.id).await.expect("fire"), first);
    assert_eq!(
        store.refire_batches("t_bq", 0).await.expect("refire"),
        0,
        "no longer firing"
    );
    assert_eq!(pending(store, "t_cb").await, 1, "one callback job");
    let s = status(store, &b.id).await;
    let on_complete = s.callbacks.on_complete.expect("on_complete");
    assert_eq!(
        (on_complete.state.as_str(), on_complete.id.as_ref()),
        ("enqueued", Some(&first[0]))
    );
    assert_eq!(s.callbacks.on_success.expect("on_success").state, "skipped");
    // The callback knows its batch.
    let cb = fetch(store, "t_cb", 1).await.remove(0);
    assert_eq!(cb.envelope.callback_of.as_deref(), Some(b.id.as_str()));

    // Members page with their states.
    let page = store.batch_members(&b.id, 0, 3).await.expect("page").expect("batch");
    assert_eq!(page.jobs.len(), 3);
    assert_eq!(page.next_cursor.as_deref(), Some("3"));
    let rest = store.batch_members(&b.id, 3, 3).await.expect("page").expect("batch");
    assert_eq!(rest.jobs.len(), 1);
    assert_eq!(rest.next_cursor, None);
    let states: Vec<String> = page.jobs.iter().chain(&rest.jobs).map(|m| m.state.clone()).collect();
    assert_eq!(states, ["done", "dead", "cancelled", "expired"]);
    assert_eq!(store.list_batches(10).await.expect("list")[0].id, b.id);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_success_fires_when_every_member_succeeded_and_an_unfired_completion_is_fired_by_upkeep() {
    let env = TestEnv::new(two_queues).await;
    let store = &env.store;
    let b = store
        .create_batch(NewBatch {
            jobs: vec![noop("t_bq"), noop("t_bq")],
            on_complete: Some(noop("t_cb")),
            on_success: Some(noop("t_cb")),
            ..NewBatch::default()
        })
        .await
        .expect("create");
    let ds = fetch(store, "t_bq", 2).await;
    let acks: Vec<Ack> = ds.iter().map(|d| ack(d, AckKind::Done)).collect();
    // The acker completes the batch and is killed before it fires the callbacks.
    let r = store
        .ack_waited("t_bq", &AckBatch::first(), &acks, Default::default())
        .await
        .expect("ack");
    assert_eq!(r.completed, vec![b.id.clone()]);
    assert_eq!(pending(store, "t_cb").await, 0);
    // A replica's upkeep finds it in `firing`.
    assert_eq!(store.refire_batches("t_bq", 0).await.expect("refire"), 1);
    assert_eq!(store.refire_batches("t_bq", 0).await.expect("refire"), 0);
    assert_eq!(pending(store, "t_cb").await, 2, "on_complete and on_success, once each");
    let s = status(store, &b.id).await;
    assert_eq!(s.callbacks.on_success.expect("on_success").state, "enqueued");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_stale_acks_and_replayed_adds_count_nothing_twice() {
    let env = TestEnv::new(two_queues).await;
    let store = &env.store;
    let b = store
        .create_batch(NewBatch {
            jobs: vec![noop("t_bq"), noop("t_bq")],
            on_complete: Some(noop("t_cb")),
            open: true,
            member_keys: Some("m".into()),
            ..NewBatch::default()
        })
        .await
        .expect("create");
    // A retried creation (a handler run again) finds the batch and its members.
    let again = store
        .create_batch(NewBatch {
            id: Some(b.id.clone()),
            jobs: vec![noop("t_bq"), noop("t_bq")],
            on_complete: Some(noop("t_cb")),
            open: true,
            member_keys: Some("m".into()),
            ..NewBatch::default()
        })
        .await
        .expect("create again");
    assert!(again.jobs.iter().all(|j| !j.created));
    assert_eq!(counts(&status(store, &b.id).await), [2, 2, 0, 0, 0, 0]);

    let ds = fetch(store, "t_bq", 2).await;
    let name = AckBatch::first();
    let acks = [ack(&ds[0], AckKind::Done)];
    let r = store
        .ack_waited("t_bq", &name, &acks, Default::default())
        .await
        .expect("ack");
    assert_eq!(r.applied, vec![true]);
    // The reply was lost: the acker resends the same batch.
    let r = store
        .ack_waited("t_bq", &name, &acks, Default::default())
        .await
        .expect("resend");
    assert_eq!(r.applied, vec![true], "a resend gets the first answer");
    // A stale ack under a new name is fenced off.
    let r = store
        .ack_waited("t_bq", &name.next(), &acks, Default::default())
        .await
        .expect("stale");
    assert_eq!(r.applied, vec![false]);
    assert_eq!(counts(&status(store, &b.id).await), [2, 1, 1, 0, 0, 0]);

    let r = store
        .ack_waited(
            "t_bq",
            &name.next().next(),
            &[ack(&ds[1], AckKind::Done)],
            Default::default(),
        )
        .await
        .expect("ack");
    assert!(
        r.completed.is_empty(),
        "the creator's hold keeps an open batch from completing"
    );
    let closed = store.close_batch(&b.id).await.expect("close");
    assert_eq!(
        (closed.state.as_str(), counts(&closed)),
        ("complete", [2, 0, 2, 0, 0, 0])
    );
    assert_eq!(pending(store, "t_cb").await, 1, "closing fired the callback");
    // Closing again changes nothing, and a complete batch takes no more jobs.
    store.close_batch(&b.id).await.expect("close again");
    assert_eq!(pending(store, "t_cb").await, 1);
    let e = store
        .add_to_batch(&b.id, vec![noop("t_bq")], None)
        .await
        .expect_err("complete");
    assert!(matches!(e, BatchError::Complete(_)), "{e}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pending_member_counts_and_a_redriven_dead_member_is_pending_again_until_completion() {
    let env = TestEnv::new(two_queues).await;
    let store = &env.store;
    let b = store
        .create_batch(NewBatch {
            jobs: vec![noop("t_bq"), noop("t_bq"), noop("t_bq")],
            on_complete: Some(noop("t_cb")),
            ..NewBatch::default()
        })
        .await
        .expect("create");
    let cancelled = store.cancel(&b.jobs[2].id).await.expect("cancel");
    assert!(
        matches!(cancelled, culm_worker::store::Cancelled::Cancelled { .. }),
        "{cancelled:?}"
    );
    assert_eq!(counts(&status(store, &b.id).await), [3, 2, 0, 0, 1, 0]);

    let ds = fetch(store, "t_bq", 2).await;
    let dead = ds.iter().find(|d| d.id == b.jobs[0].id).expect("first member");
    let r = store
        .ack_waited(
            "t_bq",
            &AckBatch::first(),
            &[ack(dead, AckKind::Dead)],
            Default::default(),
        )
        .await
        .expect("ack");
    assert!(r.applied[0]);
    assert_eq!(counts(&status(store, &b.id).await), [3, 1, 0, 1, 1, 0]);
    // Re-driven before completion: pending again.
    assert_eq!(
        store
            .dead_retry("t_bq", std::slice::from_ref(&dead.id))
            .await
            .expect("retry"),
        1
    );
    assert_eq!(counts(&status(store, &b.id).await), [3, 2, 0, 0, 1, 0]);

    // Both settle; it dies again and the batch completes.
    let other = ds.iter().find(|d| d.id != dead.id).expect("second member");
    let again = fetch(store, "t_bq", 1).await.remove(0);
    let r = store
        .ack_waited(
            "t_bq",
            &AckBatch::first(),
            &[ack(other, AckKind::Done), ack(&again, AckKind::Dead)],
            Default::default(),
        )
        .await
        .expect("ack");
    assert_eq!(r.completed, vec![b.id.clone()]);
    let done = status(store, &b.id).await;
    assert_eq!(counts(&done), [3, 0, 1, 1, 1, 0]);
    // After completion a re-drive changes no counts: the callbacks were decided then.
    assert_eq!(
        store
            .dead_retry("t_bq", std::slice::from_ref(&dead.id))
            .await
            .expect("retry"),
        1
    );
    assert_eq!(status(store, &b.id).await, done);
    // The batch completed through a cancellation when that was its last member.
    let c = store
        .create_batch(NewBatch {
            jobs: vec![noop("t_bq")],
            on_complete: Some(noop("t_cb")),
            ..NewBatch::default()
        })
        .await
        .expect("create");
    store.cancel(&c.jobs[0].id).await.expect("cancel");
    let s = status(store, &c.id).await;
    assert_eq!((s.state.as_str(), counts(&s)), ("complete", [1, 0, 0, 0, 1, 0]));
    assert_eq!(s.callbacks.on_complete.expect("on_complete").state, "enqueued");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refuses_jobs_for_two_queues_and_unknown_ids() {
    let env = TestEnv::new(two_queues).await;
    let store = &env.store;
    let e = store
        .create_batch(NewBatch {
            jobs: vec![noop("t_bq"), noop("t_bq"), noop("t_cb")],
            ..NewBatch::default()
        })
        .await
        .expect_err("two queues");
    match e {
        BatchError::Invalid {
            at,
            error: culm_core::EnqueueError::InvalidRequest { field, .. },
        } => assert_eq!((at.as_str(), field.as_str()), ("jobs[2]", "queue")),
        other => panic!("expected jobs[2].queue, got {other:?}"),
    }
    let e = store
        .create_batch(NewBatch {
            jobs: vec![noop("t_bq")],
            on_success: Some(EnqueueRequest::raw("no.such_job", json!({}))),
            ..NewBatch::default()
        })
        .await
        .expect_err("bad callback");
    assert!(
        matches!(&e, BatchError::Invalid { at, .. } if at == "on_success"),
        "{e:?}"
    );
    assert!(
        store.list_batches(10).await.expect("list").is_empty(),
        "nothing was created"
    );
    let e = store
        .add_to_batch("01NOSUCHBATCH", vec![noop("t_bq")], None)
        .await
        .expect_err("unknown");
    assert!(matches!(e, BatchError::NotFound(_)), "{e}");
    env.cleanup().await;
}

/// Adds `more` children to its own batch, each of which adds one fewer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Spawn {
    more: u32,
    set: String,
}

impl culm_core::Job for Spawn {
    const NAME: &'static str = "t.spawn";
    const QUEUE: &'static str = "t_bq";
    const TIERS: &'static [culm_core::Tier] = &culm_core::Tier::ALL;
    const DESCRIPTION: &'static str = "Adds a child to its own batch.";
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        if self.more > 0 {
            let child = EnqueueRequest::of(&Spawn {
                more: self.more - 1,
                set: self.set.clone(),
            })
            .map_err(|e| JobError::permanent(e.to_string()))?;
            ctx.add_to_batch(vec![child])
                .await
                .map_err(|e| JobError::retryable(e.to_string()))?;
        }
        Ok(Outcome::done())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_adds_jobs_to_its_own_batch_and_the_callback_runs_once_after_all_of_them() {
    let mut registry = culm_jobs::registry().expect("registry");
    registry.register::<Spawn>().expect("register");
    let env = TestEnv::with_registry(registry, two_queues).await;
    let set = env.key("cb");
    let b = env
        .store
        .create_batch(NewBatch {
            jobs: vec![EnqueueRequest::raw("t.spawn", json!({ "more": 3, "set": set }))],
            on_complete: Some(record("t_cb", &set)),
            ..NewBatch::default()
        })
        .await
        .expect("create");
    let running = env.runtime().start(&["t_bq".into(), "t_cb".into()]).expect("start");
    let recorded = eventually(WAIT, "the callback ran", || async {
        let m = env.members(&set).await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    let s = status(&env.store, &b.id).await;
    assert_eq!((s.state.as_str(), counts(&s)), ("complete", [4, 0, 4, 0, 0, 0]));
    assert_eq!(
        recorded,
        vec![s.callbacks.on_complete.expect("on_complete").id.expect("id")]
    );
    assert_eq!(
        env.members(&format!("{set}:batch")).await,
        vec![b.id.clone()],
        "ctx.batch_id()"
    );
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_several_replicas_fires_its_callback_once_when_one_is_sigkilled() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_bk".into(), queue("critical", 4, 5_000, 3));
    })
    .await;
    let set = env.key("members");
    let cb_set = env.key("callback");
    const JOBS: usize = 300;
    let spawn = || {
        KillOnDrop(Some(
            std::process::Command::new(culm_bin())
                .current_dir(culm_tests::workspace_root())
                .args(["run", "--queues", "t_bk", "--no-scheduler", "--no-admin"])
                .env("CULM_REDIS_URL", redis_url())
                .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
                .env("CULM__QUEUES__T_BK__TIER", "critical")
                .env("CULM__QUEUES__T_BK__CONCURRENCY", "4")
                .env("CULM__WORKER__LEASE_TTL", "2s")
                .env("CULM__WORKER__LEASE_EXTEND_INTERVAL", "500ms")
                .env("CULM__WORKER__REAP_INTERVAL", "200ms")
                .env("CULM__ADMIN__ENABLED", "false")
                .env("CULM_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("culm run starts"),
        ))
    };
    let mut replicas = vec![spawn(), spawn(), spawn()];
    let jobs = (0..JOBS)
        .map(|_| EnqueueRequest::raw("platform.record", json!({ "set": set, "sleep_ms": 20 })).queue("t_bk"))
        .collect();
    let b = env
        .store
        .create_batch(NewBatch {
            jobs,
            on_complete: Some(record("t_bk", &cb_set)),
            on_success: Some(record("t_bk", &cb_set)),
            ..NewBatch::default()
        })
        .await
        .expect("create");
    // Mid-batch: some members done, most still to run.
    eventually(WAIT, "a third of the members done", || async {
        let s = status(&env.store, &b.id).await;
        (s.succeeded >= (JOBS / 3) as u64).then_some(())
    })
    .await;
    let mut killed = replicas.remove(0).0.take().expect("child");
    killed.kill().expect("SIGKILL");
    let _ = killed.wait();
    let s = status(&env.store, &b.id).await;
    assert!(s.pending > 0, "the kill landed mid-batch: {s:?}");

    // Its leases expire and the others finish the batch; both callbacks run.
    // The callbacks may run before their firer records their ids in the batch: wait for
    // both.
    let s = eventually(
        Duration::from_secs(60),
        "both callbacks ran and were recorded",
        || async {
            let s = status(&env.store, &b.id).await;
            let recorded = [&s.callbacks.on_complete, &s.callbacks.on_success]
                .iter()
                .all(|c| c.as_ref().is_some_and(|c| c.id.is_some()));
            (recorded && env.members(&cb_set).await.len() >= 2).then_some(s)
        },
    )
    .await;
    assert_eq!(
        (s.state.as_str(), counts(&s)),
        ("complete", [JOBS as u64, 0, JOBS as u64, 0, 0, 0])
    );
    assert_eq!(env.members(&set).await.len(), JOBS, "every member ran");
    // Exactly once: two callback jobs (on_complete, on_success), each run once, both
    // knowing their batch; and no third turns up while the replicas keep reaping and
    // re-firing.
    let mut expected: Vec<String> = [s.callbacks.on_complete, s.callbacks.on_success]
        .into_iter()
        .map(|c| c.expect("callback").id.expect("enqueued"))
        .collect();
    expected.sort();
    let runs = |id: String| {
        let key = format!("{cb_set}:runs");
        let store = env.store.clone();
        async move {
            let mut c = store.connection();
            let n: Option<u64> = redis::cmd("HGET")
                .arg(key)
                .arg(id)
                .query_async(&mut c)
                .await
                .expect("HGET");
            n
        }
    };
    tokio::time::sleep(Duration::from_millis(
        culm_worker::store::REFIRE_AFTER_MS as u64 + 1_000,
    ))
    .await;
    let mut got = env.members(&cb_set).await;
    got.sort();
    assert_eq!(got, expected, "one job per callback");
    for id in expected {
        assert_eq!(runs(id.clone()).await, Some(1), "callback {id} ran once");
    }
    assert_eq!(env.members(&format!("{cb_set}:batch")).await, vec![b.id.clone()]);
    for r in replicas {
        r.sigterm();
    }
    env.cleanup().await;
}
