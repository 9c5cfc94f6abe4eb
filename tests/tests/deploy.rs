//! The deployment artefacts under `deploy/` are checked, not eyeballed: every Kubernetes
//! manifest parses and has the fields its kind needs, container commands parse with the
//! real `culm` CLI, probes hit culm's probe paths, secrets come from Secrets, the
//! ConfigMap is a valid culm config layer whose drain timeout fits the grace period, the
//! dashboard, alerts and KEDA queries reference only metrics culm exports, and `promtool`
//! accepts the alert rules and a live `/metrics` scrape of a running `culm`.
use clap::Parser;
use culm_core::EnqueueRequest;
use culm_tests::{TestEnv, culm_bin, eventually, workspace_root};
use culm_worker::{cli::Cli, config::Loader};
use serde::Deserialize;
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

const TIERS: [&str; 4] = ["critical", "third_party", "batch", "reporting"];

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// Every YAML document under `dir` (recursively), with its file.
fn manifests(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read deploy dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&path).expect("read manifest");
                for doc in serde_norway::Deserializer::from_str(&text) {
                    let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
                    if !v.is_null() {
                        out.push((path.clone(), v));
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn kubernetes() -> Vec<(PathBuf, Value)> {
    manifests(&deploy_dir().join("kubernetes"))
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn name_of(v: &Value) -> String {
    format!("{} {}", s(v, "/kind"), s(v, "/metadata/name"))
}

/// Every metric name culm defines: `worker/src/telemetry.rs`, plus the integration
/// metrics that culm-jobs defines (`jobs/src/http/metrics.rs`) and telemetry re-exports.
fn known_metrics() -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    for file in ["worker/src/telemetry.rs", "jobs/src/http/metrics.rs"] {
        let text = std::fs::read_to_string(workspace_root().join(file)).expect(file);
        known.extend(
            metric_names(&text)
                .into_iter()
                .filter(|m| text.contains(&format!("\"{m}\""))),
        );
    }
    known
}

/// `culm_*` identifiers in a text, histogram series suffixes stripped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("culm_") {
        let start = i + pos;
        let boundary = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        // `culm_queue_*` in prose is not a metric.
        if boundary && b[end - 1] != b'_' {
            let mut m = &text[start..end];
            for suffix in ["_bucket", "_count", "_sum"] {
                if let Some(base) = m.strip_suffix(suffix)
                    && (base.ends_with("_seconds") || base.ends_with("_bytes"))
                {
                    m = base;
                }
            }
            out.insert(m.to_owned());
        }
        i = end.max(start + 5);
    }
    out
}

fn assert_known(what: &str, used: &BTreeSet<String>, known: &BTreeSet<String>) {
    let unknown: Vec<_> = used.difference(known).collect();
    assert!(
        unknown.is_empty(),
        "{what} references metrics culm does not export: {unknown:?} (known: telemetry.rs + jobs/src/http/metrics.rs)"
    );
}

#[test]
fn every_manifest_has_the_fields_its_kind_needs() {
    let all = kubernetes();
    assert!(all.len() > 10, "manifests found: {}", all.len());
    for (path, v) in &all {
        let what = format!("{}: {}", path.display(), name_of(v));
        assert!(!s(v, "/kind").is_empty(), "{what}: no kind");
        assert!(!s(v, "/apiVersion").is_empty(), "{what}: no apiVersion");
        match s(v, "/kind") {
            "Kustomization" => {
                for r in v["resources"].as_array().expect("resources") {
                    let r = r.as_str().expect("resource path");
                    let target = path.parent().expect("dir").join(r);
                    assert!(target.exists(), "{what}: resource {r} does not exist");
                }
            }
            kind => {
                assert!(!s(v, "/metadata/name").is_empty(), "{what}: no metadata.name");
                let api = s(v, "/apiVersion");
                let expected_api = match kind {
                    "Deployment" => "apps/v1",
                    "Service" | "ConfigMap" | "Namespace" => "v1",
                    "PodDisruptionBudget" => "policy/v1",
                    "ScaledObject" | "TriggerAuthentication" => "keda.sh/v1alpha1",
                    other => panic!("{what}: unexpected kind {other}"),
                };
                assert_eq!(api, expected_api, "{what}");
            }
        }
    }
}

/// The culm command line of each Deployment.
fn deployments(all: &[(PathBuf, Value)]) -> BTreeMap<String, (Value, Vec<String>)> {
    all.iter()
        .filter(|(_, v)| s(v, "/kind") == "Deployment")
        .map(|(_, v)| {
            let containers = v.pointer("/spec/template/spec/containers").and_then(Value::as_array);
            let c = containers.and_then(|c| c.first()).expect("a container");
            let args: Vec<String> = c["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("string arg").to_owned())
                .collect();
            (s(v, "/metadata/name").to_owned(), (v.clone(), args))
        })
        .collect()
}

#[test]
fn deployments_run_real_culm_commands_with_probes_grace_and_secret_refs() {
    let all = kubernetes();
    let deps = deployments(&all);
    let config = configmap_config(&all);
    let drain = config.worker.drain_timeout.as_secs();
    let mut tiers_run = BTreeSet::new();
    for (name, (v, args)) in &deps {
        // The real CLI parser accepts the command line.
        let argv = std::iter::once("culm".to_owned()).chain(args.iter().cloned());
        let cli = Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("Deployment {name}: culm {args:?} is not a valid command: {e}"));
        let _ = cli;
        match args[0].as_str() {
            "run" => {
                let i = args.iter().position(|a| a == "--tiers").expect("--tiers");
                let tier = args[i + 1].clone();
                assert!(TIERS.contains(&tier.as_str()), "{name}: tier {tier}");
                assert!(
                    args.contains(&"--no-scheduler".to_owned()),
                    "{name}: workers leave the scheduler to culm-scheduler"
                );
                assert!(tiers_run.insert(tier.clone()), "two Deployments run tier {tier}");
                assert!(
                    !args.contains(&"--no-admin".to_owned()),
                    "{name}: workers serve /metrics and probes on the admin listener"
                );
                assert_eq!(
                    s(v, "/spec/template/metadata/labels/culm.dev~1tier"),
                    tier.replace('_', "-")
                );
            }
            "scheduler" => assert_eq!(
                v.pointer("/spec/replicas"),
                Some(&json!(2)),
                "{name}: two scheduler replicas"
            ),
            "serve" => {}
            other => panic!("{name}: unexpected command {other}"),
        }
        let spec = v.pointer("/spec/template/spec").expect("pod spec");
        let grace = spec["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        // Only `culm run` drains jobs; the scheduler and the API stop at once.
        assert!(
            args[0] != "run" || grace >= drain + 10,
            "{name}: terminationGracePeriodSeconds {grace} must cover drain_timeout {drain}s plus a margin for acks and hand-back"
        );
        let c = &spec["containers"][0];
        assert_eq!(s(c, "/image"), "culm", "{name}: image set by kustomize images");
        let ports: BTreeMap<&str, u64> = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| (s(p, "/name"), p["containerPort"].as_u64().unwrap_or(0)))
            .collect();
        let listen_port: u64 = config
            .admin
            .listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("admin.listen port");
        assert!(
            config.admin.listen.starts_with("0.0.0.0:"),
            "probes need admin.listen on all interfaces"
        );
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let p = &c[probe];
            assert_eq!(s(p, "/httpGet/path"), path, "{name}: {probe}");
            let port = &p["httpGet"]["port"];
            let port = port
                .as_u64()
                .or_else(|| port.as_str().and_then(|n| ports.get(n).copied()))
                .expect("probe port");
            assert_eq!(port, listen_port, "{name}: {probe} hits admin.listen");
        }
        for limit in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                assert!(
                    c.pointer(&format!("/resources/{limit}/{r}")).is_some(),
                    "{name}: resources.{limit}.{r}"
                );
            }
        }
        for e in c["env"].as_array().expect("env") {
            let var = s(e, "/name");
            let secret = ["URL", "TOKEN", "KEY", "PASSWORD", "SECRET"]
                .iter()
                .any(|w| var.contains(w));
            if secret {
                assert!(e.get("value").is_none(), "{name}: {var} must not be a literal");
                assert!(
                    e.pointer("/valueFrom/secretKeyRef/name").is_some(),
                    "{name}: {var} must come from a Secret"
                );
            }
        }
        assert_eq!(s(c, "/env/0/name"), "CULM_CONFIG_DIR");
        let mount = c["volumeMounts"][0]["mountPath"].as_str().expect("config mount");
        assert_eq!(mount, s(c, "/env/0/value"), "{name}: config mounted at CULM_CONFIG_DIR");
    }
    assert_eq!(
        tiers_run,
        TIERS.iter().map(|t| t.to_string()).collect(),
        "one Deployment per tier"
    );
    assert!(deps.values().any(|(_, a)| a[0] == "serve"), "an admin API Deployment");
}

/// The ConfigMap's production.toml, loaded by culm's own loader over the defaults.
fn configmap_config(all: &[(PathBuf, Value)]) -> culm_worker::config::Config {
    let cm = all
        .iter()
        .find(|(_, v)| s(v, "/kind") == "ConfigMap")
        .map(|(_, v)| v)
        .expect("a ConfigMap");
    let toml = s(cm, "/data/production.toml");
    let dir = std::env::temp_dir().join(format!("culm-deploy-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("production.toml"), toml).expect("write");
    let loaded = Loader::new(Some(dir.clone()), Some("production".into())).load_from(Vec::new());
    let _ = std::fs::remove_dir_all(&dir);
    loaded.unwrap_or_else(|e| panic!("ConfigMap culm-config production.toml is not a valid culm config: {e}"))
}

#[test]
fn pdbs_services_and_scaled_objects_select_real_workloads() {
    let all = kubernetes();
    let deps = deployments(&all);
    let labels = |d: &Value| d.pointer("/spec/template/metadata/labels").cloned().expect("labels");
    let selects = |sel: &Value, d: &Value| {
        let l = labels(d);
        sel.as_object()
            .expect("selector labels")
            .iter()
            .all(|(k, v)| l.get(k) == Some(v))
    };
    let mut pdb_tiers = BTreeSet::new();
    for (_, v) in &all {
        match s(v, "/kind") {
            "PodDisruptionBudget" => {
                let sel = v.pointer("/spec/selector/matchLabels").expect("matchLabels");
                let matched: Vec<_> = deps.iter().filter(|(_, (d, _))| selects(sel, d)).collect();
                assert_eq!(matched.len(), 1, "{} selects exactly one Deployment", name_of(v));
                let (_, (_, args)) = matched[0];
                if let Some(i) = args.iter().position(|a| a == "--tiers") {
                    pdb_tiers.insert(args[i + 1].clone());
                }
                assert!(
                    v.pointer("/spec/minAvailable").is_some() != v.pointer("/spec/maxUnavailable").is_some(),
                    "{}: one of minAvailable/maxUnavailable",
                    name_of(v)
                );
            }
            "Service" => {
                let sel = v.pointer("/spec/selector").expect("selector");
                let matched: Vec<_> = deps.iter().filter(|(_, (d, _))| selects(sel, d)).collect();
                assert_eq!(matched.len(), 1, "{} selects the admin Deployment", name_of(v));
                assert_eq!(matched[0].1.1[0], "serve");
            }
            "ScaledObject" => {
                let target = s(v, "/spec/scaleTargetRef/name");
                assert!(deps.contains_key(target), "{}: no Deployment {target}", name_of(v));
                let min = v.pointer("/spec/minReplicaCount").and_then(Value::as_u64).expect("min");
                let max = v.pointer("/spec/maxReplicaCount").and_then(Value::as_u64).expect("max");
                assert!(min >= 1 && min <= max, "{}: replicas {min}..{max}", name_of(v));
                for t in v.pointer("/spec/triggers").and_then(Value::as_array).expect("triggers") {
                    let threshold = s(t, "/metadata/threshold");
                    // metricType is a field of the trigger, not of its metadata.
                    assert!(
                        t.pointer("/metadata/metricType").is_none(),
                        "{}: metricType in metadata",
                        name_of(v)
                    );
                    if let Some(m) = t.get("metricType") {
                        assert!(
                            ["Value", "AverageValue", "Utilization"].contains(&m.as_str().unwrap_or("")),
                            "{}: metricType {m}",
                            name_of(v)
                        );
                    }
                    match s(t, "/type") {
                        "prometheus" => {
                            assert!(
                                threshold.parse::<f64>().is_ok(),
                                "{}: threshold {threshold:?}",
                                name_of(v)
                            );
                            assert_known(&name_of(v), &metric_names(s(t, "/metadata/query")), &known_metrics());
                            let tier = &deps[target].1;
                            let i = tier
                                .iter()
                                .position(|a| a == "--tiers")
                                .expect("scaled workers run a tier");
                            assert!(
                                s(t, "/metadata/query").contains(&format!("tier=\"{}\"", tier[i + 1])),
                                "{}: the query is about the Deployment's tier",
                                name_of(v)
                            );
                        }
                        "redis" | "redis-cluster" => {
                            let list = s(t, "/metadata/listName");
                            assert!(
                                list.starts_with("{culm:") && list.ends_with("}:ready"),
                                "{}: culm's ready list is {{culm:<queue>}}:ready, not {list}",
                                name_of(v)
                            );
                        }
                        other => panic!("{}: unexpected trigger {other}", name_of(v)),
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        pdb_tiers,
        TIERS.iter().map(|t| t.to_string()).collect(),
        "a PodDisruptionBudget per tier"
    );
}

#[test]
fn dashboard_and_alerts_reference_only_exported_metrics() {
    let known = known_metrics();
    let text = std::fs::read_to_string(deploy_dir().join("grafana/culm.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr" || k == "definition" {
                        out.push(v.as_str().unwrap_or("").to_owned());
                    }
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() > 20, "dashboard queries: {}", exprs.len());
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert_known("deploy/grafana/culm.json", &used, &known);
    for needed in [
        "culm_queue_jobs",
        "culm_queue_oldest_pending_age_seconds",
        "culm_job_wait_seconds",
        "culm_job_duration_seconds",
        "culm_jobs_dead_lettered_total",
        "culm_integration_rate_limited_total",
        "culm_integration_breaker_state",
        "culm_schedule_lag_seconds",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
    let ids: Vec<u64> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| p["id"].as_u64().expect("panel id"))
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<BTreeSet<_>>().len(),
        "panel ids are unique"
    );

    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml")).expect("alerts");
    let parsed: Value = serde_norway::from_str(&rules).expect("alerts.yml is YAML");
    let alerts: BTreeSet<&str> = parsed["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| r["alert"].as_str().expect("alert name"))
        .collect();
    for needed in [
        "CulmCriticalWaitHigh",
        "CulmDeadLettersGrowing",
        "CulmScheduleStuck",
        "CulmBreakerOpen",
        "CulmQueueHasNoWorkers",
    ] {
        assert!(alerts.contains(needed), "alerts.yml has {needed}");
    }
    assert_known("deploy/prometheus/alerts.yml", &metric_names(&rules), &known);
}

fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !! promtool is NOT installed: the promtool checks of this test are SKIPPED.  !!\n\
             !! Run scripts/services.sh (installs Debian's `prometheus` package) and rerun.!!\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
    }
    found
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(promtool) = promtool() else { return };
    let out = Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(deploy_dir().join("prometheus/alerts.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every PromQL query of the dashboard (Grafana variables substituted) and of the KEDA
/// triggers, as recording rules, so `promtool check rules` parses them.
#[test]
fn promtool_parses_every_dashboard_and_keda_query() {
    let Some(promtool) = promtool() else { return };
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_dir().join("grafana/culm.json")).expect("dashboard"))
            .expect("JSON");
    let mut queries = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("expr", Some(e)) => out.push(e.to_owned()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut queries);
    for (_, v) in kubernetes() {
        for t in v
            .pointer("/spec/triggers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(q) = t.pointer("/metadata/query").and_then(Value::as_str) {
                queries.push(q.to_owned());
            }
        }
    }
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let q = q
                .replace("$__rate_interval", "5m")
                .replace("$queue", ".*")
                .replace("$tier", ".*");
            json!({"record": format!("culm:deploy_check:{i}"), "expr": q})
        })
        .collect();
    let file = std::env::temp_dir().join(format!("culm-queries-{}.yml", ulid::Ulid::new()));
    let doc = json!({"groups": [{"name": "dashboard_and_keda", "rules": rules}]});
    std::fs::write(&file, serde_norway::to_string(&doc).expect("yaml")).expect("write rules");
    let out = Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("promtool runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "a dashboard or KEDA query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the child if the test fails.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_live_metrics_scrape() {
    let Some(promtool) = promtool() else { return };
    let env = TestEnv::new(|_| {}).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let _culm = Child(
        Command::new(culm_bin())
            .current_dir(workspace_root())
            .args(["run", "--queues", "platform", "--no-scheduler"])
            .env("CULM_REDIS_URL", &env.config.redis.url)
            .env("CULM__REDIS__KEY_PREFIX", &env.prefix)
            .env("CULM__ADMIN__LISTEN", format!("127.0.0.1:{port}"))
            .env("CULM__ADMIN__GAUGE_INTERVAL", "200ms")
            .env("CULM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("culm starts"),
    );
    // Some work, so counters and histograms have series.
    let jobs = vec![
        EnqueueRequest::raw("platform.noop", json!({})).queue("platform"),
        EnqueueRequest::raw("platform.fail", json!({"times": 100})).queue("platform"),
    ];
    env.store.enqueue(jobs).await.expect("enqueue");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let http = reqwest::Client::new();
    let scrape = eventually(Duration::from_secs(30), "a /metrics scrape with job metrics", || {
        let (http, url) = (&http, &url);
        async move {
            let body = http.get(url).send().await.ok()?.text().await.ok()?;
            (body.contains("culm_jobs_succeeded_total") && body.contains("culm_queue_jobs")).then_some(body)
        }
    })
    .await;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(scrape.as_bytes()).expect("write scrape");
    }
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success(),
        "promtool check metrics found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every metric the scrape shows is one the deploy checks know.
    let scraped: BTreeSet<String> = metric_names(&scrape);
    assert_known("the live /metrics scrape", &scraped, &known_metrics());
    env.cleanup().await;
}
