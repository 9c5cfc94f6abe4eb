//! culm on a real three-node Redis Cluster: the machine's `redis-server` on free loopback
//! ports in a temporary directory, torn down when the test ends. Jobs in several queues
//! whose hash slots live on different nodes all finish exactly once; delayed jobs,
//! dead letters, stats and the scheduler work; idle workers are woken by pub/sub across
//! nodes (the polling fallback is set too long to finish the test).
use culm_core::EnqueueRequest;
use culm_tests::{TestEnv, eventually, is, next_event, queue};
use culm_worker::{
    config::RedisMode,
    scheduler::{ScheduleEvent, Scheduler, TickOutcome, catalog::Catalog},
    store::{Routing, Store},
};
use redis::Value;
use serde_json::json;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

const WAIT: Duration = Duration::from_secs(30);
const NODES: usize = 3;

/// A throwaway Redis Cluster of `NODES` masters on loopback.
struct RedisCluster {
    children: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that is free now, with its cluster bus port (+10000) free too.
fn free_port_pair(taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        let port = addr.port();
        if port > 55_000 || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port pair (port, port+10000) for a Redis Cluster node");
}

async fn ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await.is_ok(),
        Err(_) => false,
    }
}

async fn info(port: u16, cmd: &str, sub: &str) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("node connection");
    redis::cmd(cmd)
        .arg(sub)
        .query_async(&mut c)
        .await
        .expect("CLUSTER INFO")
}

impl RedisCluster {
    /// Starts the nodes (retrying on fresh ports if one was taken meanwhile) and joins
    /// them with `redis-cli --cluster create`.
    async fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("culm-cluster-{}", ulid::Ulid::new().to_string().to_lowercase()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cluster = RedisCluster {
            children: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        while cluster.ports.len() < NODES {
            let mut started = false;
            for _ in 0..5 {
                let port = free_port_pair(&cluster.ports);
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .arg("--dir")
                    .arg(&cluster.dir)
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--logfile")
                    .arg(cluster.dir.join(format!("{port}.log")))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed (the machine's Redis runs the tests)");
                cluster.children.push(child);
                let up = async {
                    while !ping(port).await {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                if tokio::time::timeout(Duration::from_secs(5), up).await.is_ok() {
                    cluster.ports.push(port);
                    started = true;
                    break;
                }
                // Lost a race for the port: stop this node, try another port.
                if let Some(mut c) = cluster.children.pop() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            assert!(
                started,
                "could not start a Redis Cluster node; logs in {:?}",
                cluster.dir
            );
        }
        let addrs: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for &port in &cluster.ports {
            eventually(WAIT, "cluster_state:ok on every node", || async move {
                info(port, "CLUSTER", "INFO")
                    .await
                    .contains("cluster_state:ok")
                    .then_some(())
            })
            .await;
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// Which node (port) serves each slot, from `CLUSTER SLOTS`.
    async fn slot_owners(&self) -> Vec<(u16, u16, u16)> {
        let client = redis::Client::open(self.urls()[0].as_str()).expect("url");
        let mut c = client.get_multiplexed_async_connection().await.expect("node");
        let v: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .expect("SLOTS");
        let int = |v: &Value| match v {
            Value::Int(i) => *i,
            _ => -1,
        };
        let Value::Array(ranges) = v else {
            panic!("CLUSTER SLOTS: {v:?}")
        };
        ranges
            .iter()
            .map(|r| {
                let Value::Array(r) = r else { panic!("{r:?}") };
                let Value::Array(master) = &r[2] else { panic!("{r:?}") };
                (int(&r[0]) as u16, int(&r[1]) as u16, int(&master[1]) as u16)
            })
            .collect()
    }
}

/// Redis Cluster's key slot: CRC16 (XMODEM) of the hash tag, mod 16384.
fn key_slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b
        .iter()
        .position(|&c| c == b'{')
        .and_then(|s| b[s + 1..].iter().position(|&c| c == b'}').map(|e| &b[s + 1..s + 1 + e]))
        .filter(|t| !t.is_empty())
        .unwrap_or(b);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

#[test]
fn key_slot_matches_redis() {
    // Values from `CLUSTER KEYSLOT`.
    assert_eq!(key_slot("123456789"), 12_739);
    assert_eq!(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
    assert_eq!(key_slot("foo"), 12_182);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_in_several_queues_on_a_three_node_cluster_all_finish() {
    let cluster = RedisCluster::start().await;
    let owners = cluster.slot_owners().await;
    let owner = |slot: u16| {
        owners
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .map(|o| o.2)
            .expect("every slot is served")
    };
    let tiers = ["critical", "third_party", "batch", "reporting"];
    let mut queues: BTreeMap<String, u16> = BTreeMap::new();
    let urls = cluster.urls();
    let env = TestEnv::new(|c| {
        c.redis.mode = RedisMode::Cluster;
        c.redis.url = urls[0].clone();
        c.redis.cluster_nodes = urls.clone();
        // Idle pools must be woken by pub/sub: the polling fallback would miss the deadline.
        c.worker.idle_poll_interval = Duration::from_secs(120);
        // Queue names whose slots cover every node, plus one more.
        let mut nodes_seen = BTreeSet::new();
        for i in 0..1000 {
            let name = format!("cq{i}");
            let node = owner(key_slot(&format!("{{{}:{name}}}", c.redis.key_prefix)));
            if nodes_seen.insert(node) || (queues.len() == NODES && nodes_seen.len() == NODES) {
                queues.insert(name, node);
            }
            if queues.len() == tiers.len() {
                break;
            }
        }
        for (q, tier) in queues.keys().zip(tiers) {
            c.queues.insert(q.clone(), queue(tier, 8, 5_000, 2));
        }
    })
    .await;
    assert_eq!(
        queues.values().collect::<BTreeSet<_>>().len(),
        NODES,
        "the queues' slots live on every node: {queues:?}"
    );
    let names: Vec<String> = queues.keys().cloned().collect();
    let rt = env.runtime();
    let mut events = rt.events();
    // Pools start idle, so every job below reaches them through a wake-up.
    let running = rt.start(&names).expect("start");
    // The listener subscribes on one node (the first seed); most queues live elsewhere,
    // so their wake-ups only arrive because PUBLISH is forwarded across the cluster bus.
    let channels: Vec<String> = names.iter().map(|q| env.store.wake_channel(q)).collect();
    let subscribed_on = cluster.ports[0];
    eventually(WAIT, "the wake listener to subscribe", || {
        let channels = channels.clone();
        async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{subscribed_on}")).ok()?;
            let mut c = client.get_multiplexed_async_connection().await.ok()?;
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channels)
                .query_async(&mut c)
                .await
                .ok()?;
            counts.iter().all(|(_, n)| *n >= 1).then_some(())
        }
    })
    .await;
    assert!(
        queues.values().filter(|&&node| node != subscribed_on).count() >= 2,
        "most queues publish on another node than the subscriber's: {queues:?}"
    );

    // The record set shares a slot with its `:runs` hash (the job pipelines both).
    let seen = format!("{{{}}}:seen", env.prefix);
    let mut expected = BTreeSet::new();
    let mut batch = Vec::new();
    for q in &names {
        for i in 0..150 {
            let mut req = EnqueueRequest::raw("platform.record", json!({"set": seen})).queue(q.as_str());
            if i % 10 == 0 {
                req = req.delay(Duration::from_millis(300));
            }
            batch.push(req);
        }
    }
    for e in env.store.enqueue(batch).await.expect("enqueue") {
        assert!(e.created);
        expected.insert(e.id);
    }
    let doomed = env
        .enqueue(EnqueueRequest::raw("platform.fail", json!({"times": 100})).queue(names[1].as_str()))
        .await;
    next_event(&mut events, WAIT, |e| e.id == doomed.id && is("dead", e)).await;

    let got: BTreeSet<String> = eventually(WAIT, "every job recorded", || {
        let env = &env;
        let (seen, n) = (&seen, expected.len());
        async move {
            let m: BTreeSet<String> = env.members(seen).await.into_iter().collect();
            (m.len() >= n).then_some(m)
        }
    })
    .await;
    assert_eq!(got, expected, "no job lost, none invented");
    let mut c = env.store.connection();
    let runs: HashMap<String, u32> = redis::cmd("HGETALL")
        .arg(format!("{seen}:runs"))
        .query_async(&mut c)
        .await
        .expect("runs");
    assert!(runs.values().all(|&r| r == 1), "each job ran once");

    for s in env.store.all_stats().await.expect("stats") {
        assert_eq!((s.pending, s.scheduled, s.running), (0, 0, 0), "{s:?}");
        assert_eq!(s.dead, u64::from(s.name == names[1]), "{s:?}");
    }
    let dead = env.store.dead_list(&names[1], 10).await.expect("dead list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, doomed.id);
    assert_eq!(
        env.store
            .status(&doomed.id)
            .await
            .expect("status")
            .expect("found")
            .state,
        culm_worker::store::JobState::Dead
    );
    assert_eq!(
        env.store
            .dead_purge(&names[1], std::slice::from_ref(&doomed.id))
            .await
            .expect("purge"),
        1
    );

    // Pause and resume route to the queue's node; a paused queue keeps its jobs.
    env.store.pause(&names[2]).await.expect("pause");
    let held = env
        .enqueue(EnqueueRequest::raw("platform.noop", json!({})).queue(names[2].as_str()))
        .await;
    eventually(WAIT, "the paused queue holds its job", || async {
        let s = env.store.stats(&names[2]).await.ok()?;
        (s.paused && s.pending == 1).then_some(())
    })
    .await;
    env.store.resume(&names[2]).await.expect("resume");
    next_event(&mut events, WAIT, |e| e.id == held.id && is("done", e)).await;

    // The scheduler: its claim runs in the queue's slot, its state in `{prefix}`'s.
    let catalog = Catalog::from_sources(
        &[(
            "schedules/cluster.toml".into(),
            format!(
                "[[schedule]]\nname = \"c.tick\"\ncron = \"* * * * * *\"\njob = \"platform.noop\"\nqueue = \"{}\"\noverlap = \"allow\"\ndescription = \"cluster tick\"\n",
                names[3]
            ),
        )],
        env.store.registry(),
        &Routing::from_config(&env.config, env.store.registry()),
    )
    .expect("catalog");
    let store = Store::connect(&env.config, env.store.registry().clone())
        .await
        .expect("second connection");
    let scheduler = Scheduler::new(store, catalog, &env.config);
    let mut ticks = scheduler.events();
    let firing = scheduler.start();
    let fired = tokio::time::timeout(WAIT, async {
        loop {
            match ticks.recv().await {
                Ok(ScheduleEvent {
                    outcome: TickOutcome::Fired { job_id },
                    ..
                }) => return job_id,
                Ok(_) => {}
                Err(e) => panic!("schedule events: {e}"),
            }
        }
    })
    .await
    .expect("a tick fired");
    next_event(&mut events, WAIT, |e| e.id == fired && is("done", e)).await;
    let status = scheduler.get("c.tick").await.expect("schedule status");
    assert!(status.last_fire.is_some(), "{status:?}");
    scheduler.pause("c.tick").await.expect("pause schedule");
    assert_eq!(scheduler.get("c.tick").await.expect("status").paused, Some(true));
    firing.shutdown().await;

    let report = running.shutdown().await;
    assert_eq!(report.handed_back, 0);
    drop(cluster);
}

#[test]
fn redis_mode_is_configured_from_the_environment_and_checked() {
    let load = |vars: &[(&str, &str)]| {
        culm_worker::config::Loader::new(Some(culm_tests::workspace_root().join("config")), None)
            .load_from(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    };
    let c = load(&[
        ("CULM__REDIS__MODE", "cluster"),
        (
            "CULM__REDIS__CLUSTER_NODES",
            r#"["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]"#,
        ),
    ])
    .expect("cluster config");
    assert_eq!(c.redis.mode, RedisMode::Cluster);
    assert_eq!(c.redis.cluster_nodes.len(), 2);
    assert_eq!(load(&[]).expect("defaults").redis.mode, RedisMode::Standalone);

    let err = load(&[("CULM__REDIS__MODE", "sentinel")])
        .expect_err("sentinel needs a master name")
        .to_string();
    assert!(err.contains("redis.sentinel_master"), "{err}");
    let err = load(&[("CULM__REDIS__MODE", "replicated")])
        .expect_err("unknown mode")
        .to_string();
    assert!(err.contains("redis.mode") && err.contains("CULM__REDIS__MODE"), "{err}");
}

#[tokio::test]
async fn a_bad_cluster_node_url_is_named() {
    let mut config = culm_worker::config::Config::defaults().expect("defaults");
    config.redis.mode = RedisMode::Cluster;
    config.redis.cluster_nodes = vec!["http://not-redis".into()];
    let err = Store::connect(&config, std::sync::Arc::new(culm_jobs::registry().expect("registry")))
        .await
        .expect_err("not a redis URL");
    assert!(err.to_string().contains("redis.cluster_nodes"), "{err}");
}

#[tokio::test]
async fn an_unreachable_cluster_names_its_seed_nodes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port(); // closed again when the listener drops
    let mut config = culm_worker::config::Config::defaults().expect("defaults");
    config.redis.mode = RedisMode::Cluster;
    config.redis.cluster_nodes = vec![format!("redis://:hunter2@127.0.0.1:{port}")];
    config.redis.connect_timeout = Duration::from_millis(200);
    let err = Store::connect(&config, std::sync::Arc::new(culm_jobs::registry().expect("registry")))
        .await
        .expect_err("nothing listens there")
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "passwords are redacted: {err}");
}

/// A connection to one node (not cluster-aware: commands go to that node only).
async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("node connection")
}

/// Moves `slot` from `from` to `to` the way `redis-cli --cluster reshard` does: mark it
/// importing and migrating, `MIGRATE` its keys in small batches (the queue's `jobs` hash
/// last, so the partial state in between is the one that loses bodies), then assign it to
/// `to` on every node. Returns how many keys already existed on `to` (`BUSYKEY`), which
/// are then replaced as `--cluster-replace` does: a write that landed on the importing
/// node while the slot was split.
async fn migrate_slot(cluster: &RedisCluster, slot: u16, from: u16, to: u16, pause: Duration) -> usize {
    let mut ids = HashMap::new();
    for &p in &cluster.ports {
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut node(p).await)
            .await
            .expect("MYID");
        ids.insert(p, id);
    }
    let (mut src, mut dst) = (node(from).await, node(to).await);
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&ids[&from])
        .exec_async(&mut dst)
        .await
        .expect("SETSLOT IMPORTING");
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&ids[&to])
        .exec_async(&mut src)
        .await
        .expect("SETSLOT MIGRATING");
    let mut busy = 0;
    for _ in 0..1_000 {
        let mut keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1_000)
            .query_async(&mut src)
            .await
            .expect("GETKEYSINSLOT");
        if keys.is_empty() {
            break;
        }
        keys.sort_by_key(|k| (k.ends_with(":jobs"), k.clone()));
        let batch: Vec<String> = keys.into_iter().take(2).collect();
        let migrate = |replace: bool| {
            let mut c = redis::cmd("MIGRATE");
            c.arg("127.0.0.1").arg(to).arg("").arg(0).arg(5_000);
            if replace {
                c.arg("REPLACE");
            }
            c.arg("KEYS").arg(&batch);
            c
        };
        if let Err(e) = migrate(false).exec_async(&mut src).await {
            assert!(e.to_string().contains("BUSYKEY"), "MIGRATE {batch:?}: {e}");
            busy += 1;
            migrate(true).exec_async(&mut src).await.expect("MIGRATE … REPLACE");
        }
        tokio::time::sleep(pause).await;
    }
    // The importing node first, then the one that gave the slot away, then the rest.
    let mut order = vec![to, from];
    order.extend(cluster.ports.iter().filter(|p| **p != to && **p != from));
    for p in order {
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&ids[&to])
            .exec_async(&mut node(p).await)
            .await
            .expect("SETSLOT NODE");
    }
    busy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_slot_migrates_while_it_runs_loses_no_job_and_runs_none_twice() {
    let cluster = RedisCluster::start().await;
    let owners = cluster.slot_owners().await;
    let owner = |slot: u16| {
        owners
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .map(|o| o.2)
            .expect("every slot is served")
    };
    let urls = cluster.urls();
    let mut picked = None;
    let env = TestEnv::new(|c| {
        c.redis.mode = RedisMode::Cluster;
        c.redis.url = urls[0].clone();
        c.redis.cluster_nodes = urls.clone();
        // Leases outlast the migration, so no run is taken over while calls wait it out.
        c.worker.lease_ttl = Duration::from_secs(15);
        c.worker.lease_extend_interval = Duration::from_secs(1);
        c.worker.reap_interval = Duration::from_millis(500);
        c.worker.idle_poll_interval = Duration::from_millis(300);
        // A queue whose slot is not the scheduler's (nor the record set's).
        let own = owner(key_slot(&format!("{{{}}}", c.redis.key_prefix)));
        let name = (0..1000)
            .map(|i| format!("mq{i}"))
            .find(|n| owner(key_slot(&format!("{{{}:{n}}}", c.redis.key_prefix))) != own)
            .expect("a queue on another node");
        c.queues.insert(name.clone(), queue("critical", 8, 5_000, 5));
        picked = Some(name);
    })
    .await;
    let q = picked.expect("queue picked");
    let slot = key_slot(&env.store.base_key(&q));
    let from = owner(slot);
    let to = *cluster.ports.iter().find(|&&p| p != from).expect("another node");
    let rt = env.runtime();
    let running = rt.start(std::slice::from_ref(&q)).expect("start");
    let seen = format!("{{{}}}:seen", env.prefix);
    let job = {
        let (seen, q) = (seen.clone(), q.clone());
        move |i: usize| {
            let mut r = EnqueueRequest::raw("platform.record", json!({"set": seen})).queue(q.as_str());
            if i.is_multiple_of(3) {
                r = r.delay(Duration::from_millis(200 + (i as u64 % 7) * 400));
            }
            if i.is_multiple_of(10) {
                r = r.idempotency_key(format!("mig-{i}"));
            }
            r
        }
    };
    // A backlog that is still being worked off (and falling due) while the slot moves.
    let mut expected: BTreeSet<String> = env
        .store
        .enqueue((0..400).map(&job).collect())
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    // And a steady stream of new jobs throughout.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let producer = {
        let store = env.store.clone();
        let job = job.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut errors = Vec::new();
            let mut i = 1_000;
            while !*stop_rx.borrow() {
                match store.enqueue((i..i + 4).map(&job).collect()).await {
                    Ok(v) => ids.extend(v.into_iter().map(|e| e.id)),
                    Err(e) => errors.push(e.to_string()),
                }
                i += 4;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (ids, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = migrate_slot(&cluster, slot, from, to, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let _ = stop.send(true);
    let (ids, errors) = producer.await.expect("producer");
    assert!(errors.is_empty(), "enqueues failed during the migration: {errors:?}");
    expected.extend(ids);

    // Every job recorded (or the deadline passed).
    let deadline = std::time::Instant::now() + WAIT;
    let got: BTreeSet<String> = loop {
        let m: BTreeSet<String> = env.members(&seen).await.into_iter().collect();
        if m.is_superset(&expected) || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost: Vec<&String> = expected.difference(&got).collect();
    let mut c = env.store.connection();
    let runs: HashMap<String, u32> = redis::cmd("HGETALL")
        .arg(format!("{seen}:runs"))
        .query_async(&mut c)
        .await
        .expect("runs");
    let twice: Vec<(&String, &u32)> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        lost.is_empty() && twice.is_empty() && busy == 0,
        "{} of {} jobs lost (e.g. {:?}), {} ran more than once, {busy} MIGRATE batches found their keys already written on the importing node",
        lost.len(),
        expected.len(),
        lost.iter().take(3).collect::<Vec<_>>(),
        twice.len()
    );
    // The scripts did meet the split slot, and were turned away rather than run on it.
    let mut turned_away = 0;
    for p in [from, to] {
        let stats: String = redis::cmd("INFO")
            .arg("errorstats")
            .query_async(&mut node(p).await)
            .await
            .expect("INFO errorstats");
        turned_away += stats
            .lines()
            .filter_map(|l| l.strip_prefix("errorstat_TRYAGAIN:count="))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    assert!(
        turned_away > 0,
        "no call met the migrating slot; the test proves nothing"
    );
    let moved: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut node(to).await)
        .await
        .expect("COUNTKEYSINSLOT");
    assert!(moved > 0, "the queue's keys live on the new node");
    let s = env.store.stats(&q).await.expect("stats");
    assert_eq!((s.pending, s.scheduled, s.running, s.dead), (0, 0, 0, 0), "{s:?}");
    let report = running.shutdown().await;
    assert_eq!(report.handed_back, 0);
    drop(cluster);
}
