//! The scheduler against the real Redis: the shipped catalog validates, several replicas
//! fire each tick exactly once, overlap and missed-tick policies, pause/resume/trigger,
//! and the `culm schedules` / `culm check` commands.
use culm_tests::{KillOnDrop, TestEnv, culm_bin, eventually, next_event, queue};
use culm_worker::{
    config::Config,
    scheduler::{
        Scheduler, SchedulerError, TickOutcome,
        catalog::{self, Catalog, CatalogError},
    },
    store::{Envelope, Routing, ScheduleRecord, Store},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

const WAIT: Duration = Duration::from_secs(30);

/// A catalog from TOML text, validated against the env's registry and routing.
fn catalog(env: &TestEnv, toml: &str) -> Catalog {
    Catalog::from_sources(
        &[("schedules/test.toml".into(), toml.into())],
        env.store.registry(),
        &Routing::from_config(&env.config, env.store.registry()),
    )
    .expect("test catalog is valid")
}

/// A replica: its own connection to Redis and its own scheduler over `toml`.
async fn replica(env: &TestEnv, toml: &str) -> Scheduler {
    let store = Store::connect(&env.config, env.store.registry().clone())
        .await
        .expect("connect");
    Scheduler::new(store, catalog(env, toml), &env.config)
}

/// Ticks (ms) of the jobs schedule `name` enqueued in `queue`, from their claim keys.
async fn fired_ticks(env: &TestEnv, queue: &str, name: &str) -> Vec<i64> {
    let mut c = env.store.connection();
    let bodies: Vec<String> = redis::cmd("HVALS")
        .arg(env.store.keys(queue).jobs())
        .query_async(&mut c)
        .await
        .expect("HVALS");
    let prefix = format!("schedule:{name}:");
    let mut ticks: Vec<i64> = bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<Envelope>(b).ok())
        .filter_map(|e| e.idempotency_key)
        .filter_map(|k| k.strip_prefix(&prefix).and_then(|t| t.parse().ok()))
        .collect();
    ticks.sort();
    ticks
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CardLoad {
    account: String,
}

impl culm_core::Job for CardLoad {
    const NAME: &'static str = "test.card_load";
    const QUEUE: &'static str = "galileo";
    const TIERS: &'static [culm_core::Tier] = &[culm_core::Tier::Critical];
    async fn run(self, _ctx: culm_core::JobContext) -> Result<culm_core::Outcome, culm_core::JobError> {
        Ok(culm_core::Outcome::done())
    }
}

#[test]
fn a_banking_schedule_routed_outside_critical_is_named() {
    let mut registry = culm_core::Registry::new();
    registry.register::<CardLoad>().expect("register");
    let routing = Routing::from_config(&Config::defaults().expect("defaults"), &registry);
    let toml = r#"
[[schedule]]
name = "galileo.reconcile"
cron = "0 0 6 * * *"
job = "test.card_load"
payload = { account = "a1" }
queue = "unit21"
description = "misrouted, as in the seeds"
"#;
    let Err(CatalogError::Invalid(p)) =
        Catalog::from_sources(&[("schedules/galileo.toml".into(), toml.into())], &registry, &routing)
    else {
        panic!("a banking job outside the critical tier is refused")
    };
    let line = p[0].to_string();
    assert!(
        line.contains("schedules/galileo.toml")
            && line.contains("galileo.reconcile")
            && line.contains("key `queue`")
            && line.contains("unit21")
            && line.contains("critical"),
        "{line}"
    );
    // Routed by its declaration, it is valid.
    let ok = toml.replace("queue = \"unit21\"\n", "");
    assert!(Catalog::from_sources(&[("schedules/galileo.toml".into(), ok)], &registry, &routing).is_ok());
}

#[test]
fn every_shipped_schedule_parses_and_routes() {
    let registry = culm_jobs::registry().expect("registry");
    let config = Config::defaults().expect("defaults");
    let routing = Routing::from_config(&config, &registry);
    let catalog = match Catalog::load("", &registry, &routing) {
        Ok(c) => c,
        Err(CatalogError::Invalid(p)) => panic!(
            "the shipped catalog has problems:\n{}",
            p.iter().map(|p| format!("  - {p}\n")).collect::<String>()
        ),
        Err(e) => panic!("{e}"),
    };
    assert!(!catalog.is_empty());
    let now = chrono::Utc::now();
    for s in catalog.iter() {
        assert_eq!(
            culm_worker::scheduler::next_fire_times(s, now, 3).len(),
            3,
            "{} fires",
            s.name
        );
        let spec = registry.get(&s.job).expect("job type registered");
        assert!(spec.validate(&s.payload).is_ok(), "{} payload", s.name);
        assert!(routing.queues.contains_key(&s.queue), "{} queue", s.name);
    }
    // The binary embeds exactly the files in schedules/ (the build script is current).
    let on_disk: BTreeSet<String> = std::fs::read_dir(culm_tests::workspace_root().join("schedules"))
        .expect("schedules/ exists")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .map(|n| format!("schedules/{n}"))
        .collect();
    let embedded: BTreeSet<String> = catalog::embedded().into_iter().map(|(n, _)| n).collect();
    assert_eq!(embedded, on_disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fire_each_tick_exactly_once() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_sched".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let toml = r#"
[[schedule]]
name = "t.every_second"
cron = "* * * * * *"
job = "platform.noop"
queue = "t_sched"
overlap = "allow"
description = "ticks every second"
"#;
    let replicas = [
        replica(&env, toml).await,
        replica(&env, toml).await,
        replica(&env, toml).await,
    ];
    let mut events: Vec<_> = replicas.iter().map(Scheduler::events).collect();
    // Two replicas first; the third starts late, while ticks are being fired.
    let mut running: Vec<_> = replicas[..2].iter().map(Scheduler::start).collect();
    eventually(WAIT, "three ticks fired", || async {
        (fired_ticks(&env, "t_sched", "t.every_second").await.len() >= 3).then_some(())
    })
    .await;
    running.push(replicas[2].start());
    eventually(WAIT, "six ticks fired", || async {
        (fired_ticks(&env, "t_sched", "t.every_second").await.len() >= 6).then_some(())
    })
    .await;
    for r in running {
        r.shutdown().await;
    }

    let ticks = fired_ticks(&env, "t_sched", "t.every_second").await;
    let distinct: BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick was enqueued twice: {ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 1000),
        "every tick between the first and the last was enqueued: {ticks:?}"
    );
    // Every replica saw the ticks; for each tick exactly one of them fired it.
    let mut fired_by: BTreeMap<i64, usize> = BTreeMap::new();
    let mut decided: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, rx) in events.iter_mut().enumerate() {
        while let Ok(e) = rx.try_recv() {
            if let (Some(t), TickOutcome::Fired { .. }) = (e.tick_ms, &e.outcome) {
                *fired_by.entry(t).or_default() += 1;
            }
            *decided.entry(i).or_default() += 1;
        }
    }
    assert!(fired_by.values().all(|n| *n == 1), "{fired_by:?}");
    assert_eq!(fired_by.keys().copied().collect::<Vec<_>>(), ticks);
    // The history has each fired tick once as `fired`: the other replicas' view of it
    // (`claimed_elsewhere`) never replaced the decision.
    let history = env.store.schedule_ticks("t.every_second").await.expect("ticks");
    let fired: Vec<i64> = history
        .iter()
        .filter(|t| t.outcome == "fired")
        .filter_map(|t| t.tick)
        .rev()
        .collect();
    assert_eq!(fired, ticks, "{history:?}");
    assert_eq!(decided.len(), 3, "all three replicas handled ticks: {decided:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skip_skips_while_the_previous_run_is_unfinished() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_overlap".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let s = replica(
        &env,
        r#"
[[schedule]]
name = "t.slow"
cron = "* * * * * *"
job = "platform.noop"
queue = "t_overlap"
description = "ticks every second; its job waits because no pool runs yet"
"#,
    )
    .await;
    let mut events = s.events();
    let running = s.start();
    let first = next_event(&mut events, WAIT, |e| matches!(e.outcome, TickOutcome::Fired { .. })).await;
    let job = first.outcome.job_id().expect("job id").to_owned();
    // No pool runs the queue: the job stays pending, so the next ticks are skipped.
    let skipped = next_event(&mut events, WAIT, |e| e.outcome != TickOutcome::Stale).await;
    assert_eq!(
        skipped.outcome,
        TickOutcome::SkippedOverlap {
            running_job_id: job.clone()
        }
    );
    assert_eq!(fired_ticks(&env, "t_overlap", "t.slow").await.len(), 1);
    let status = s.get("t.slow").await.expect("status");
    assert_eq!(status.last_fire.expect("fired").job_id, job);

    // Once the run finishes, the schedule fires again.
    let rt = env.runtime();
    let pools = rt.start(&["t_overlap".into()]).expect("pool");
    let next = next_event(&mut events, WAIT, |e| matches!(e.outcome, TickOutcome::Fired { .. })).await;
    assert_ne!(next.outcome.job_id(), Some(job.as_str()));
    running.shutdown().await;
    pools.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_run_once_or_are_skipped_and_late_replicas_never_refire() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_missed".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let toml = r#"
[[schedule]]
name = "t.catch_up"
cron = "* * * * * *"
job = "platform.noop"
queue = "t_missed"
overlap = "allow"
missed = "run_once"
description = "catches up once after downtime"

[[schedule]]
name = "t.forget"
cron = "* * * * * *"
job = "platform.noop"
queue = "t_missed"
overlap = "allow"
description = "forgets ticks missed during downtime"
"#;
    // A first scheduler runs until both schedules fired, then goes away.
    let a = replica(&env, toml).await;
    let mut events = a.events();
    let running = a.start();
    for name in ["t.catch_up", "t.forget"] {
        next_event(&mut events, WAIT, |e| {
            e.schedule == name && e.outcome.job_id().is_some()
        })
        .await;
    }
    running.shutdown().await;
    let before_catch_up = fired_ticks(&env, "t_missed", "t.catch_up").await;
    let before_forget = fired_ticks(&env, "t_missed", "t.forget").await;
    let last = *before_catch_up.iter().chain(&before_forget).max().expect("fired");

    // Downtime: wait until at least two ticks have passed unhandled.
    eventually(WAIT, "two ticks to pass", || async {
        (chrono::Utc::now().timestamp_millis() >= last + 2_500).then_some(())
    })
    .await;

    let b = replica(&env, toml).await;
    let caught = b.catch_up("t.catch_up").await.expect("catch up");
    let Some(TickOutcome::CaughtUp { job_id }) = caught else {
        panic!("run_once fires one catch-up, got {caught:?}")
    };
    assert_eq!(
        b.catch_up("t.forget").await.expect("catch up"),
        Some(TickOutcome::Missed)
    );
    let after_catch_up = fired_ticks(&env, "t_missed", "t.catch_up").await;
    assert_eq!(
        after_catch_up.len(),
        before_catch_up.len() + 1,
        "exactly one catch-up run"
    );
    assert!(
        after_catch_up.last().is_some_and(|t| *t >= last + 2_000),
        "{after_catch_up:?}"
    );
    assert_eq!(fired_ticks(&env, "t_missed", "t.forget").await, before_forget);
    let job = env.store.status(&job_id).await.expect("status").expect("job exists");
    assert_eq!(job.state, culm_worker::store::JobState::Pending);

    // A replica starting later finds nothing missed and fires nothing.
    let c = replica(&env, toml).await;
    assert_eq!(c.catch_up("t.catch_up").await.expect("catch up"), None);
    assert_eq!(c.catch_up("t.forget").await.expect("catch up"), None);
    assert_eq!(fired_ticks(&env, "t_missed", "t.catch_up").await, after_catch_up);

    let list = c.list().await.expect("list");
    let outcome = |n: &str| {
        list.iter()
            .find(|s| s.schedule.name == n)
            .and_then(|s| s.last_outcome.clone())
            .map(|o| o.outcome)
    };
    assert_eq!(outcome("t.catch_up").as_deref(), Some("caught_up"));
    assert_eq!(outcome("t.forget").as_deref(), Some("missed"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_trigger_now() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_pause".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let toml = r#"
[[schedule]]
name = "t.pausable"
cron = "* * * * * *"
job = "platform.noop"
queue = "t_pause"
overlap = "allow"
description = "paused, triggered, resumed"
"#;
    let s = replica(&env, toml).await;
    // Another replica pauses it; this one honours the flag from Redis.
    let admin = replica(&env, toml).await;
    admin.pause("t.pausable").await.expect("pause");
    let mut events = s.events();
    let running = s.start();
    next_event(&mut events, WAIT, |e| e.outcome == TickOutcome::Paused).await;
    assert!(fired_ticks(&env, "t_pause", "t.pausable").await.is_empty());
    assert_eq!(admin.get("t.pausable").await.expect("status").paused, Some(true));

    // Trigger now ignores the pause and the cadence.
    let triggered = admin.trigger("t.pausable").await.expect("trigger");
    let TickOutcome::Triggered { job_id } = triggered else {
        panic!("{triggered:?}")
    };
    assert_eq!(
        env.store.status(&job_id).await.expect("status").expect("exists").queue,
        "t_pause"
    );
    let status = admin.get("t.pausable").await.expect("status");
    assert_eq!(status.last_fire.expect("last fire").job_id, job_id);

    admin.resume("t.pausable").await.expect("resume");
    next_event(&mut events, WAIT, |e| matches!(e.outcome, TickOutcome::Fired { .. })).await;
    assert_eq!(admin.get("t.pausable").await.expect("status").paused, Some(false));
    assert!(matches!(
        admin.trigger("t.nope").await,
        Err(SchedulerError::UnknownSchedule(_))
    ));
    running.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culm_schedules_lists_the_catalog_and_check_names_bad_schedules() {
    let env = TestEnv::new(|_| {}).await;
    let out = std::process::Command::new(culm_bin())
        .args(["schedules", "--json"])
        .env("CULM_REDIS_URL", &env.config.redis.url)
        .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
        .current_dir(culm_tests::workspace_root())
        .output()
        .expect("culm runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON array");
    let registry = Arc::new(culm_jobs::registry().expect("registry"));
    let shipped = Catalog::load("", &registry, &Routing::from_config(&env.config, &registry)).expect("valid");
    assert_eq!(list.len(), shipped.len());
    for s in &list {
        for key in ["name", "cron", "timezone", "job", "queue", "enabled", "next_fire_times"] {
            assert!(s.get(key).is_some(), "missing {key} in {s}");
        }
        assert_eq!(s["next_fire_times"].as_array().map(Vec::len), Some(3));
    }

    let dir = std::env::temp_dir().join(format!("culm-schedules-{}", env.prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("broken.toml"),
        "[[schedule]]\nname = \"x.bad\"\ncron = \"0 0 9 * * 1-5\"\njob = \"platform.noop\"\ndescription = \"x\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(culm_bin())
        .arg("check")
        .env("CULM__SCHEDULER__DIR", &dir)
        .current_dir(culm_tests::workspace_root())
        .output()
        .expect("culm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broken.toml") && stderr.contains("x.bad") && stderr.contains("key `cron`"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culm_scheduler_and_culm_run_fire_schedules_and_stop_on_sigterm() {
    let env = TestEnv::new(|_| {}).await;
    let set = env.key("scheduled");
    let dir = std::env::temp_dir().join(format!("culm-schedules-run-{}", env.prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let toml = format!(
        "[[schedule]]\nname = \"t.child\"\ncron = \"* * * * * *\"\njob = \"platform.record\"\npayload = {{ set = \"{set}\" }}\nqueue = \"platform\"\noverlap = \"allow\"\ndescription = \"records each run\"\n"
    );
    std::fs::write(dir.join("child.toml"), &toml).expect("write");
    let spawn = |args: &[&str]| {
        std::process::Command::new(culm_bin())
            .current_dir(culm_tests::workspace_root())
            .args(args)
            .env("CULM_REDIS_URL", &env.config.redis.url)
            .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
            .env("CULM__SCHEDULER__DIR", &dir)
            .env("CULM_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("culm starts")
    };
    let sigterm = |guard: KillOnDrop| {
        let exit = guard.sigterm();
        assert!(exit.success(), "culm exits 0 after SIGTERM: {exit:?}");
    };

    // `culm scheduler` fires without running pools: jobs wait in the queue.
    let scheduler = KillOnDrop(Some(spawn(&["scheduler"])));
    eventually(WAIT, "the scheduler process to fire twice", || async {
        (fired_ticks(&env, "platform", "t.child").await.len() >= 2).then_some(())
    })
    .await;
    sigterm(scheduler);
    assert!(env.members(&set).await.is_empty(), "no pool ran");

    // `culm run` runs the pools and the scheduler: the waiting jobs and new ticks run.
    let run = KillOnDrop(Some(spawn(&["run", "--queues", "platform"])));
    let fired_before = fired_ticks(&env, "platform", "t.child").await.len();
    eventually(WAIT, "new ticks fired and run", || async {
        let members = env.members(&set).await.len();
        (members > fired_before).then_some(())
    })
    .await;
    sigterm(run);
    std::fs::remove_dir_all(dir).ok();
    env.cleanup().await;
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncCatalog {}

impl culm_core::Job for SyncCatalog {
    const NAME: &'static str = "bamboo.sync_catalog";
    const QUEUE: &'static str = "bamboo_sync";
    const TIERS: &'static [culm_core::Tier] = &[culm_core::Tier::ThirdParty];
    async fn run(self, _ctx: culm_core::JobContext) -> Result<culm_core::Outcome, culm_core::JobError> {
        Ok(culm_core::Outcome::done())
    }
}

#[test]
fn the_readme_schedule_example_is_valid() {
    let readme = std::fs::read_to_string(culm_tests::workspace_root().join("README.md")).expect("README");
    let section = readme.split("## Schedules").nth(1).expect("a Schedules section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a TOML example");
    let mut registry = culm_core::Registry::new();
    registry.register::<SyncCatalog>().expect("register");
    let routing = Routing::from_config(&Config::defaults().expect("defaults"), &registry);
    let catalog = Catalog::from_sources(&[("README.md".into(), example.into())], &registry, &routing)
        .unwrap_or_else(|e| panic!("{e}"));
    let s = catalog.get("bamboo.catalog_sync").expect("the example schedule");
    assert_eq!(
        (s.queue.as_str(), s.timezone.as_str()),
        ("bamboo_sync", "America/New_York")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_is_decided_once_and_a_lagging_replica_cannot_fire_an_old_one() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_claim".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let toml = r#"
[[schedule]]
name = "t.claimed"
cron = "0 0 * * * *"
job = "platform.noop"
queue = "t_claim"
overlap = "allow"
description = "ticks driven by hand"
"#;
    let (a, b) = (replica(&env, toml).await, replica(&env, toml).await);
    let t = 1_800_000_000_000;
    let fired = a.fire_tick("t.claimed", t).await.expect("fire");
    assert!(matches!(fired, TickOutcome::Fired { .. }), "{fired:?}");
    assert_eq!(
        b.fire_tick("t.claimed", t).await.expect("fire"),
        TickOutcome::ClaimedElsewhere
    );
    // Even once the claim has expired, an older tick is refused: ticks go forward.
    let mut c = env.store.connection();
    let _: i64 = redis::cmd("DEL")
        .arg(env.store.keys("t_claim").tick(&format!("t.claimed:{t}")))
        .query_async(&mut c)
        .await
        .expect("DEL");
    assert_eq!(b.fire_tick("t.claimed", t).await.expect("fire"), TickOutcome::Stale);
    assert_eq!(
        b.fire_tick("t.claimed", t - 3_600_000).await.expect("fire"),
        TickOutcome::Stale
    );
    let next = b.fire_tick("t.claimed", t + 3_600_000).await.expect("fire");
    assert!(matches!(next, TickOutcome::Fired { .. }), "{next:?}");
    assert_eq!(fired_ticks(&env, "t_claim", "t.claimed").await, vec![t, t + 3_600_000]);
    let status = a.get("t.claimed").await.expect("status");
    assert_eq!(status.last_fire.expect("fired").job_id, next.job_id().expect("id"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_idempotency_key_cannot_claim_a_tick() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_squat".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let toml = r#"
[[schedule]]
name = "t.squatted"
cron = "0 0 * * * *"
job = "platform.noop"
queue = "t_squat"
overlap = "allow"
description = "ticks driven by hand"
"#;
    let s = replica(&env, toml).await;
    let t = 1_800_000_000_000;
    // A caller with the enqueue scope guesses the next tick's claim and takes it first.
    env.enqueue(
        culm_core::EnqueueRequest::raw("platform.noop", serde_json::json!({}))
            .queue("t_squat")
            .idempotency_key(format!("schedule:t.squatted:{t}")),
    )
    .await;
    let fired = s.fire_tick("t.squatted", t).await.expect("fire");
    assert!(
        matches!(fired, TickOutcome::Fired { .. }),
        "a caller's job made the tick look claimed: {fired:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_of_a_schedule_removed_from_the_catalog_is_deleted_at_start() {
    let env = TestEnv::new(|c| {
        c.queues.insert("t_gone".into(), queue("batch", 1, 5_000, 1));
    })
    .await;
    let entry = |name: &str| {
        format!(
            "[[schedule]]\nname = \"{name}\"\ncron = \"0 0 3 * * *\"\njob = \"platform.noop\"\nqueue = \"t_gone\"\noverlap = \"skip\"\ndescription = \"{name}\"\n"
        )
    };
    let both = format!("{}{}", entry("t.kept"), entry("t.removed"));
    let before = replica(&env, &both).await;
    for name in ["t.kept", "t.removed"] {
        before.trigger(name).await.expect("trigger");
        before.pause(name).await.expect("pause");
    }
    let sk = env.store.scheduler_keys();
    let mut c = env.store.connection();
    let exists = |key: String| {
        let mut c = c.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<bool>(&mut c)
                .await
                .expect("EXISTS")
        }
    };
    let paused = |name: &'static str| {
        let mut c = c.clone();
        let key = sk.paused();
        async move {
            redis::cmd("HEXISTS")
                .arg(key)
                .arg(name)
                .query_async::<bool>(&mut c)
                .await
                .expect("HEXISTS")
        }
    };
    let qk = env.store.keys("t_gone");
    assert!(exists(sk.state("t.removed")).await && paused("t.removed").await);
    assert!(
        exists(sk.ticks("t.removed")).await,
        "the trigger is in the tick history"
    );
    assert!(exists(qk.schedule("t.removed")).await);

    // The next deployment's catalog no longer has `t.removed`.
    let after = replica(&env, &entry("t.kept")).await;
    let running = after.start();
    eventually(WAIT, "the removed schedule's state to be deleted", || {
        let (exists, paused, sk, qk) = (&exists, &paused, &sk, &qk);
        async move {
            let gone = !exists(sk.state("t.removed")).await
                && !exists(sk.ticks("t.removed")).await
                && !paused("t.removed").await
                && !exists(qk.schedule("t.removed")).await;
            gone.then_some(())
        }
    })
    .await;
    running.shutdown().await;
    assert!(
        exists(sk.state("t.kept")).await && paused("t.kept").await && exists(qk.schedule("t.kept")).await,
        "a schedule still in the catalog keeps its state"
    );
    let registered: Vec<String> = redis::cmd("HKEYS")
        .arg(sk.names())
        .query_async(&mut c)
        .await
        .expect("HKEYS");
    assert_eq!(registered, vec!["t.kept".to_owned()]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_history_keeps_one_entry_per_tick_with_the_best_account_and_is_bounded() {
    let env = TestEnv::new(|_| {}).await;
    let record =
        |tick: Option<i64>, outcome: &'static str, seen: &'static str, strong: bool, job: Option<&'static str>| {
            let store = env.store.clone();
            async move {
                store
                    .schedule_record(&ScheduleRecord {
                        schedule: "t.hist",
                        queue: "platform",
                        tick_ms: tick,
                        now_ms: culm_core::now_ms(),
                        outcome,
                        strong,
                        job_id: job,
                        seen,
                        ..ScheduleRecord::default()
                    })
                    .await
                    .expect("record");
            }
        };
    let history = || async {
        env.store
            .schedule_ticks("t.hist")
            .await
            .expect("ticks")
            .into_iter()
            .map(|t| (t.tick, t.outcome, t.job))
            .collect::<Vec<_>>()
    };
    let t = 1_800_000_000_000;
    // Another replica's view first; then the decision replaces it; a late view changes nothing.
    record(Some(t), "", "claimed_elsewhere", true, None).await;
    assert_eq!(history().await, [(Some(t), "claimed_elsewhere".into(), String::new())]);
    record(Some(t), "fired", "fired", true, Some("J1")).await;
    record(Some(t), "", "claimed_elsewhere", true, None).await;
    // An observation (paused, missed) never replaces a decision for the same tick.
    record(Some(t), "paused", "paused", false, None).await;
    assert_eq!(history().await, [(Some(t), "fired".into(), "J1".into())]);
    record(Some(t + 1000), "paused", "paused", false, None).await;
    record(None, "triggered", "triggered", true, Some("J2")).await;
    assert_eq!(
        history().await,
        [
            (None, "triggered".into(), "J2".into()),
            (Some(t + 1000), "paused".into(), String::new()),
            (Some(t), "fired".into(), "J1".into()),
        ]
    );
    for i in 2..70 {
        record(Some(t + i * 1000), "fired", "fired", true, None).await;
    }
    let h = history().await;
    assert_eq!(h.len(), culm_worker::store::TICK_HISTORY);
    assert_eq!(h[0].0, Some(t + 69_000), "newest first");
    env.cleanup().await;
}
