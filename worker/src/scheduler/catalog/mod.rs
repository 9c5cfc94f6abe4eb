//! The schedule catalog: the `schedules/*.toml` file format, loading (embedded in the
//! binary, or from `[scheduler] dir`) and validation against the job registry and the
//! queue routing. Every problem names its file, schedule and key, and all are listed at once.
mod parse;

use super::cadence::Cadence;
use crate::store::Routing;
use culm_core::Registry;
use parse::{parse_file, validate};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt, path::Path};

include!(concat!(env!("OUT_DIR"), "/embedded_schedules.rs"));

/// What to do with a tick while the previous run of the same schedule is unfinished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip the tick while the previous run is pending, scheduled (retrying) or running.
    #[default]
    Skip,
    /// Fire regardless.
    Allow,
}

/// What to do at start-up about ticks that passed while no scheduler was running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Forget them.
    #[default]
    Skip,
    /// Fire once for the latest missed tick.
    RunOnce,
}

impl Overlap {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        }
    }
}

impl Missed {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run_once",
        }
    }
}

/// A validated schedule from `schedules/*.toml`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    /// Unique name, e.g. `bamboo.catalog_sync`.
    pub name: String,
    /// The cron expression as written (6 fields).
    pub cron: String,
    /// IANA timezone name, e.g. `America/New_York`.
    pub timezone: String,
    /// Job type.
    pub job: String,
    /// Payload (validated against the job type).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The queue jobs go to: `queue` if given, else the job type's routed queue.
    pub queue: String,
    /// A disabled schedule stays in the catalog (and `culm schedules`) but never fires.
    pub enabled: bool,
    /// What it does.
    pub description: String,
    pub overlap: Overlap,
    pub missed: Missed,
    /// The file it came from, for error messages and `culm schedules`.
    pub source: String,
    /// Fire-time computation.
    #[serde(skip)]
    pub cadence: Cadence,
}

/// One problem in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File (`schedules/<family>.toml`).
    pub file: String,
    /// Schedule name (or `schedule[i]` when the name is missing).
    pub schedule: Option<String>,
    /// Key, when one is at fault.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(s) = &self.schedule {
            write!(f, ": schedule `{s}`")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why the catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The configured directory could not be read.
    #[error("{path}: cannot read the schedule directory ([scheduler] dir): {source}")]
    Read {
        /// Directory or file.
        path: String,
        source: std::io::Error,
    },
    /// One or more schedules are invalid; every problem is listed.
    #[error("{} schedule problem(s):\n  - {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    Invalid(Vec<Problem>),
}

/// Every schedule, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    schedules: BTreeMap<String, Schedule>,
}

impl Catalog {
    /// Loads `dir` (every `*.toml` in it) or, when `dir` is empty, the catalog embedded at
    /// build time; validates it against `registry` and `routing`.
    pub fn load(dir: &str, registry: &Registry, routing: &Routing) -> Result<Catalog, CatalogError> {
        let sources = if dir.is_empty() {
            embedded()
        } else {
            read_dir(Path::new(dir))?
        };
        Self::from_sources(&sources, registry, routing)
    }

    /// Validates `(file name, TOML text)` pairs.
    pub fn from_sources(
        sources: &[(String, String)],
        registry: &Registry,
        routing: &Routing,
    ) -> Result<Catalog, CatalogError> {
        let mut problems = Vec::new();
        let mut schedules: BTreeMap<String, Schedule> = BTreeMap::new();
        for (file, text) in sources {
            for raw in parse_file(file, text, &mut problems) {
                let Some(s) = validate(file, raw, registry, routing, &mut problems) else {
                    continue;
                };
                if let Some(first) = schedules.get(&s.name) {
                    problems.push(Problem {
                        file: file.clone(),
                        schedule: Some(s.name.clone()),
                        key: Some("name".into()),
                        message: format!("name already used in {}; names are unique across files", first.source),
                    });
                    continue;
                }
                schedules.insert(s.name.clone(), s);
            }
        }
        if problems.is_empty() {
            Ok(Catalog { schedules })
        } else {
            Err(CatalogError::Invalid(problems))
        }
    }

    /// A catalog of already validated schedules (tests build their own).
    pub fn from_schedules(list: impl IntoIterator<Item = Schedule>) -> Catalog {
        Catalog {
            schedules: list.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    /// A schedule by name.
    pub fn get(&self, name: &str) -> Option<&Schedule> {
        self.schedules.get(name)
    }

    /// Every schedule, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Schedule> {
        self.schedules.values()
    }

    /// Number of schedules.
    pub fn len(&self) -> usize {
        self.schedules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.schedules.is_empty()
    }
}

/// The catalog embedded at build time, as `(file name, text)`.
pub fn embedded() -> Vec<(String, String)> {
    EMBEDDED
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect()
}

fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, CatalogError> {
    let read_err = |path: &Path, source| CatalogError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| read_err(&p, e))?;
            Ok((p.display().to_string(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(text: &str) -> Result<Catalog, CatalogError> {
        let registry = culm_jobs::registry().expect("registry");
        let routing = Routing::from_config(&Config::defaults().expect("defaults"), &registry);
        Catalog::from_sources(&[("schedules/t.toml".into(), text.into())], &registry, &routing)
    }

    fn problems(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => Vec::new(),
            Err(CatalogError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn defaults_apply() {
        let c = load(
            "[[schedule]]\nname = \"t.a\"\ncron = \"0 * * * * *\"\njob = \"platform.noop\"\ndescription = \"x\"\n",
        )
        .expect("valid");
        let s = c.get("t.a").expect("present");
        assert_eq!(
            (s.timezone.as_str(), s.queue.as_str(), s.enabled, s.overlap, s.missed),
            ("UTC", "platform", true, Overlap::Skip, Missed::Skip)
        );
        assert_eq!(s.payload, serde_json::json!({}));
    }

    #[test]
    fn every_problem_is_listed_with_file_schedule_and_key() {
        let p = problems(
            r#"
[[schedule]]
name = "t.bad"
cron = "* * * * *"
timezone = "Nowhere/Land"
job = "platform.sleep"
payload = { ms = "long" }
queue = "nope"
description = ""

[[schedule]]
name = "t.unknown_job"
cron = "0 0 * * * *"
job = "bamboo.nope"
description = "x"
colour = "blue"

[[schedule]]
name = "t.dup"
cron = "0 0 * * * *"
job = "platform.noop"
description = "x"

[[schedule]]
name = "t.dup"
cron = "0 0 * * * *"
job = "platform.noop"
description = "x"
"#,
        );
        let has = |needle: &str| p.iter().any(|l| l.contains(needle));
        assert!(has("schedules/t.toml: schedule `t.bad`: key `cron`"), "{p:#?}");
        assert!(has("schedule `t.bad`: key `description`"), "{p:#?}");
        assert!(has("schedule `t.bad`: key `payload`"), "{p:#?}");
        assert!(has("schedule `t.bad`: key `queue`: queue `nope`"), "{p:#?}");
        assert!(has("schedule `t.unknown_job`: key `colour`"), "{p:#?}");
        assert!(has("schedule `t.dup`: key `name`: name already used"), "{p:#?}");
        // The cron problem hides the timezone one only because both come from one parse;
        // a good cron with a bad zone names the zone.
        let p = problems(
            "[[schedule]]\nname = \"t.z\"\ncron = \"0 * * * * *\"\ntimezone = \"Nowhere/Land\"\njob = \"platform.noop\"\ndescription = \"x\"\n",
        );
        assert!(p[0].contains("key `timezone`"), "{p:?}");
    }

    #[test]
    fn an_explicit_queue_of_an_allowed_tier_is_accepted() {
        // platform.noop may run in every tier, the critical one included.
        let p = problems(
            "[[schedule]]\nname = \"t.q\"\ncron = \"0 * * * * *\"\njob = \"platform.noop\"\nqueue = \"galileo\"\ndescription = \"x\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let p = problems("[[schedule]\nname = 1");
        assert!(p[0].starts_with("schedules/t.toml: invalid TOML"), "{p:?}");
    }
}
