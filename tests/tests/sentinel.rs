//! culm behind Redis Sentinel: a master, a replica and one sentinel from the machine's
//! `redis-server` on free loopback ports, torn down when the test ends. Jobs run through
//! the master the sentinel names; after a forced failover (the old master becomes a
//! read-only replica) culm re-resolves the master and jobs enqueued afterwards run too.
use culm_core::EnqueueRequest;
use culm_tests::{TestEnv, eventually, is, next_event, queue};
use culm_worker::config::RedisMode;
use serde_json::json;
use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

const WAIT: Duration = Duration::from_secs(30);

/// Processes and their temporary directory, killed and removed on drop.
struct Servers {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

async fn conn(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

async fn master_port(sentinel: u16) -> Option<u16> {
    let mut c = conn(sentinel).await?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("culm")
        .query_async(&mut c)
        .await
        .ok()?;
    addr.map(|a| a.1)
}

impl Servers {
    /// Starts `redis-server` with `args` on a free port (retrying if the port was taken
    /// meanwhile) and waits until it answers.
    async fn start(&mut self, args: impl Fn(u16) -> Vec<String>) -> u16 {
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("redis-server")
                .args(args(port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            self.children.push(child);
            let up = async {
                loop {
                    if let Some(mut c) = conn(port).await
                        && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), up).await.is_ok() {
                return port;
            }
            if let Some(mut c) = self.children.pop() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        panic!("could not start redis-server; logs in {:?}", self.dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_through_sentinel_and_after_a_failover() {
    let dir = std::env::temp_dir().join(format!(
        "culm-sentinel-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut servers = Servers {
        children: Vec::new(),
        dir: dir.clone(),
    };
    let plain = |port: u16| -> Vec<String> {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec()
    };
    let master = servers.start(plain).await;
    let replica = servers
        .start(|p| {
            let mut a = plain(p);
            a.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
            a
        })
        .await;
    let conf_dir = dir.clone();
    let sentinel = servers
        .start(move |p| {
            let conf = conf_dir.join(format!("sentinel-{p}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {p}\nbind 127.0.0.1\ndir {}\nsentinel monitor culm 127.0.0.1 {master} 1\nsentinel down-after-milliseconds culm 2000\nsentinel failover-timeout culm 5000\n",
                    conf_dir.display()
                ),
            )
            .expect("sentinel config");
            vec![conf.display().to_string(), "--sentinel".into()]
        })
        .await;
    eventually(WAIT, "the sentinel to see the master and its replica", || async {
        let mut c = conn(sentinel).await?;
        let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("culm")
            .query_async(&mut c)
            .await
            .ok()?;
        (master_port(sentinel).await == Some(master) && !replicas.is_empty()).then_some(())
    })
    .await;

    let env = TestEnv::new(|c| {
        c.redis.mode = RedisMode::Sentinel;
        // Only credentials and db are taken from the URL; the address comes from the sentinel.
        c.redis.url = "redis://127.0.0.1:1".into();
        c.redis.sentinel_master = "culm".into();
        c.redis.sentinel_nodes = vec![format!("redis://127.0.0.1:{sentinel}")];
        c.queues.insert("s_q".into(), queue("critical", 4, 5_000, 3));
    })
    .await;
    let rt = env.runtime();
    let mut events = rt.events();
    let running = rt.start(&["s_q".into()]).expect("start");
    let noop = || EnqueueRequest::raw("platform.noop", json!({})).queue("s_q");

    let before: BTreeSet<String> = env
        .store
        .enqueue((0..50).map(|_| noop()).collect())
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut done = BTreeSet::new();
    while !before.is_subset(&done) {
        done.insert(next_event(&mut events, WAIT, |e| is("done", e)).await.id);
    }

    // Promote the replica; the old master turns into a read-only replica of it.
    // NOGOODSLAVE until the sentinel has seen the replica in sync.
    eventually(WAIT, "SENTINEL FAILOVER to be accepted", || async {
        let mut s = conn(sentinel).await?;
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg("culm")
            .query_async::<()>(&mut s)
            .await
            .ok()
    })
    .await;
    eventually(WAIT, "the sentinel to name the replica as master", || async {
        (master_port(sentinel).await == Some(replica)).then_some(())
    })
    .await;

    eventually(WAIT, "the old master to be demoted to a replica", || async {
        let mut c = conn(master).await?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
        matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"slave").then_some(())
    })
    .await;
    // The first writes may hit the demoted master; culm re-resolves and later ones land.
    let after = eventually(WAIT, "an enqueue on the new master", || async {
        env.store.enqueue((0..50).map(|_| noop()).collect()).await.ok()
    })
    .await;
    let after: BTreeSet<String> = after.into_iter().map(|e| e.id).collect();
    while !after.is_subset(&done) {
        done.insert(next_event(&mut events, WAIT, |e| is("done", e)).await.id);
    }
    // The jobs really went through the new master.
    let mut c = conn(replica).await.expect("new master");
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.expect("ROLE");
    assert!(matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master"));
    let stats = env.store.stats("s_q").await.expect("stats");
    assert_eq!((stats.pending, stats.running), (0, 0), "{stats:?}");
    running.shutdown().await;
    drop(servers);
}
