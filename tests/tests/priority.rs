//! Priority within a queue against the real Redis: a fetch takes high, then normal, then
//! low, FIFO within each level; delayed runs, retries, hand-backs and re-drives keep
//! their level; a high job overtakes a backlog of low ones in a running pool.
use culm_core::{EnqueueRequest, Priority};
use culm_tests::{TestEnv, is, next_event, queue};
use culm_worker::store::{Ack, AckBatch, AckKind, Delivery, JobState};
use serde_json::json;
use std::{sync::Arc, time::Duration};

const WAIT: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

fn noop(p: Option<Priority>) -> EnqueueRequest {
    let r = EnqueueRequest::raw("platform.noop", json!({})).queue("t_prio");
    match p {
        Some(p) => r.priority(p),
        None => r,
    }
}

async fn env() -> TestEnv {
    TestEnv::new(|c| {
        c.queues.insert("t_prio".into(), queue("critical", 4, 5_000, 3));
    })
    .await
}

async fn fetch(env: &TestEnv, n: usize) -> Vec<Delivery> {
    let q: Arc<str> = Arc::from("t_prio");
    env.store.fetch(&q, n, LEASE).await.expect("fetch").jobs
}

fn ids(d: &[Delivery]) -> Vec<String> {
    d.iter().map(|d| d.id.clone()).collect()
}

async fn enqueue(env: &TestEnv, p: Option<Priority>) -> String {
    env.enqueue(noop(p)).await.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_takes_higher_priorities_first_and_fifo_within_each() {
    let env = env().await;
    let low1 = enqueue(&env, Some(Priority::Low)).await;
    let norm1 = enqueue(&env, None).await;
    let low2 = enqueue(&env, Some(Priority::Low)).await;
    let high1 = enqueue(&env, Some(Priority::High)).await;
    let norm2 = enqueue(&env, Some(Priority::Normal)).await;
    let high2 = enqueue(&env, Some(Priority::High)).await;

    let stats = env.store.stats("t_prio").await.expect("stats");
    assert_eq!(stats.pending, 6);
    let by = stats.pending_by_priority;
    assert_eq!((by.high, by.normal, by.low), (2, 2, 2), "{stats:?}");
    let status = env.store.status(&low1).await.expect("status").expect("known");
    assert_eq!(status.priority, Some(Priority::Low));

    // The pending listing shows them in the order a fetch takes them.
    let page = env
        .store
        .list_jobs(&culm_worker::store::ListJobs {
            queue: "t_prio",
            state: JobState::Pending,
            job: None,
            limit: 4,
            cursor: None,
        })
        .await
        .expect("list");
    let listed: Vec<String> = page.jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(listed, [high1.as_str(), high2.as_str(), norm1.as_str(), norm2.as_str()]);
    let rest = env
        .store
        .list_jobs(&culm_worker::store::ListJobs {
            queue: "t_prio",
            state: JobState::Pending,
            job: None,
            limit: 4,
            cursor: page.next_cursor,
        })
        .await
        .expect("list");
    let listed: Vec<String> = rest.jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(listed, [low1.as_str(), low2.as_str()]);

    // One fetch spanning two levels, then the rest.
    let first = fetch(&env, 3).await;
    assert_eq!(ids(&first), [high1.as_str(), high2.as_str(), norm1.as_str()]);
    assert_eq!(first[0].envelope.priority, Priority::High);
    let second = fetch(&env, 10).await;
    assert_eq!(ids(&second), [norm2.as_str(), low1.as_str(), low2.as_str()]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_runs_retries_hand_backs_and_re_drives_keep_their_priority() {
    let env = env().await;
    // A delayed low job and a delayed high job fall due together behind a normal one.
    let normal = enqueue(&env, None).await;
    let soon = culm_core::now_ms() + 200;
    let low_later = env.enqueue(noop(Some(Priority::Low)).at_ms(soon)).await.id;
    let high_later = env.enqueue(noop(Some(Priority::High)).at_ms(soon)).await.id;
    culm_tests::eventually(WAIT, "the delayed jobs to fall due", || async {
        (culm_core::now_ms() > soon + 50).then_some(())
    })
    .await;
    let got = fetch(&env, 3).await;
    assert_eq!(
        ids(&got),
        [high_later.as_str(), normal.as_str(), low_later.as_str()],
        "promoted jobs joined their own level"
    );

    // A retry due now, a deferral due now and a hand-back go back to their own level:
    // with a new normal job waiting, the high one is still first and the low one last.
    let fresh = enqueue(&env, None).await;
    let by_id = |id: &str| got.iter().find(|d| d.id == id).expect("fetched").clone();
    let (h, l, n) = (by_id(&high_later), by_id(&low_later), by_id(&normal));
    let acks = vec![
        Ack {
            id: h.id.clone(),
            token: h.token,
            kind: AckKind::Retry { at: 0 },
            error: "boom".into(),
            expired_only: false,
            finished: None,
            batch: None,
        },
        Ack {
            id: l.id.clone(),
            token: l.token,
            kind: AckKind::Defer { at: 0 },
            error: "later".into(),
            expired_only: false,
            finished: None,
            batch: None,
        },
    ];
    let applied = env.store.ack("t_prio", &AckBatch::first(), &acks).await.expect("ack");
    assert_eq!(applied, [true, true]);
    assert_eq!(
        env.store
            .release("t_prio", &[(n.id.clone(), n.token)])
            .await
            .expect("release"),
        1
    );
    let again = fetch(&env, 4).await;
    assert_eq!(
        ids(&again),
        [high_later.as_str(), normal.as_str(), fresh.as_str(), low_later.as_str()]
    );

    // A dead high job re-driven from the dead letters is high again.
    let h2 = again[0].clone();
    let dead = Ack {
        id: h2.id.clone(),
        token: h2.token,
        kind: AckKind::Dead,
        error: "gave up".into(),
        expired_only: false,
        finished: None,
        batch: None,
    };
    env.store
        .ack("t_prio", &AckBatch::first(), &[dead])
        .await
        .expect("ack dead");
    let other = enqueue(&env, None).await;
    assert_eq!(
        env.store
            .dead_retry("t_prio", std::slice::from_ref(&h2.id))
            .await
            .expect("re-drive"),
        1
    );
    assert_eq!(ids(&fetch(&env, 2).await), [high_later.as_str(), other.as_str()]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_job_starts_before_a_backlog_of_low_jobs_enqueued_before_it() {
    const BACKLOG: usize = 10_000;
    const CONCURRENCY: u32 = 2;
    let env = TestEnv::new(|c| {
        c.queues
            .insert("t_prio".into(), queue("critical", CONCURRENCY, 5_000, 3));
    })
    .await;
    let low: Vec<EnqueueRequest> = (0..BACKLOG)
        .map(|_| {
            EnqueueRequest::raw("platform.sleep", json!({"ms": 1}))
                .queue("t_prio")
                .priority(Priority::Low)
        })
        .collect();
    env.store.enqueue(low).await.expect("backlog");
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["t_prio".into()]).expect("start");
    // The pool is working through the backlog.
    next_event(&mut events, WAIT, |e| is("done", e)).await;
    let enqueued_at_us = culm_core::now_ms() * 1000;
    let high = env
        .enqueue(
            EnqueueRequest::raw("platform.sleep", json!({"ms": 1}))
                .queue("t_prio")
                .priority(Priority::High),
        )
        .await
        .id;
    let mut low_events = Vec::new();
    let high_event = loop {
        let e = next_event(&mut events, WAIT, |e| is("done", e)).await;
        if e.id == high {
            break e;
        }
        low_events.push(e);
    };
    // Every low job that started before the high one finishes within a few more
    // completions (FIFO, two at a time); collect them.
    for _ in 0..(4 * CONCURRENCY) {
        low_events.push(next_event(&mut events, WAIT, |e| is("done", e)).await);
    }
    let overtaken = low_events
        .iter()
        .filter(|e| e.started_at_us > enqueued_at_us && e.started_at_us < high_event.started_at_us)
        .count();
    // Only low jobs a worker had leased already when the high one arrived (at most one
    // per slot) may start after it was enqueued and before it.
    assert!(
        overtaken <= CONCURRENCY as usize,
        "{overtaken} low jobs waiting when the high one arrived started before it"
    );
    let left = env.store.stats("t_prio").await.expect("stats").pending_by_priority;
    assert!(
        left.low > 1_000,
        "the backlog was still there when the high job ran: {left:?}"
    );
    running.shutdown().await;
    env.cleanup().await;
}
