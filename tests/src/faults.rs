//! Fault injection between culm and Redis: a RESP-aware TCP proxy the test controls while
//! `culm run` processes talk through it ([`FaultProxy`]), a throwaway AOF-backed
//! `redis-server` the test can freeze, kill and restart ([`ThrowawayRedis`]), and the
//! environment that points `culm run` at them ([`WorkerEnv`]).
//!
//! Used by `tests/tests/faults.rs` and the soak (`tests/src/bin/culm-soak.rs`). Never aim
//! any of this at the shared Redis on 6379: other tests run against it in parallel.
use crate::workspace_root;
use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

/// One RESP value, as far as the proxy needs to understand it (RESP2 and RESP3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+`, and RESP3's `,` `#` `(` (kept as text).
    Simple(Vec<u8>),
    /// `-`, and RESP3's `!`.
    Error(Vec<u8>),
    /// `:`
    Int(i64),
    /// `$`, and RESP3's `=`.
    Bulk(Vec<u8>),
    /// `$-1`, `*-1`, RESP3's `_`.
    Nil,
    /// `*`, and RESP3's `~` and `%` (a map as its keys and values in turn).
    Array(Vec<Resp>),
    /// RESP3's `>`: not a reply to any command.
    Push(Vec<Resp>),
    /// RESP3's `|`: metadata in front of a reply, not a reply itself.
    Attribute(Vec<Resp>),
}

impl Resp {
    /// The value as text, for bulk and simple strings.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(b) | Resp::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The elements of an array.
    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(v) => v,
            _ => &[],
        }
    }
}

/// Bytes that are not RESP (the proxy then stops interpreting that connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotResp;

/// Parses one value from the front of `buf`: the value and the bytes it took, `None` while
/// it is incomplete.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(Resp, usize)>, NotResp> {
    parse_at(buf, 0, 0)
}

/// Parses the value starting at `pos`: the value and the position just after it.
fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Resp, usize)>, NotResp> {
    if depth > 64 {
        return Err(NotResp);
    }
    let Some(&kind) = buf.get(pos) else { return Ok(None) };
    let Some(end) = buf
        .get(pos + 1..)
        .and_then(|rest| rest.windows(2).position(|w| w == b"\r\n"))
    else {
        return Ok(None);
    };
    let line = &buf[pos + 1..pos + 1 + end];
    let after = pos + 1 + end + 2;
    let number = || -> Result<i64, NotResp> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(NotResp)
    };
    let bulk = |len: i64| -> Result<Option<(Vec<u8>, usize)>, NotResp> {
        let len = usize::try_from(len).map_err(|_| NotResp)?;
        if buf.len() < after + len + 2 {
            return Ok(None);
        }
        if &buf[after + len..after + len + 2] != b"\r\n" {
            return Err(NotResp);
        }
        Ok(Some((buf[after..after + len].to_vec(), after + len + 2)))
    };
    let value = match kind {
        b'+' | b',' | b'#' | b'(' => (Resp::Simple(line.to_vec()), after),
        b'-' => (Resp::Error(line.to_vec()), after),
        b':' => (Resp::Int(number()?), after),
        b'_' => (Resp::Nil, after),
        b'$' | b'=' | b'!' => match number()? {
            -1 => (Resp::Nil, after),
            len => match bulk(len)? {
                None => return Ok(None),
                Some((data, next)) if kind == b'!' => (Resp::Error(data), next),
                Some((data, next)) => (Resp::Bulk(data), next),
            },
        },
        b'*' | b'~' | b'%' | b'>' | b'|' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Resp::Nil, after)));
            }
            let n = usize::try_from(n).map_err(|_| NotResp)? * if matches!(kind, b'%' | b'|') { 2 } else { 1 };
            let mut items = Vec::with_capacity(n.min(1024));
            let mut next = after;
            for _ in 0..n {
                match parse_at(buf, next, depth + 1)? {
                    Some((v, end)) => {
                        items.push(v);
                        next = end;
                    }
                    None => return Ok(None),
                }
            }
            let v = match kind {
                b'>' => Resp::Push(items),
                b'|' => Resp::Attribute(items),
                _ => Resp::Array(items),
            };
            (v, next)
        }
        _ => return Err(NotResp),
    };
    Ok(Some(value))
}

/// A command as the client sent it: its arguments, the name first.
pub type Request = Vec<Vec<u8>>;

fn request_of(v: Resp) -> Option<Request> {
    match v {
        Resp::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Resp::Bulk(b) | Resp::Simple(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

type RequestMatch = Arc<dyn Fn(&[Vec<u8>]) -> bool + Send + Sync>;
type ReplyMatch = Arc<dyn Fn(&Resp) -> bool + Send + Sync>;

/// Which reply to drop: the first reply whose command and content match, on a connection
/// where no other command is waiting for its reply (so the fault hits exactly one command).
#[derive(Clone)]
pub struct DropRule {
    /// Shown in [`DroppedReply::rule`].
    pub name: String,
    request: RequestMatch,
    reply: ReplyMatch,
}

impl std::fmt::Debug for DropRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropRule")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DropRule {
    /// The reply to the first command `request` accepts.
    pub fn new(name: impl Into<String>, request: impl Fn(&[Vec<u8>]) -> bool + Send + Sync + 'static) -> DropRule {
        DropRule {
            name: name.into(),
            request: Arc::new(request),
            reply: Arc::new(|_| true),
        }
    }

    /// The reply to the next call of culm's Lua script `worker/src/store/lua/<file>`
    /// (`EVALSHA <sha of common.lua + "\n" + file>`, as `store::script!` builds it).
    pub fn script(file: &str) -> DropRule {
        let sha = culm_script_sha(file);
        let name = file.trim_end_matches(".lua").to_owned();
        DropRule::new(name, move |args| {
            args.len() > 1 && args[0].eq_ignore_ascii_case(b"EVALSHA") && args[1] == sha.as_bytes()
        })
    }

    /// Only replies that `reply` accepts (for example a fetch that leased jobs).
    pub fn when_reply(mut self, reply: impl Fn(&Resp) -> bool + Send + Sync + 'static) -> DropRule {
        self.reply = Arc::new(reply);
        self
    }
}

/// The SHA1 culm's store invokes `worker/src/store/lua/<file>` under, read from the source
/// tree the `culm` binary was built from.
pub fn culm_script_sha(file: &str) -> String {
    let dir = workspace_root().join("worker/src/store/lua");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("reading culm's Lua script {}: {e}", dir.join(name).display()))
    };
    let code = format!("{}\n{}", read("common.lua"), read(file));
    redis::Script::new(&code).get_hash().to_owned()
}

/// A reply the proxy threw away after its command had reached Redis.
#[derive(Debug, Clone)]
pub struct DroppedReply {
    /// The rule that fired.
    pub rule: String,
    /// The command whose reply was dropped.
    pub request: Request,
    /// The reply the client never saw.
    pub reply: Resp,
}

struct Control {
    target: String,
    cut: watch::Sender<bool>,
    delay: watch::Sender<Duration>,
    rules: Mutex<Vec<DropRule>>,
    dropped: Mutex<Vec<DroppedReply>>,
    live: AtomicUsize,
    accepted: AtomicU64,
    /// Replies read from Redis and not yet passed on.
    held: Arc<AtomicUsize>,
}

impl Control {
    /// Takes the first armed rule matching this (request, reply).
    fn take_rule(&self, request: &[Vec<u8>], reply: &Resp) -> Option<DropRule> {
        let mut rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        let i = rules.iter().position(|r| (r.request)(request) && (r.reply)(reply))?;
        Some(rules.remove(i))
    }
}

/// A TCP proxy in front of Redis that understands RESP, so it can tell which reply
/// belongs to which command. Faults apply while culm processes keep running through it:
/// [`FaultProxy::cut`], [`FaultProxy::delay_replies`], [`FaultProxy::drop_reply`].
pub struct FaultProxy {
    /// `127.0.0.1:<port>` to connect to instead of Redis.
    pub addr: SocketAddr,
    ctl: Arc<Control>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.ctl.cut.send_replace(true);
        self.accept.abort();
    }
}

impl FaultProxy {
    /// Forwards connections from an ephemeral loopback port to `target` ("host:port").
    pub async fn start(target: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let ctl = Arc::new(Control {
            target: target.to_owned(),
            cut: watch::channel(false).0,
            delay: watch::channel(Duration::ZERO).0,
            rules: Mutex::default(),
            dropped: Mutex::default(),
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            held: Arc::default(),
        });
        let accept = tokio::spawn({
            let ctl = ctl.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *ctl.cut.borrow() {
                        continue; // closed at once: Redis looks down
                    }
                    ctl.accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve(inbound, ctl.clone()));
                }
            }
        });
        FaultProxy { addr, ctl, accept }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Closes every connection and refuses new ones until [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.ctl.cut.send_replace(true);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.ctl.cut.send_replace(false);
    }

    /// Holds every reply that arrives from now on for `d` before passing it on (in order;
    /// commands still reach Redis at once). `Duration::ZERO` passes replies through again;
    /// replies already held are still delivered late.
    pub fn delay_replies(&self, d: Duration) {
        self.ctl.delay.send_replace(d);
    }

    /// Arms `rule`: the next matching reply is discarded after its command ran in Redis,
    /// and that connection is closed, as if it broke before the reply arrived. Replies to
    /// earlier commands on that connection are delivered first.
    pub fn drop_reply(&self, rule: DropRule) {
        self.ctl.rules.lock().unwrap_or_else(PoisonError::into_inner).push(rule);
    }

    /// Disarms every rule that has not fired.
    pub fn disarm(&self) -> usize {
        std::mem::take(&mut *self.ctl.rules.lock().unwrap_or_else(PoisonError::into_inner)).len()
    }

    /// Every reply dropped so far.
    pub fn dropped(&self) -> Vec<DroppedReply> {
        self.ctl.dropped.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Connections open through the proxy now.
    pub fn connections(&self) -> usize {
        self.ctl.live.load(Ordering::Acquire)
    }

    /// Connections accepted since the start (reconnects show up here).
    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(Ordering::Relaxed)
    }

    /// Replies read from Redis and not yet passed on (held by a delay, or on their way).
    pub fn held(&self) -> usize {
        self.ctl.held.load(Ordering::Acquire)
    }
}

/// Commands sent on one connection whose replies have not come back yet.
struct Pending {
    requests: VecDeque<Request>,
    /// False once the stream could not be parsed: bytes pass through uninterpreted.
    tracked: bool,
}

enum Out {
    Reply { at: Instant, bytes: Vec<u8>, _held: Held },
    Close,
}

/// Counts a reply as held by the proxy until it is written or its connection is gone.
struct Held(Arc<AtomicUsize>);

impl Held {
    fn new(n: &Arc<AtomicUsize>) -> Held {
        n.fetch_add(1, Ordering::AcqRel);
        Held(n.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Live<'a>(&'a AtomicUsize);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve(inbound: TcpStream, ctl: Arc<Control>) {
    ctl.live.fetch_add(1, Ordering::AcqRel);
    let _live = Live(&ctl.live);
    let mut cut = ctl.cut.subscribe();
    let Ok(outbound) = TcpStream::connect(&ctl.target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (client_rx, client_tx) = inbound.into_split();
    let (server_rx, server_tx) = outbound.into_split();
    let pending = Mutex::new(Pending {
        requests: VecDeque::new(),
        tracked: true,
    });
    let closing = AtomicBool::new(false);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    tokio::select! {
        _ = upstream(client_rx, server_tx, &pending, &closing) => {}
        _ = downstream(server_rx, &pending, &closing, out_tx, &ctl) => {}
        _ = writer(out_rx, client_tx) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}

/// Client → Redis: notes each complete command before its last byte is forwarded, so its
/// reply can never arrive first.
async fn upstream(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    pending: &Mutex<Pending>,
    closing: &AtomicBool,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        {
            let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
            if p.tracked {
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match parse_resp(&buf) {
                        Ok(Some((v, used))) => {
                            buf.drain(..used);
                            match request_of(v) {
                                Some(r) => p.requests.push_back(r),
                                None => p.tracked = false,
                            }
                        }
                        Ok(None) => break,
                        Err(NotResp) => {
                            p.tracked = false;
                            break;
                        }
                    }
                    if !p.tracked {
                        break;
                    }
                }
            }
        }
        if closing.load(Ordering::Acquire) {
            return std::future::pending().await;
        }
        if server.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// Redis → client: splits the stream into replies, pairs each with its command, drops the
/// one an armed rule asks for, and stamps the rest with their delivery time.
async fn downstream(
    mut server: OwnedReadHalf,
    pending: &Mutex<Pending>,
    closing: &AtomicBool,
    out: mpsc::UnboundedSender<Out>,
    ctl: &Control,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let n = match server.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if route(&mut buf, pending, &out, ctl) {
            closing.store(true, Ordering::Release);
            let _ = out.send(Out::Close);
            return std::future::pending().await;
        }
    }
}

/// Passes on the complete replies at the front of `buf`; true when an armed rule dropped
/// one (the connection must close, and nothing after it is passed on).
fn route(buf: &mut Vec<u8>, pending: &Mutex<Pending>, out: &mpsc::UnboundedSender<Out>, ctl: &Control) -> bool {
    let at = Instant::now() + *ctl.delay.borrow();
    let send = |bytes: Vec<u8>| {
        let _ = out.send(Out::Reply {
            at,
            bytes,
            _held: Held::new(&ctl.held),
        });
    };
    let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if !p.tracked {
            send(std::mem::take(buf));
            return false;
        }
        let (reply, used) = match parse_resp(buf) {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(NotResp) => {
                p.tracked = false;
                continue;
            }
        };
        let bytes: Vec<u8> = buf.drain(..used).collect();
        if matches!(reply, Resp::Push(_) | Resp::Attribute(_)) {
            send(bytes);
            continue;
        }
        let request = p.requests.pop_front();
        if let Some(request) = request
            && p.requests.is_empty()
            && let Some(rule) = ctl.take_rule(&request, &reply)
        {
            ctl.dropped
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(DroppedReply {
                    rule: rule.name,
                    request,
                    reply,
                });
            return true;
        }
        send(bytes);
    }
}

async fn writer(mut rx: mpsc::UnboundedReceiver<Out>, mut client: OwnedWriteHalf) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Reply { at, bytes, _held } => {
                tokio::time::sleep_until(at).await;
                if client.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Out::Close => {
                let _ = client.shutdown().await;
                return;
            }
        }
    }
}

/// Sends `signal` ("STOP", "CONT", "KILL", "TERM") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// `redis-server` on `127.0.0.1:<port>` with its AOF (`appendfsync always`) and log in
/// `dir`, no RDB snapshots. Restarting it with the same `dir` reloads the AOF.
pub fn redis_server_command(port: u16, dir: &Path) -> Command {
    let mut c = Command::new("redis-server");
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(["--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Waits until `url` answers PING (not while it is still loading its AOF); false after `timeout`.
pub async fn wait_for_redis(url: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if let Ok(client) = redis::Client::open(url)
            && let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_millis(500), client.get_multiplexed_async_connection()).await
            && let Ok(Ok(pong)) = tokio::time::timeout(
                Duration::from_millis(500),
                redis::cmd("PING").query_async::<String>(&mut c),
            )
            .await
            && pong == "PONG"
        {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port that is free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A `redis-server` of the test's own on a free loopback port, with AOF on in a temporary
/// directory: it can be frozen (SIGSTOP), thawed, killed and restarted from its AOF.
/// Dropping it kills it; its directory is kept (and printed) when the test failed or
/// `CULM_TEST_KEEP_LOGS` is set.
pub struct ThrowawayRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// AOF and `redis.log`.
    pub dir: PathBuf,
    child: Option<Child>,
    frozen: bool,
}

impl ThrowawayRedis {
    /// Starts one (on fresh ports, should another process take the port first).
    pub async fn start() -> ThrowawayRedis {
        let dir = std::env::temp_dir().join(format!("culm-faults-{}", ulid::Ulid::new().to_string().to_lowercase()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            let mut r = ThrowawayRedis {
                port,
                dir: dir.clone(),
                child: Some(
                    redis_server_command(port, &dir)
                        .spawn()
                        .expect("redis-server is installed"),
                ),
                frozen: false,
            };
            if wait_for_redis(&r.url(), Duration::from_secs(10)).await {
                return r;
            }
            r.stop();
        }
        panic!("could not start redis-server; see {}", dir.join("redis.log").display());
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`, for the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// SIGSTOP: Redis keeps its connections but answers nothing until [`ThrowawayRedis::thaw`].
    pub fn freeze(&mut self) {
        signal(self.pid(), "STOP");
        self.frozen = true;
    }

    /// SIGCONT.
    pub fn thaw(&mut self) {
        signal(self.pid(), "CONT");
        self.frozen = false;
    }

    /// SIGKILL (nothing is flushed beyond what `appendfsync always` already wrote).
    pub fn kill(&mut self) {
        self.stop();
    }

    /// A new `redis-server` on the same port and directory after [`ThrowawayRedis::kill`],
    /// which reloads the AOF; returns once it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill");
        for _ in 0..50 {
            self.child = Some(
                redis_server_command(self.port, &self.dir)
                    .spawn()
                    .expect("redis-server is installed"),
            );
            if wait_for_redis(&self.url(), Duration::from_secs(10)).await {
                return;
            }
            // The port may still be held by the old socket for a moment.
            self.stop();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "redis-server did not come back on port {}; see {}",
            self.port,
            self.dir.join("redis.log").display()
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.frozen {
                let _ = Command::new("kill").arg("-CONT").arg(c.id().to_string()).status();
                self.frozen = false;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() || std::env::var_os("CULM_TEST_KEEP_LOGS").is_some() {
            eprintln!("redis AOF and log kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The environment a `culm run` worker process is configured with: Redis, key prefix,
/// one queue and short leases, all as `CULM_REDIS_URL` / `CULM__SECTION__KEY` variables.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    /// `CULM_REDIS_URL`.
    pub redis_url: String,
    /// `CULM__REDIS__KEY_PREFIX`.
    pub key_prefix: String,
    /// The queue (declared through `CULM__QUEUES__<QUEUE>__*`, tier batch) the process runs.
    pub queue: String,
    /// `CULM__QUEUES__<QUEUE>__CONCURRENCY`.
    pub concurrency: u32,
    /// `max_attempts` in `CULM__QUEUES__<QUEUE>__RETRY`.
    pub max_attempts: u32,
    /// `backoff_base` and `backoff_cap` in `CULM__QUEUES__<QUEUE>__RETRY` (humantime).
    pub backoff: (String, String),
    /// `CULM__WORKER__LEASE_TTL` (humantime).
    pub lease_ttl: String,
    /// `CULM__WORKER__LEASE_EXTEND_INTERVAL`.
    pub lease_extend_interval: String,
    /// `CULM__WORKER__REAP_INTERVAL`.
    pub reap_interval: String,
    /// More variables, e.g. `("CULM__WORKER__DONE_RETENTION", "200000")`.
    pub extra: Vec<(String, String)>,
}

/// `d` as a humantime string culm's config reads ("1500ms").
pub fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl WorkerEnv {
    /// `culm run --queues <queue> --no-admin --no-scheduler` with this environment;
    /// stdout discarded, stderr for the caller to direct.
    pub fn command(&self, culm: &Path) -> Command {
        let mut c = self.culm(culm, &["run", "--queues", &self.queue, "--no-admin", "--no-scheduler"]);
        c.stdout(Stdio::null());
        c
    }

    /// `culm <args>` (any subcommand, e.g. `queues --json`) with this environment.
    pub fn culm(&self, culm: &Path, args: &[&str]) -> Command {
        let q = self.queue.to_ascii_uppercase();
        let mut c = Command::new(culm);
        c.current_dir(workspace_root())
            .args(args)
            .env("CULM_REDIS_URL", &self.redis_url)
            .env("CULM__REDIS__KEY_PREFIX", &self.key_prefix)
            .env(format!("CULM__QUEUES__{q}__TIER"), "batch")
            .env(format!("CULM__QUEUES__{q}__CONCURRENCY"), self.concurrency.to_string())
            .env(
                format!("CULM__QUEUES__{q}__RETRY"),
                format!(
                    r#"{{ max_attempts = {}, backoff_base = "{}", backoff_cap = "{}" }}"#,
                    self.max_attempts, self.backoff.0, self.backoff.1
                ),
            )
            .env("CULM__WORKER__LEASE_TTL", &self.lease_ttl)
            .env("CULM__WORKER__LEASE_EXTEND_INTERVAL", &self.lease_extend_interval)
            .env("CULM__WORKER__REAP_INTERVAL", &self.reap_interval)
            .env("CULM__ADMIN__ENABLED", "false")
            .env("CULM_LOG", "warn");
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse_whole_or_not_at_all() {
        let fetch = b"*5\r\n$2\r\nok\r\n$0\r\n\r\n$3\r\nabc\r\n:1\r\n$2\r\n{}\r\n+OK\r\n";
        let (v, used) = parse_resp(fetch).expect("resp").expect("complete");
        assert_eq!(used, fetch.len() - 5);
        assert_eq!(v.items().len(), 5);
        assert_eq!(v.items()[0].text().as_deref(), Some("ok"));
        for cut in 1..used {
            assert_eq!(parse_resp(&fetch[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        assert_eq!(parse_resp(b"$-1\r\n"), Ok(Some((Resp::Nil, 5))));
        assert_eq!(
            parse_resp(b"%1\r\n+a\r\n:2\r\n")
                .expect("map")
                .map(|(v, _)| v.items().len()),
            Some(2)
        );
        assert_eq!(parse_resp(b"?x\r\n"), Err(NotResp));
    }
}
