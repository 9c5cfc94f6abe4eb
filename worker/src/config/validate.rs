//! Checks the values serde cannot: ranges, relations between keys, address syntax.
//! Each check returns the offending key, so the loader can name the layer that set it.
use super::{Config, DatabaseConfig, RedisMode};
use std::time::Duration;

/// Rejects impossible values; returns the offending key and why.
pub(super) fn validate(c: &Config) -> Result<(), (String, String)> {
    let w = &c.worker;
    if w.batch_retention < Duration::from_secs(1) || w.batch_retention > Duration::from_secs(365 * 24 * 3600) {
        return Err(("worker.batch_retention".into(), "must be between 1s and 365days".into()));
    }
    if w.lease_ttl < Duration::from_secs(1) {
        return Err(("worker.lease_ttl".into(), "must be at least 1s".into()));
    }
    if w.lease_extend_interval.is_zero() || w.lease_extend_interval >= w.lease_ttl {
        return Err((
            "worker.lease_extend_interval".into(),
            "must be above zero and below worker.lease_ttl".into(),
        ));
    }
    for (key, d) in [
        ("worker.reap_interval", w.reap_interval),
        ("worker.idle_poll_interval", w.idle_poll_interval),
    ] {
        if d.is_zero() {
            return Err((key.into(), "must be above zero".into()));
        }
    }
    // Reaping waits one lease whenever no reaper of a queue ran for longer than
    // lease_ttl - lease_extend_interval (a Redis outage could have expired leases that were
    // extended on time). A reaper that looks less often than that would always wait.
    if w.reap_interval * 2 > w.lease_ttl - w.lease_extend_interval {
        return Err((
            "worker.reap_interval".into(),
            format!(
                "must be at most half of worker.lease_ttl - worker.lease_extend_interval ({}), or reaping after an outage could wait forever",
                humantime::format_duration(w.lease_ttl - w.lease_extend_interval)
            ),
        ));
    }
    if w.ack_batch_max == 0 {
        return Err(("worker.ack_batch_max".into(), "must be at least 1".into()));
    }
    if c.redis.key_prefix.is_empty() || c.redis.key_prefix.contains(['{', '}', ' ']) {
        return Err((
            "redis.key_prefix".into(),
            "must be non-empty without braces or spaces".into(),
        ));
    }
    if c.redis.mode == RedisMode::Sentinel && (c.redis.sentinel_master.is_empty() || c.redis.sentinel_nodes.is_empty())
    {
        return Err((
            "redis.sentinel_master".into(),
            "mode = \"sentinel\" needs redis.sentinel_master and at least one redis.sentinel_nodes entry".into(),
        ));
    }
    if c.admin.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(("admin.listen".into(), "must be an address like 127.0.0.1:8080".into()));
    }
    if !c.admin.metrics_listen.is_empty() && c.admin.metrics_listen.parse::<std::net::SocketAddr>().is_err() {
        return Err((
            "admin.metrics_listen".into(),
            "must be empty or an address like 127.0.0.1:9090".into(),
        ));
    }
    // A batch is stored in one script call (all or nothing) up to 1,000 jobs.
    if c.admin.batch_max == 0 || c.admin.batch_max > 1000 || c.admin.max_body_bytes < 1024 {
        return Err((
            "admin.batch_max".into(),
            "batch_max must be 1 to 1000 and max_body_bytes at least 1024".into(),
        ));
    }
    if c.admin.session_ttl.is_zero() {
        return Err(("admin.session_ttl".into(), "must be above zero".into()));
    }
    if c.admin.gauge_interval.is_zero() {
        return Err(("admin.gauge_interval".into(), "must be above zero".into()));
    }
    for (i, t) in c.admin.tokens.iter().enumerate() {
        if t.env.is_empty() || t.scopes.is_empty() {
            return Err((
                format!("admin.tokens[{i}]"),
                "needs `env` (the variable holding the secret) and at least one scope".into(),
            ));
        }
    }
    if c.queues.is_empty() {
        return Err(("queues".into(), "declare at least one queue".into()));
    }
    validate_database(&c.database)?;
    culm_jobs::http::config::validate(&c.integration_defaults, &c.integrations)?;
    // A done id also stops a resent push (after a lost reply) from storing the job again
    // (push.lua), so `done` keeps ids at least a minute whatever the result TTL.
    let min_result_ttl = Duration::from_secs(60);
    if c.queue_defaults.result_ttl < min_result_ttl {
        return Err(("queue_defaults.result_ttl".into(), "must be at least 1m".into()));
    }
    if c.worker.result_max_bytes == 0 {
        return Err((
            "worker.result_max_bytes".into(),
            "must be above zero (results over it are dropped)".into(),
        ));
    }
    if c.scheduler.claim_ttl < Duration::from_secs(60) {
        return Err(("scheduler.claim_ttl".into(), "must be at least 1m".into()));
    }
    validate_telemetry(&c.telemetry)?;
    for (name, q) in &c.queues {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        {
            return Err((
                format!("queues.{name}"),
                "queue names use only a-z, 0-9 and _, at most 64 characters".into(),
            ));
        }
        if q.concurrency == 0 || q.concurrency > 10_000 {
            return Err((
                format!("queues.{name}.concurrency"),
                "must be between 1 and 10000".into(),
            ));
        }
        if q.max_in_flight == Some(0) {
            return Err((
                format!("queues.{name}.max_in_flight"),
                "must be at least 1 (leave it out for no global cap)".into(),
            ));
        }
        if q.timeout.is_some_and(|t| t.is_zero()) {
            return Err((format!("queues.{name}.timeout"), "must be above zero".into()));
        }
        if q.result_ttl.is_some_and(|t| t < min_result_ttl) {
            return Err((format!("queues.{name}.result_ttl"), "must be at least 1m".into()));
        }
    }
    for (name, j) in &c.job_types {
        if j.timeout.is_some_and(|t| t.is_zero()) {
            return Err((format!("job_types.{name}.timeout"), "must be above zero".into()));
        }
    }
    Ok(())
}

/// `[telemetry]` as the files and `CULM__TELEMETRY__*` set it (the `OTEL_*` variables
/// are checked when export starts, naming the variable).
fn validate_telemetry(t: &super::TelemetryConfig) -> Result<(), (String, String)> {
    if !super::TRACE_SAMPLERS.contains(&t.sampler.as_str()) {
        return Err((
            "telemetry.sampler".into(),
            format!(
                "unknown sampler `{}`; one of {}",
                t.sampler,
                super::TRACE_SAMPLERS.join(", ")
            ),
        ));
    }
    if !(0.0..=1.0).contains(&t.sampler_ratio) {
        return Err(("telemetry.sampler_ratio".into(), "must be between 0.0 and 1.0".into()));
    }
    if !(t.endpoint.starts_with("http://") || t.endpoint.starts_with("https://")) {
        return Err((
            "telemetry.endpoint".into(),
            "must be an http:// or https:// URL (the collector's OTLP/HTTP receiver)".into(),
        ));
    }
    if t.queue_size == 0 || t.batch_size == 0 || t.batch_size > t.queue_size {
        return Err((
            "telemetry.batch_size".into(),
            "must be at least 1 and at most telemetry.queue_size".into(),
        ));
    }
    if t.export_interval.is_zero() || t.export_timeout.is_zero() {
        return Err((
            "telemetry.export_interval".into(),
            "export_interval and export_timeout must be above zero".into(),
        ));
    }
    Ok(())
}

/// `[database]`: checked even without a URL, so a bad value fails before the database is
/// turned on rather than on the day it is.
fn validate_database(d: &DatabaseConfig) -> Result<(), (String, String)> {
    if d.enabled() && !(d.url.starts_with("postgres://") || d.url.starts_with("postgresql://")) {
        return Err(("database.url".into(), "must be a postgres:// URL or empty".into()));
    }
    // Retention holds one connection for its advisory lock while deleting on another.
    if d.pool_size < 2 {
        return Err(("database.pool_size".into(), "must be at least 2".into()));
    }
    for (key, v) in [
        ("database.statement_timeout", d.statement_timeout),
        ("database.connect_timeout", d.connect_timeout),
        ("database.ledger.flush_interval", d.ledger.flush_interval),
        ("database.ledger.housekeeping_interval", d.ledger.housekeeping_interval),
        ("database.outbox.poll_interval", d.outbox.poll_interval),
    ] {
        if v.is_zero() {
            return Err((key.into(), "must be above zero".into()));
        }
    }
    if d.ledger.flush_batch == 0 || d.ledger.buffer_size < d.ledger.flush_batch {
        return Err((
            "database.ledger.buffer_size".into(),
            "flush_batch must be at least 1 and buffer_size at least flush_batch".into(),
        ));
    }
    if d.ledger.spill_max_rows == 0 {
        return Err(("database.ledger.spill_max_rows".into(), "must be at least 1".into()));
    }
    if d.outbox.batch == 0 {
        return Err(("database.outbox.batch".into(), "must be at least 1".into()));
    }
    Ok(())
}
