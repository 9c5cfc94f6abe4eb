//! The `schedules/*.toml` format as written, and its checks: syntax and shape per file,
//! then each entry against the registry and the routing. Every problem is recorded, not
//! only the first.
use super::{Missed, Overlap, Problem, Schedule};
use crate::{scheduler::cadence::Cadence, store::Routing};
use culm_core::Registry;
use serde::Deserialize;

/// One `[[schedule]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    name: String,
    cron: String,
    #[serde(default = "utc")]
    timezone: String,
    job: String,
    #[serde(default = "empty_object")]
    payload: serde_json::Value,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    description: String,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default)]
    missed: Missed,
}

fn utc() -> String {
    "UTC".to_owned()
}
fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn yes() -> bool {
    true
}

/// Parses one file into raw entries, recording syntax and shape problems.
pub(super) fn parse_file(file: &str, text: &str, problems: &mut Vec<Problem>) -> Vec<RawSchedule> {
    let problem = |schedule: Option<String>, key: Option<String>, message: String| Problem {
        file: file.to_owned(),
        schedule,
        key,
        message,
    };
    let table = match toml::from_str::<toml::Table>(text) {
        Ok(t) => t,
        Err(e) => {
            problems.push(problem(None, None, format!("invalid TOML: {}", e.to_string().trim())));
            return Vec::new();
        }
    };
    for key in table.keys().filter(|k| *k != "schedule") {
        problems.push(problem(
            None,
            Some(key.clone()),
            "unknown top-level key; a file holds only [[schedule]] entries".into(),
        ));
    }
    let entries = match table.get("schedule") {
        None => return Vec::new(),
        Some(toml::Value::Array(a)) => a.clone(),
        Some(_) => {
            problems.push(problem(
                None,
                Some("schedule".into()),
                "must be an array of tables: [[schedule]]".into(),
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let label = entry
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("schedule[{i}]"));
        match serde_path_to_error::deserialize::<_, RawSchedule>(entry) {
            Ok(raw) => out.push(raw),
            Err(e) => {
                let message = e.inner().to_string().trim().to_owned();
                let key = culm_core::field_path(e.path(), &message);
                problems.push(problem(Some(label), key, message));
            }
        }
    }
    out
}

/// Checks one entry; returns it validated, or records every problem it has.
pub(super) fn validate(
    file: &str,
    raw: RawSchedule,
    registry: &Registry,
    routing: &Routing,
    problems: &mut Vec<Problem>,
) -> Option<Schedule> {
    let before = problems.len();
    let mut problem = |key: &str, message: String| {
        problems.push(Problem {
            file: file.to_owned(),
            schedule: Some(raw.name.clone()),
            key: Some(key.to_owned()),
            message,
        })
    };
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
    {
        problem(
            "name",
            "use only a-z, 0-9, `_`, `.` and `-` (e.g. `bamboo.catalog_sync`)".into(),
        );
    }
    if raw.description.trim().is_empty() {
        problem(
            "description",
            "say what the schedule does and why at this cadence".into(),
        );
    }
    let cadence = match Cadence::parse(&raw.cron, &raw.timezone) {
        Ok(c) => {
            if c.next_after(chrono::Utc::now()).is_none() {
                problem("cron", format!("`{}` never fires", raw.cron));
            }
            Some(c)
        }
        Err((key, message)) => {
            problem(key, message);
            None
        }
    };
    let mut queue = None;
    match registry.get(&raw.job) {
        None => problem(
            "job",
            format!("job type `{}` is not registered in this binary (see jobs/)", raw.job),
        ),
        Some(spec) => {
            if !raw.payload.is_object() {
                problem(
                    "payload",
                    "must be an inline table, e.g. payload = { limit = 100 }".into(),
                );
            } else if let Err(e) = spec.validate(&raw.payload) {
                problem("payload", e.to_string());
            }
            let (q, via) = match (&raw.queue, routing.routes.get(&raw.job)) {
                (Some(q), _) => (q.clone(), "`queue`"),
                (None, Some(q)) => (q.clone(), "the [routes] override"),
                (None, None) => (spec.queue.to_owned(), "the job type's declaration"),
            };
            match routing.queues.get(&q) {
                None => problem(
                    "queue",
                    format!("queue `{q}` (from {via}) is not declared under [queues]"),
                ),
                Some(settings) if !spec.allows(settings.tier) => problem(
                    "queue",
                    format!(
                        "queue `{q}` (from {via}) is in tier {}, but job type `{}` may only run in: {}",
                        settings.tier,
                        raw.job,
                        spec.allowed_tiers()
                    ),
                ),
                Some(_) => queue = Some(q),
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(Schedule {
        name: raw.name,
        cron: raw.cron,
        timezone: raw.timezone,
        job: raw.job,
        payload: raw.payload,
        queue: queue?,
        enabled: raw.enabled,
        description: raw.description,
        overlap: raw.overlap,
        missed: raw.missed,
        source: file.to_owned(),
        cadence: cadence?,
    })
}
