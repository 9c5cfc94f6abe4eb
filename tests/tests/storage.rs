//! The Redis layer when commands repeat: every script is safe to run twice with the
//! same arguments, as happens when a client resends a command after a connection error.
use culm_core::now_ms;
use culm_tests::{TestEnv, queue};
use redis::Script;

/// The push script exactly as culm sends it (the shared header, then the operation).
fn push_script() -> Script {
    Script::new(concat!(
        include_str!("../../worker/src/store/lua/common.lua"),
        "\n",
        include_str!("../../worker/src/store/lua/push.lua")
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_push_stores_the_job_once() {
    // Once as a plain job, once holding a uniqueness key: a replay finds its own id.
    for unique in [false, true] {
        replayed_push(unique).await;
    }
}

async fn replayed_push(unique: bool) {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_push".into(), queue("critical", 1, 5_000, 1));
    })
    .await;
    let now = now_ms();
    let id = ulid::Ulid::new().to_string();
    let envelope = serde_json::json!({"job": "platform.noop", "payload": {}, "enqueued_at": now, "run_at": now});
    let script = push_script();
    let mut invoke = script.prepare_invoke();
    for k in env.store.keys("t_push").fixed() {
        invoke.key(k);
    }
    if unique {
        invoke.key(env.store.keys("t_push").unique("acct-1"));
    }
    invoke
        .arg(now)
        .arg(3600)
        .arg(0)
        .arg(1)
        .arg(&id)
        .arg(now)
        .arg(envelope.to_string())
        .arg("")
        .arg(if unique { 60_000 } else { 0 })
        .arg("");
    let mut c = env.store.connection();
    let first: Vec<redis::Value> = invoke.invoke_async(&mut c).await.expect("push");
    assert_eq!(first.len(), 2);
    // The reply was lost; the client sends the same command again.
    let _: Vec<redis::Value> = invoke.invoke_async(&mut c).await.expect("replayed push");
    let stats = env.store.stats("t_push").await.expect("stats");
    assert_eq!(
        stats.pending, 1,
        "the replayed push queued the job a second time: {stats:?}"
    );

    // A replay that arrives after the job already ran must not bring it back either.
    let f = env
        .store
        .fetch(&std::sync::Arc::from("t_push"), 10, std::time::Duration::from_secs(30))
        .await
        .expect("fetch");
    assert_eq!(f.jobs.len(), 1);
    let d = &f.jobs[0];
    let applied = env
        .store
        .ack(
            "t_push",
            &culm_worker::store::AckBatch::first(),
            &[culm_worker::store::Ack {
                id: d.id.clone(),
                token: d.token,
                kind: culm_worker::store::AckKind::Done,
                error: String::new(),
                expired_only: false,
                finished: None,
                batch: None,
            }],
        )
        .await
        .expect("ack");
    assert_eq!(applied, vec![true]);
    let _: Vec<redis::Value> = invoke.invoke_async(&mut c).await.expect("late replay");
    let stats = env.store.stats("t_push").await.expect("stats");
    assert_eq!(stats.pending, 0, "a late replay re-created a finished job: {stats:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_limited_to_printable_characters_outside_hash_tags() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_keys".into(), queue("critical", 1, 5_000, 1));
    })
    .await;
    let req = |key: &str| {
        culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({}))
            .queue("t_keys")
            .idempotency_key(key)
    };
    for bad in [
        "",
        "has space",
        "new\nline",
        "{culm:other}:ready",
        "tab\t",
        "ключ",
        &"k".repeat(201),
    ] {
        let e = env.store.enqueue(vec![req(bad)]).await.expect_err("rejected");
        assert!(
            matches!(&e, culm_core::EnqueueError::InvalidRequest { field, .. } if field == "idempotency_key"),
            "{bad:?}: {e}"
        );
    }
    for good in ["order-42", "payout:2026-11-26:acct_9/1", "a.b_c=d@e"] {
        env.store.enqueue(vec![req(good)]).await.expect("accepted");
    }
    assert_eq!(
        env.store.stats("t_keys").await.expect("stats").pending,
        3,
        "nothing rejected was written"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_across_queues_is_stored_whole_or_not_at_all() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_all".into(), queue("critical", 1, 5_000, 1));
        c.queues.insert("t_none".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    // One queue's write fails (here: its ready list is not a list).
    let mut c = env.store.connection();
    redis::cmd("SET")
        .arg(env.store.keys("t_none").ready())
        .arg("not a list")
        .exec_async(&mut c)
        .await
        .expect("SET");
    let batch = vec![
        culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({})).queue("t_all"),
        culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({})).queue("t_none"),
        culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({})).queue("t_all"),
    ];
    let e = env.store.enqueue(batch).await.expect_err("the batch fails");
    assert!(matches!(e, culm_core::EnqueueError::Storage(_)), "{e}");
    let stats = env.store.stats("t_all").await.expect("stats");
    assert_eq!(
        (stats.pending, stats.scheduled),
        (0, 0),
        "the caller was told nothing was stored, yet part of the batch was"
    );
    let bodies: u64 = redis::cmd("HLEN")
        .arg(env.store.keys("t_all").jobs())
        .query_async(&mut c)
        .await
        .expect("HLEN");
    assert_eq!(bodies, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_older_than_the_retention_are_trimmed_with_their_fields() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_trim".into(), queue("critical", 1, 5_000, 1));
        c.worker.dead_retention = std::time::Duration::from_secs(3_600);
    })
    .await;
    let q: std::sync::Arc<str> = "t_trim".into();
    let keys = env.store.keys(&q);
    let n = 1_003;
    let reqs = (0..n)
        .map(|_| culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({})).queue("t_trim"))
        .collect();
    env.store.enqueue(reqs).await.expect("enqueue");
    let f = env
        .store
        .fetch(&q, n, std::time::Duration::from_secs(30))
        .await
        .expect("fetch");
    assert_eq!(f.jobs.len(), n);
    let acks: Vec<culm_worker::store::Ack> = f
        .jobs
        .iter()
        .map(|d| culm_worker::store::Ack {
            id: d.id.clone(),
            token: d.token,
            kind: culm_worker::store::AckKind::Dead,
            error: "boom".into(),
            expired_only: false,
            finished: None,
            batch: None,
        })
        .collect();
    let applied = env
        .store
        .ack(&q, &culm_worker::store::AckBatch::first(), &acks)
        .await
        .expect("ack");
    assert!(applied.iter().all(|a| *a));
    // All but the last died two hours ago.
    let (old, fresh): (Vec<String>, String) = (
        f.jobs[..n - 1].iter().map(|d| d.id.clone()).collect(),
        f.jobs[n - 1].id.clone(),
    );
    let mut c = env.store.connection();
    let mut pipe = redis::pipe();
    for id in &old {
        pipe.cmd("ZADD")
            .arg(keys.dead())
            .arg("XX")
            .arg(now_ms() - 2 * 3_600_000)
            .arg(id)
            .ignore();
    }
    pipe.exec_async(&mut c).await.expect("age the dead jobs");

    let reap = || {
        env.store.reap(
            &q,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(30),
        )
    };
    let first = reap().await.expect("reap");
    let second = reap().await.expect("reap");
    let third = reap().await.expect("reap");
    assert_eq!(
        (first.trimmed, second.trimmed, third.trimmed),
        (1_000, (n - 1 - 1_000) as u64, 0),
        "trimmed in bounded chunks of 1,000"
    );
    let dead: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.dead())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .expect("ZRANGE");
    assert_eq!(
        dead,
        vec![fresh.clone()],
        "only the job that died within the retention stays"
    );
    for key in [keys.jobs(), keys.errors(), keys.attempts()] {
        let left: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&old)
            .query_async(&mut c)
            .await
            .expect("HMGET");
        assert!(left.iter().all(Option::is_none), "{key} still holds trimmed jobs");
        let kept: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(&fresh)
            .query_async(&mut c)
            .await
            .expect("HGET");
        assert!(kept.is_some(), "{key} lost the job within the retention");
    }
    let dl = env.store.dead_list("t_trim", 10).await.expect("dead list");
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].id, fresh);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_error_history_does_not_fail_a_settlement_batch() {
    use culm_worker::store::{Ack, AckBatch, AckKind};
    let env = TestEnv::new(|c| {
        c.queues.insert("t_hist".into(), queue("critical", 2, 5_000, 5));
    })
    .await;
    let reqs = (0..2)
        .map(|_| culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({})).queue("t_hist"))
        .collect();
    env.store.enqueue(reqs).await.expect("enqueue");
    let f = env
        .store
        .fetch(&std::sync::Arc::from("t_hist"), 2, std::time::Duration::from_secs(30))
        .await
        .expect("fetch");
    assert_eq!(f.jobs.len(), 2);
    // Another writer left one job's error history unreadable.
    let mut c = env.store.connection();
    redis::cmd("HSET")
        .arg(format!("{}:errors", env.store.base_key("t_hist")))
        .arg(&f.jobs[1].id)
        .arg("not json")
        .exec_async(&mut c)
        .await
        .expect("HSET");
    let acks: Vec<Ack> = f
        .jobs
        .iter()
        .map(|d| Ack {
            id: d.id.clone(),
            token: d.token,
            kind: AckKind::Retry { at: now_ms() + 60_000 },
            error: "upstream 503".into(),
            expired_only: false,
            finished: None,
            batch: None,
        })
        .collect();
    let applied = env
        .store
        .ack("t_hist", &AckBatch::first(), &acks)
        .await
        .expect("the batch settles");
    assert_eq!(applied, vec![true, true]);
    let st = env.store.status(&f.jobs[1].id).await.expect("status").expect("known");
    assert_eq!(st.errors.len(), 1, "the history starts over: {st:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_tick_decision_reports_the_tick_it_fired() {
    use culm_worker::store::{FireTick, Fired};
    let env = TestEnv::new(|c| {
        c.queues.insert("t_tick".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let now = now_ms();
    let id = ulid::Ulid::new().to_string();
    let envelope =
        serde_json::json!({"job": "platform.noop", "payload": {}, "enqueued_at": now, "run_at": now}).to_string();
    let tick = FireTick {
        schedule: "t.resent",
        queue: "t_tick",
        tick_ms: Some(1_800_000_000_000),
        claim: "t.resent:1800000000000",
        skip_overlap: false,
        claim_ttl_s: 60,
        id: &id,
        envelope: &envelope,
    };
    let first = env.store.schedule_fire(&tick).await.expect("fire");
    assert!(matches!(&first, Fired::Fired(j) if *j == id), "{first:?}");
    // The reply was lost; the scheduler sends the same call again.
    let again = env.store.schedule_fire(&tick).await.expect("fire again");
    assert!(
        matches!(&again, Fired::Fired(j) if *j == id),
        "a resent decision found its own claim and called it someone else's: {again:?}"
    );
    assert_eq!(
        env.store.stats("t_tick").await.expect("stats").pending,
        1,
        "one job for the tick"
    );
    env.cleanup().await;
}

/// A queue's `max_in_flight` caps the jobs leased at once, whichever process asks: the
/// leases are the permits. A settlement that frees a permit while jobs wait publishes a
/// wake-up, so processes the cap held back fetch again without polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_caps_leases_across_fetchers_and_a_freed_permit_wakes_them() {
    use culm_worker::store::{AckBatch, AckKind};
    use futures::StreamExt;
    use std::{sync::Arc, time::Duration};
    let env = TestEnv::new(|c| {
        let mut q = queue("third_party", 10, 5_000, 3);
        q.max_in_flight = Some(3);
        c.queues.insert("t_cap".into(), q);
    })
    .await;
    let reqs = (0..10)
        .map(|_| culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({})).queue("t_cap"))
        .collect();
    env.store.enqueue(reqs).await.expect("enqueue");
    let queue_name: Arc<str> = Arc::from("t_cap");
    let lease = Duration::from_secs(60);
    // One process asks for ten and gets three; a second one gets none.
    let first = env.store.fetch(&queue_name, 10, lease).await.expect("fetch");
    assert_eq!(first.jobs.len(), 3, "three permits");
    let second = env.store.fetch(&queue_name, 10, lease).await.expect("fetch");
    assert!(second.jobs.is_empty() && second.full, "the cap is reached: {second:?}");
    let stats = env.store.stats("t_cap").await.expect("stats");
    assert_eq!((stats.running, stats.pending, stats.max_in_flight), (3, 7, Some(3)));

    let client = redis::Client::open(culm_tests::redis_url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(env.store.wake_channel("t_cap"))
        .await
        .expect("subscribe");
    let done = culm_tests::ack(&first.jobs[0], AckKind::Done, "");
    let applied = env.store.ack("t_cap", &AckBatch::first(), &[done]).await.expect("ack");
    assert_eq!(applied, vec![true]);
    let mut messages = pubsub.on_message();
    tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("a freed permit publishes a wake-up")
        .expect("message");
    let third = env.store.fetch(&queue_name, 10, lease).await.expect("fetch");
    assert_eq!(third.jobs.len(), 1, "one permit came back");
    env.cleanup().await;
}

/// Uniqueness: while a job holding a key is pending, scheduled or running, enqueueing
/// another with the key returns the first job's id; once it is done (or dead) the key is
/// free. Without a key, the job type and payload are the key (object key order aside).
/// An idempotency key on a request that hit a unique job names that job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_job_is_returned_while_live_and_its_key_frees_when_it_finishes() {
    use culm_core::EnqueueRequest;
    use culm_worker::store::{Ack, AckBatch, AckKind};
    use serde_json::json;
    use std::{sync::Arc, time::Duration};
    let env = TestEnv::new(|c| {
        c.queues.insert("t_unique".into(), queue("batch", 10, 5_000, 3));
    })
    .await;
    let req = |ms: u64| EnqueueRequest::raw("platform.sleep", json!({"ms": ms})).queue("t_unique");
    let first = env.enqueue(req(1).unique_key("acct-1")).await;
    assert!(first.created);
    let again = env.enqueue(req(2).unique_key("acct-1")).await;
    assert_eq!((again.id.as_str(), again.created), (first.id.as_str(), false));
    let other_key = env.enqueue(req(1).unique_key("acct-2")).await;
    assert!(other_key.created);

    // Running: still held.
    let queue_name: Arc<str> = Arc::from("t_unique");
    let f = env
        .store
        .fetch(&queue_name, 10, Duration::from_secs(30))
        .await
        .expect("fetch");
    let held = f.jobs.iter().find(|d| d.id == first.id).expect("first is running");
    assert_eq!(env.enqueue(req(3).unique_key("acct-1")).await.id, first.id);
    // An idempotency key sent with a request that resolved to the live job names it.
    let idem = env
        .enqueue(req(3).unique_key("acct-1").idempotency_key("order-9"))
        .await;
    assert_eq!((idem.id.as_str(), idem.created), (first.id.as_str(), false));
    assert_eq!(env.enqueue(req(4).idempotency_key("order-9")).await.id, first.id);

    // Done: the key is free again.
    let done = Ack {
        id: held.id.clone(),
        token: held.token,
        kind: AckKind::Done,
        error: String::new(),
        expired_only: false,
        finished: None,
        batch: None,
    };
    assert_eq!(
        env.store
            .ack("t_unique", &AckBatch::first(), &[done])
            .await
            .expect("ack"),
        vec![true]
    );
    let after = env.enqueue(req(5).unique_key("acct-1")).await;
    assert!(after.created && after.id != first.id, "{after:?}");

    // Dead: free as well.
    let d = f.jobs.iter().find(|d| d.id == other_key.id).expect("other is running");
    let dead = culm_tests::ack(d, AckKind::Dead, "gave up");
    assert_eq!(
        env.store
            .ack("t_unique", &AckBatch::first(), &[dead])
            .await
            .expect("ack"),
        vec![true]
    );
    assert!(env.enqueue(req(1).unique_key("acct-2")).await.created);

    // By payload: equal payloads (keys in any order) are one job; another payload is not.
    let by_payload = |payload: serde_json::Value| {
        EnqueueRequest::raw("platform.record", payload)
            .queue("t_unique")
            .unique_for(Duration::from_secs(3600))
    };
    let a = env.enqueue(by_payload(json!({"set": "s", "tag": "t"}))).await;
    let b = env.enqueue(by_payload(json!({"tag": "t", "set": "s"}))).await;
    let c = env.enqueue(by_payload(json!({"set": "s", "tag": "u"}))).await;
    assert_eq!((b.id.as_str(), b.created), (a.id.as_str(), false));
    assert!(c.created);

    let bad = env
        .store
        .enqueue(vec![req(1).unique_key("has space")])
        .await
        .expect_err("refused");
    assert!(bad.to_string().contains("unique_key"), "{bad}");
    env.cleanup().await;
}

/// The two structures every run reads and writes field by field stay in Redis's hashed
/// encodings (`attempts` a hashtable, `leases` a skiplist) however few jobs are running,
/// and the pins that keep them so are invisible: not counted as running, not listed, not
/// a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_and_leases_keep_their_hashed_encodings_and_the_pins_stay_invisible() {
    use culm_worker::store::{AckBatch, AckKind, JobState, ListJobs};
    use std::{sync::Arc, time::Duration};
    let env = TestEnv::new(|c| {
        c.queues.insert("t_pin".into(), queue("batch", 4, 5_000, 3));
    })
    .await;
    let job = env
        .enqueue(culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({})).queue("t_pin"))
        .await;
    let q: Arc<str> = Arc::from("t_pin");
    let fetched = env.store.fetch(&q, 4, Duration::from_secs(60)).await.expect("fetch");
    assert_eq!(fetched.jobs.len(), 1);
    let keys = env.store.keys("t_pin");
    let c = env.store.connection();
    let encoding = |key: String| {
        let mut c = c.clone();
        async move {
            let e: String = redis::cmd("OBJECT")
                .arg("ENCODING")
                .arg(&key)
                .query_async(&mut c)
                .await
                .expect("OBJECT ENCODING");
            e
        }
    };
    assert_eq!(
        encoding(keys.attempts()).await,
        "hashtable",
        "one running job, yet no listpack"
    );
    assert_eq!(encoding(keys.leases()).await, "skiplist");

    let running = |cursor| ListJobs {
        queue: "t_pin",
        state: JobState::Running,
        job: None,
        limit: 10,
        cursor,
    };
    let page = env.store.list_jobs(&running(None)).await.expect("list");
    let listed: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed, [job.id.as_str()]);
    assert!(page.next_cursor.is_none(), "nothing listed after the one running job");
    assert_eq!(env.store.stats("t_pin").await.expect("stats").running, 1);

    let done = culm_tests::ack(&fetched.jobs[0], AckKind::Done, "");
    assert_eq!(
        env.store.ack("t_pin", &AckBatch::first(), &[done]).await.expect("ack"),
        vec![true]
    );
    assert_eq!(env.store.stats("t_pin").await.expect("stats").running, 0);
    assert!(env.store.list_jobs(&running(None)).await.expect("list").jobs.is_empty());
    // With nothing running the pins keep the encodings for the next run.
    assert_eq!(encoding(keys.attempts()).await, "hashtable");
    assert_eq!(encoding(keys.leases()).await, "skiplist");
    let reaped = env
        .store
        .reap("t_pin", Duration::from_secs(60), Duration::from_secs(30))
        .await
        .expect("reap");
    assert!(reaped.expired.is_empty(), "the pin is no expired lease");
    env.cleanup().await;
}
