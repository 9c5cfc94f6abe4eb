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
pub use schema::{
    AdminConfig, Config, DatabaseConfig, LedgerConfig, OutboxConfig, QueueConfig, QueueDefaults, QueueSettings,
    RedisConfig, RedisMode, RetryConfig, SandboxConfig, SchedulerConfig, Scope, SpillPolicy, TokenConfig, WorkerConfig,
};

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
            } else {
                format!("{}***{}", &url[..s + 3], &url[at..])
            }
        }
        _ => url.to_owned(),
    }
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
}
