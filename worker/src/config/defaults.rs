//! The built-in `config/default.toml`, the one place every default value is written.
//! The loader starts from it when no `default.toml` is found on disk; the schema reads
//! from it the keys an operator's own (older) `default.toml` may lack.
use serde::de::DeserializeOwned;
use std::{sync::LazyLock, time::Duration};

/// The built-in defaults, used when no `config/default.toml` is found on disk.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// How errors name the built-in file.
pub(super) const BUILTIN_ORIGIN: &str = "config/default.toml (built in)";

static BUILTIN: LazyLock<Result<toml::Table, toml::de::Error>> = LazyLock::new(|| toml::from_str(DEFAULT_TOML));

/// The built-in default of the dotted `key`. Panics when default.toml lacks the key or
/// its value does not fit `T`: a build defect, caught by the loader's unit tests.
pub(super) fn builtin<T: DeserializeOwned>(key: &str) -> T {
    builtin_value(key)
        .try_into()
        .unwrap_or_else(|e| panic!("{BUILTIN_ORIGIN}: key `{key}` does not fit its type: {e}"))
}

/// [`builtin`] for a humantime duration such as `"200ms"`.
pub(super) fn builtin_duration(key: &str) -> Duration {
    let text: String = builtin(key);
    humantime::parse_duration(&text).unwrap_or_else(|e| panic!("{BUILTIN_ORIGIN}: key `{key}` is not a duration: {e}"))
}

fn builtin_value(key: &str) -> toml::Value {
    let mut table = match &*BUILTIN {
        Ok(t) => Some(t),
        Err(e) => panic!("{BUILTIN_ORIGIN}: invalid TOML: {e}"),
    };
    let mut value = None;
    for k in key.split('.') {
        value = table.and_then(|t| t.get(k));
        table = value.and_then(toml::Value::as_table);
    }
    value
        .cloned()
        .unwrap_or_else(|| panic!("{BUILTIN_ORIGIN} has no key `{key}`"))
}
