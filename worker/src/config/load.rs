//! The layered loader: `config/default.toml`, then `config/<env>.toml`, then environment
//! variables, later layers winning key by key. It remembers which layer set each key, so
//! an error names the file or variable to fix as well as the key.
use super::{
    Config,
    defaults::{BUILTIN_ORIGIN, DEFAULT_TOML},
    validate::validate,
};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

fn builtin_table() -> Result<toml::Table, ConfigError> {
    Loader::parse(DEFAULT_TOML, BUILTIN_ORIGIN)
}

/// A configuration problem, naming where the value came from and its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    /// A file is not valid TOML.
    #[error("{path}: invalid TOML: {message}")]
    Syntax {
        path: String,
        /// Parser message, with line and column.
        message: String,
    },
    /// A key has a wrong, unknown or impossible value.
    #[error("{origin}: key `{key}`: {message}")]
    Key {
        /// File or environment variable that set the key.
        origin: String,
        /// Dotted path, e.g. `queues.ding.concurrency`.
        key: String,
        message: String,
    },
    /// The environment file asked for does not exist.
    #[error("environment `{env}` selected but {path} does not exist")]
    MissingEnv {
        /// The `--env` / `CULM_ENV` value.
        env: String,
        /// The file that name maps to.
        path: String,
    },
}

/// Loads and validates configuration from a directory, an environment name and env vars.
#[derive(Debug, Clone)]
pub struct Loader {
    dir: Option<PathBuf>,
    env: Option<String>,
}

/// Merged TOML plus, for each leaf key, the layer that set it.
struct Layered {
    root: toml::Table,
    origins: BTreeMap<String, String>,
}

impl Layered {
    fn new() -> Self {
        Layered {
            root: toml::Table::new(),
            origins: BTreeMap::new(),
        }
    }

    fn merge(&mut self, table: toml::Table, origin: &str) {
        merge_into(&mut self.root, table, "", origin, &mut self.origins);
    }

    /// The layer that set `key` or, failing that, its nearest ancestor.
    fn origin_of(&self, key: &str) -> String {
        let mut k = key;
        loop {
            if let Some(o) = self.origins.get(k) {
                return o.clone();
            }
            // A table set by a layer is recorded under its child keys; use any of them.
            if let Some((_, o)) = self
                .origins
                .range(format!("{k}.")..)
                .next()
                .filter(|(p, _)| p.starts_with(&format!("{k}.")))
            {
                return o.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return "configuration".to_owned(),
            }
        }
    }

    /// Deserializes and validates the merged layers; errors name the key and its layer.
    fn into_config(self) -> Result<Config, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(self.root.clone())).map_err(|e| {
            let message = e.inner().message().trim().to_owned();
            let key = culm_core::field_path(e.path(), &message).unwrap_or_else(|| ".".to_owned());
            ConfigError::Key {
                origin: self.origin_of(&key),
                key,
                message,
            }
        })?;
        validate(&config).map_err(|(key, message)| ConfigError::Key {
            origin: self.origin_of(&key),
            key,
            message,
        })?;
        Ok(config)
    }
}

fn merge_into(
    dst: &mut toml::Table,
    src: toml::Table,
    prefix: &str,
    origin: &str,
    origins: &mut BTreeMap<String, String>,
) {
    for (k, v) in src {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        // A retry policy that names its `backoff` is a new policy, not an adjustment of
        // the fields of the one below (whose shape may differ).
        let replaces = k == "retry" && matches!(&v, toml::Value::Table(s) if s.contains_key("backoff"));
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) if !replaces => {
                merge_into(d, s, &path, origin, origins)
            }
            (_, v) => {
                record_origins(&v, &path, origin, origins);
                dst.insert(k, v);
            }
        }
    }
}

fn record_origins(v: &toml::Value, path: &str, origin: &str, origins: &mut BTreeMap<String, String>) {
    origins.insert(path.to_owned(), origin.to_owned());
    if let toml::Value::Table(t) = v {
        for (k, child) in t {
            record_origins(child, &format!("{path}.{k}"), origin, origins);
        }
    }
}

/// Parses an environment variable's value as a TOML value (numbers, booleans, inline
/// tables), falling back to a plain string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn nest(path: &[String], value: toml::Value) -> toml::Table {
    let mut table = toml::Table::new();
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            table.insert(first.clone(), toml::Value::Table(nest(rest, value)));
        }
    }
    table
}

impl Loader {
    /// `dir`: the config directory (default `./config` when it exists); `env`: the
    /// environment file to layer on top of the defaults.
    pub fn new(dir: Option<PathBuf>, env: Option<String>) -> Self {
        Self { dir, env }
    }

    fn read(path: &Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, name: &str) -> Result<toml::Table, ConfigError> {
        toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::Syntax {
            path: name.to_owned(),
            message: e.to_string().trim().to_owned(),
        })
    }

    /// Loads from the process environment.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.load_from(std::env::vars())
    }

    /// Loads with `vars` as the environment (tests pass their own).
    pub fn load_from(&self, vars: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut layered = Layered::new();
        let dir = self.dir.clone().or_else(|| {
            let d = PathBuf::from("config");
            d.join("default.toml").exists().then_some(d)
        });
        match dir.as_ref().map(|d| d.join("default.toml")).filter(|p| p.exists()) {
            Some(p) => layered.merge(Self::read(&p)?, &p.display().to_string()),
            None => layered.merge(builtin_table()?, BUILTIN_ORIGIN),
        }
        if let Some(env) = self.env.as_deref().filter(|e| !e.is_empty()) {
            let d = dir.clone().unwrap_or_else(|| PathBuf::from("config"));
            let p = d.join(format!("{env}.toml"));
            if !p.exists() {
                return Err(ConfigError::MissingEnv {
                    env: env.to_owned(),
                    path: p.display().to_string(),
                });
            }
            layered.merge(Self::read(&p)?, &p.display().to_string());
        }
        let mut vars: Vec<(String, String)> = vars.into_iter().collect();
        vars.sort();
        for (name, value) in vars {
            let path: Vec<String> = match name.as_str() {
                "CULM_REDIS_URL" => vec!["redis".into(), "url".into()],
                "CULM_DATABASE_URL" => vec!["database".into(), "url".into()],
                n => match n.strip_prefix("CULM__") {
                    Some(rest) if !rest.is_empty() => rest.split("__").map(|s| s.to_ascii_lowercase()).collect(),
                    _ => continue,
                },
            };
            // URLs are always strings, even if they happen to parse as something else.
            let v = if name.ends_with("_URL") || path.last().is_some_and(|l| l == "url") {
                toml::Value::String(value)
            } else {
                env_value(&value)
            };
            layered.merge(nest(&path, v), &format!("environment variable {name}"));
        }
        layered.into_config()
    }
}

impl Config {
    /// The built-in `config/default.toml` alone, whatever the working directory holds
    /// (tests start from these and adjust).
    pub fn defaults() -> Result<Config, ConfigError> {
        let mut layered = Layered::new();
        layered.merge(builtin_table()?, BUILTIN_ORIGIN);
        layered.into_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicySource;
    use culm_core::Tier;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_load_and_env_overrides_apply() {
        let c = Loader::new(None, None)
            .load_from(vars(&[
                ("CULM__QUEUES__GALILEO__CONCURRENCY", "3"),
                ("CULM_REDIS_URL", "redis://x:1"),
            ]))
            .expect("defaults load");
        assert_eq!(c.queues["galileo"].concurrency, 3);
        assert_eq!(c.redis.url, "redis://x:1");
        assert_eq!(c.queues["galileo"].tier, Tier::Critical);
    }

    #[test]
    fn bad_values_name_origin_and_key() {
        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__WORKER__LEASE_TTL", "soon")]))
            .expect_err("bad duration");
        let s = e.to_string();
        assert!(
            s.contains("CULM__WORKER__LEASE_TTL") && s.contains("worker.lease_ttl"),
            "{s}"
        );

        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__WORKER__NOPE", "1")]))
            .expect_err("unknown key");
        assert!(e.to_string().contains("key `worker.nope`:"), "{e}");

        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__QUEUES__DING__CONCURRENCY", "0")]))
            .expect_err("impossible value");
        assert!(e.to_string().contains("queues.ding.concurrency"), "{e}");
    }

    #[test]
    fn settings_that_would_stall_reaping_or_split_a_batch_are_refused() {
        let long = "a_queue_name_that_is_far_too_long_for_any_operator_to_type_or_read";
        let tier = format!("CULM__QUEUES__{}__TIER", long.to_uppercase());
        let concurrency = format!("CULM__QUEUES__{}__CONCURRENCY", long.to_uppercase());
        for (settings, key) in [
            // One replica reaping every 10 s never looks twice within the 10 s an outage is
            // measured by, so reaping would wait forever.
            (
                vec![("CULM__WORKER__REAP_INTERVAL", "10s")],
                "worker.reap_interval".to_owned(),
            ),
            (
                vec![("CULM__WORKER__LEASE_EXTEND_INTERVAL", "14s")],
                "worker.reap_interval".to_owned(),
            ),
            // Batches above 1,000 are stored in several calls: no longer all or nothing.
            (vec![("CULM__ADMIN__BATCH_MAX", "1001")], "admin.batch_max".to_owned()),
            (
                vec![(tier.as_str(), "batch"), (concurrency.as_str(), "1")],
                format!("queues.{long}"),
            ),
        ] {
            let e = Loader::new(None, None).load_from(vars(&settings)).expect_err("refused");
            assert!(e.to_string().contains(&key), "{settings:?}: {e}");
        }
    }

    #[test]
    fn result_settings_load_per_queue_and_refuse_a_ttl_under_a_minute() {
        let c = Loader::new(None, None)
            .load_from(vars(&[("CULM__QUEUES__DING__RESULT_TTL", "2h")]))
            .expect("loads");
        let q = c.queue_settings(&culm_core::Registry::new());
        assert_eq!(q["ding"].result_ttl, std::time::Duration::from_secs(7200));
        assert_eq!(q["galileo"].result_ttl, c.queue_defaults.result_ttl);
        assert_eq!(q["galileo"].result_max_bytes, 65536);
        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__QUEUES__DING__RESULT_TTL", "5s")]))
            .expect_err("too short");
        assert!(e.to_string().contains("queues.ding.result_ttl"), "{e}");
    }

    #[test]
    fn retry_policies_take_three_shapes_and_bad_ones_name_the_key() {
        use culm_core::{Backoff, RetryPolicy};
        use std::time::Duration;
        let c = Loader::new(None, None)
            .load_from(vars(&[
                (
                    "CULM__QUEUES__DING__RETRY",
                    r#"{ backoff = "fixed", max_attempts = 4, delay = "30s" }"#,
                ),
                (
                    "CULM__QUEUES__KARD__RETRY",
                    r#"{ backoff = "delays", delays = ["1s", "1m"] }"#,
                ),
            ]))
            .expect("loads");
        let q = c.queue_settings(&culm_core::Registry::new());
        assert_eq!(q["ding"].policy.retry, RetryPolicy::fixed(4, Duration::from_secs(30)));
        assert_eq!(q["kard"].policy.retry.max_attempts, 3);
        assert_eq!(
            q["kard"].policy.retry.backoff,
            Backoff::Delays(vec![Duration::from_secs(1), Duration::from_secs(60)].into())
        );
        assert_eq!(q["galileo"].policy.retry.kind(), "exponential");
        // A layer without `backoff` adjusts the policy below it; one with it replaces it.
        let c = Loader::new(None, None)
            .load_from(vars(&[("CULM__QUEUES__GALILEO__RETRY__MAX_ATTEMPTS", "3")]))
            .expect("loads");
        let galileo = &c.queue_settings(&culm_core::Registry::new())["galileo"].policy.retry;
        assert_eq!(
            *galileo,
            RetryPolicy::exponential(3, Duration::from_millis(500), Duration::from_secs(120))
        );
        for (value, says) in [
            (r#"{ backoff = "fixed", max_attempts = 4 }"#, "`delay` is required"),
            (
                r#"{ backoff = "fixed", max_attempts = 4, delay = "1s", backoff_cap = "1m" }"#,
                "`backoff_cap` does not apply",
            ),
            (r#"{ backoff = "delays", delays = [] }"#, "at least one delay"),
            (
                r#"{ backoff = "delays", delays = ["1s", "2s"], max_attempts = 2 }"#,
                "allows 1",
            ),
            (r#"{ backoff = "linear", max_attempts = 2 }"#, "linear"),
            (
                r#"{ max_attempts = 3, backoff_base = "1m", backoff_cap = "1s" }"#,
                "must not be below",
            ),
            (
                r#"{ max_attempts = 0, backoff_base = "1s", backoff_cap = "1s" }"#,
                "at least 1",
            ),
        ] {
            let e = Loader::new(None, None)
                .load_from(vars(&[("CULM__QUEUES__DING__RETRY", value)]))
                .expect_err(value);
            let e = e.to_string();
            assert!(e.contains("queues.ding.retry") && e.contains(says), "{value}: {e}");
        }
    }

    #[test]
    fn a_job_types_policy_and_timeout_override_its_code_and_its_queue() {
        use culm_core::RetryPolicy;
        use std::time::Duration;
        let registry = culm_jobs::registry().expect("registry");
        let c = Loader::new(None, None)
            .load_from(vars(&[
                ("CULM__QUEUES__FTP__TIMEOUT", "7m"),
                ("CULM__JOB_TYPES__FTP.UPLOAD_FILE__TIMEOUT", "9s"),
                (
                    "CULM__JOB_TYPES__REPORTS.GENERATE__RETRY",
                    r#"{ backoff = "fixed", max_attempts = 2, delay = "5s" }"#,
                ),
            ]))
            .expect("loads");
        let q = c.queue_settings(&registry);
        // Code (Job::RETRY) over the queue; configuration over code.
        let upload = q["ftp"].policy("ftp.upload_file");
        assert_eq!(upload.retry, RetryPolicy::fixed(4, Duration::from_secs(30)));
        assert_eq!(upload.retry_source, PolicySource::JobType);
        assert_eq!(
            (upload.timeout, upload.timeout_source),
            (Duration::from_secs(9), PolicySource::JobTypeConfig)
        );
        let fetch = q["ftp"].policy("ftp.fetch_galileo_reports");
        assert_eq!(
            (fetch.timeout, fetch.timeout_source),
            (Duration::from_secs(120), PolicySource::JobType)
        );
        assert_eq!(fetch.retry.kind(), "delays");
        let report = q["reports"].policy("reports.generate");
        assert_eq!(report.retry, RetryPolicy::fixed(2, Duration::from_secs(5)));
        assert_eq!(report.retry_source, PolicySource::JobTypeConfig);
        // A job type with nothing of its own runs under its queue's settings.
        let other = q["ftp"].policy("platform.noop");
        assert_eq!(
            (other.timeout, other.timeout_source),
            (Duration::from_secs(420), PolicySource::Queue)
        );
        assert_eq!(other.retry_source, PolicySource::QueueDefaults);
        let c = Loader::new(None, None)
            .load_from(vars(&[("CULM__JOB_TYPES__FTP.UPLAOD_FILE__TIMEOUT", "9s")]))
            .expect("loads");
        let problems = crate::store::Routing::from_config(&c, &registry).problems(&registry);
        assert!(problems.iter().any(|p| p.contains("`ftp.uplaod_file`")), "{problems:?}");

        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__JOB_TYPES__FTP.UPLOAD_FILE__TIMEOUT", "0s")]))
            .expect_err("zero timeout");
        assert!(e.to_string().contains("job_types.ftp.upload_file.timeout"), "{e}");
    }

    #[test]
    fn a_global_cap_of_zero_is_refused() {
        let c = Loader::new(None, None).load_from(vars(&[])).expect("defaults");
        assert_eq!(c.queues["bamboo_orders"].max_in_flight, Some(5));
        let e = Loader::new(None, None)
            .load_from(vars(&[("CULM__QUEUES__BAMBOO_ORDERS__MAX_IN_FLIGHT", "0")]))
            .expect_err("zero cap");
        assert!(e.to_string().contains("queues.bamboo_orders.max_in_flight"), "{e}");
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("culm-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("default.toml"), DEFAULT_TOML).expect("write");
        std::fs::write(dir.join("staging.toml"), "[queues.galileo]\ntier = \"platinum\"\n").expect("write");
        let e = Loader::new(Some(dir.clone()), Some("staging".into()))
            .load_from(vec![])
            .expect_err("bad tier");
        let s = e.to_string();
        assert!(s.contains("staging.toml") && s.contains("queues.galileo.tier"), "{s}");
        std::fs::remove_dir_all(dir).ok();
    }

    /// An operator's default.toml written before a section or key existed still loads:
    /// every key the schema lets it omit takes the built-in value (and a key missing from
    /// the built-in file fails here, not at an operator's start-up).
    #[test]
    fn an_older_default_toml_takes_missing_keys_from_the_built_in_one() {
        let dir = std::env::temp_dir().join(format!("culm-config-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut old: toml::Table = toml::from_str(DEFAULT_TOML).expect("built-in parses");
        old.remove("sandbox");
        old.remove("scheduler");
        if let Some(toml::Value::Table(redis)) = old.get_mut("redis") {
            redis.remove("mode");
        }
        if let Some(toml::Value::Table(db)) = old.get_mut("database") {
            db.retain(|k, _| k == "url");
            // Present but empty: each key falls back on its own.
            db.insert("ledger".into(), toml::Value::Table(toml::Table::new()));
        }
        std::fs::write(dir.join("default.toml"), toml::to_string(&old).expect("serialize")).expect("write");
        let loaded = Loader::new(Some(dir.clone()), None).load_from(vec![]);
        std::fs::remove_dir_all(&dir).ok();
        let c = loaded.expect("an older default.toml loads");
        let b = Config::defaults().expect("built-in defaults load");
        assert_eq!(format!("{:?}", c.sandbox), format!("{:?}", b.sandbox));
        assert_eq!(format!("{:?}", c.scheduler), format!("{:?}", b.scheduler));
        assert_eq!(c.redis.mode, b.redis.mode);
        let (d, e) = (&c.database, &b.database);
        assert_eq!(
            (d.pool_size, d.statement_timeout, d.connect_timeout, d.migrate_on_start),
            (e.pool_size, e.statement_timeout, e.connect_timeout, e.migrate_on_start)
        );
        assert_eq!(format!("{:?}", d.ledger), format!("{:?}", e.ledger));
        assert_eq!(format!("{:?}", d.outbox), format!("{:?}", e.outbox));
    }
}
