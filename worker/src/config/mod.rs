//! Layered configuration: `config/default.toml`, `config/<env>.toml`, then environment
//! variables.
//!
//! - `schema`: the typed structs, which reject unknown keys;
//! - `load`: the [`Loader`] that merges the layers and the [`ConfigError`] that names the
//!   file or variable and the key at fault;
//! - `validate`: the checks serde cannot express.
//!
//! Every default value is written once, in `config/default.toml`; `defaults` embeds it.
mod defaults;
mod load;
mod schema;
mod validate;

pub use defaults::DEFAULT_TOML;
pub use load::{ConfigError, Loader};
pub use schema::TRACE_SAMPLERS;
pub use schema::{
    AdminConfig, Config, DatabaseConfig, JobPolicy, JobTypeConfig, LedgerConfig, OutboxConfig, PolicySource,
    QueueConfig, QueueDefaults, QueueSettings, RedisConfig, RedisMode, RetryConfig, SandboxConfig, SchedulerConfig,
    Scope, SpillPolicy, TelemetryConfig, TokenConfig, WorkerConfig,
};

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    // The query (and fragment) may carry secrets too (`?password=`, which sqlx accepts).
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], Some(&url[q + 1..])),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &base[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}{}:***{}", &base[..s + 3], user, &base[at..])
            } else {
                format!("{}***{}", &base[..s + 3], &base[at..])
            }
        }
        _ => base.to_owned(),
    };
    if let Some(q) = query {
        out.push('?');
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if secret_param(k) => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// Query parameters whose value is a secret, whatever the URL's scheme.
fn secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "sslpassword",
        "auth",
    ]
    .iter()
    .any(|s| k == *s || k.ends_with(&format!("_{s}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://:hunter2@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("postgres://app:pw@db/culm"), "postgres://app:***@db/culm");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn passwords_in_query_strings_are_redacted() {
        assert_eq!(
            redact_url("postgres://db.internal/culm?sslmode=require&password=s3cret&user=app"),
            "postgres://db.internal/culm?sslmode=require&password=***&user=app"
        );
        assert_eq!(
            redact_url("postgres://app@db/culm?PASSWORD=s3cret"),
            "postgres://***@db/culm?PASSWORD=***"
        );
        assert_eq!(
            redact_url("redis://host:6379/0?password=s3cret"),
            "redis://host:6379/0?password=***"
        );
        assert_eq!(redact_url("rediss://:s3cret@host?db=1"), "rediss://:***@host?db=1");
        for url in [
            "postgres://h/d?password=s3cret#frag",
            "redis://h?token=s3cret",
            "postgres://h/d?passwd=s3cret",
        ] {
            assert!(!redact_url(url).contains("s3cret"), "{url} -> {}", redact_url(url));
        }
    }
}
