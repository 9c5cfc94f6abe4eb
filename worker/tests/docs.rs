//! The docs name only things that exist: every job name they use is in the catalog
//! (`culm_jobs::registry`), and every `culm <command>` they show is a command of the
//! binary. A reader who copies an example (`culm enqueue …`, an outbox row, a client
//! call, an operations step) gets it run, not `unknown_job` or `unrecognized
//! subcommand`.
//!
//! A job name is `<family>.<action>` where `<family>` is the family of a registered job
//! type (`galileo`, `platform`, …); file names such as `galileo.rs`, host names, method
//! calls (`bamboo.uri()`), schedule names (`schedules/*.toml`) and the name a `job!`
//! declaration gives a new job type in a tutorial are not job names used.
use clap::CommandFactory;
use std::{collections::BTreeSet, path::Path};

/// The Markdown files callers and operators read, and the Python client's source (not
/// its tests, which use unknown names on purpose).
fn docs() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("clients/python/README.md"),
    ];
    for dir in ["docs", "clients/python/src/culm"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md" || e == "py"))
        .filter_map(|p| {
            Some((
                p.strip_prefix(&root).ok()?.display().to_string(),
                std::fs::read_to_string(&p).ok()?,
            ))
        })
        .collect()
}

/// Checks every item `extract` finds in the docs with `known`; lists the unknown ones.
fn check(what: &str, extract: impl Fn(&str) -> Vec<String>, known: impl Fn(&str) -> bool) {
    let mut unknown = Vec::new();
    let mut seen = 0;
    for (file, text) in docs() {
        for item in extract(&text) {
            seen += 1;
            if !known(&item) {
                unknown.push(format!("{file}: `{item}`"));
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        seen > 20,
        "found only {seen} {what} in the docs: is the extraction broken?"
    );
    assert!(unknown.is_empty(), "{what} that do not exist:\n{}", unknown.join("\n"));
}

const NOT_JOBS: &[&str] = &[
    "rs", "md", "toml", "lua", "py", "json", "yaml", "yml", "sql", "txt", "log", "com", "io",
];

/// `family.action` tokens of `text` whose family is in `families`.
fn job_names(text: &str, families: &BTreeSet<&str>) -> Vec<String> {
    let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !word(bytes[i]) || (i > 0 && (word(bytes[i - 1]) || matches!(bytes[i - 1], b'.' | b'/' | b'-' | b'@'))) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && word(bytes[i]) {
            i += 1;
        }
        let family = &text[start..i];
        if !families.contains(family) || bytes.get(i) != Some(&b'.') {
            continue;
        }
        let action_start = i + 1;
        let mut j = action_start;
        while j < bytes.len() && word(bytes[j]) {
            j += 1;
        }
        let action = &text[action_start..j];
        // A further `.x` (a host name, `mail.example.com`), a hyphen or a call is not a job name.
        let continues = bytes.get(j).is_some_and(|&b| b == b'-' || b == b'(')
            || (bytes.get(j) == Some(&b'.') && bytes.get(j + 1).is_some_and(|&b| word(b)));
        // `Name = "family.action" in "queue"`: a `job!` declaration of a new job type.
        let declared = text[..start].ends_with("= \"") && text[j..].starts_with("\" in \"");
        if !action.is_empty() && !continues && !declared && !NOT_JOBS.contains(&action) {
            out.push(format!("{family}.{action}"));
        }
        i = j;
    }
    out
}

/// Schedule names (`name = "…"` in schedules/*.toml), which look like job names.
fn schedule_names() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schedules");
    std::fs::read_dir(dir)
        .expect("schedules/")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| {
                    l.trim()
                        .strip_prefix("name = \"")?
                        .split_once('"')
                        .map(|(n, _)| n.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_job_name_in_the_docs_is_registered() {
    let registry = culm_jobs::registry().expect("catalog registers");
    let schedules = schedule_names();
    let families: BTreeSet<&str> = registry
        .iter()
        .filter_map(|s| s.name.split_once('.'))
        .map(|(f, _)| f)
        .collect();
    check(
        "job names",
        |text| job_names(text, &families),
        |name| registry.get(name).is_some() || schedules.contains(name),
    );
}

#[test]
fn the_extraction_finds_job_names_and_skips_files_and_hosts() {
    let families = BTreeSet::from(["galileo", "mail"]);
    let text = "run `galileo.transfer`, not jobs/src/galileo.rs or mail.example.com; see galileo.card_load.\n\
                X = \"galileo.new_one\" in \"galileo\" for CRITICAL; mail.uri()";
    assert_eq!(job_names(text, &families), ["galileo.transfer", "galileo.card_load"]);
}

/// Subcommand names following `culm ` where a command is written: at the start of an
/// inline code span, or in a code block at the start of a line or after `;`, `&&`, `|`,
/// `do`, `$(` or `$ `.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let name = |rest: &str| -> Option<String> {
        let n: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        (!n.is_empty()).then_some(n)
    };
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            let l = line.trim_start();
            let starts = std::iter::once(l.strip_prefix("culm ")).chain(
                ["; culm ", "&& culm ", "| culm ", "do culm ", "$(culm ", "$ culm "]
                    .iter()
                    .map(|p| l.find(p).map(|i| &l[i + p.len()..])),
            );
            out.extend(starts.flatten().filter_map(name));
        } else {
            for (i, _) in line.match_indices("`culm ") {
                out.extend(name(&line[i + 6..]));
            }
        }
    }
    out
}

#[test]
fn every_culm_command_in_the_docs_exists() {
    let cli = culm_worker::cli::Cli::command();
    let known: BTreeSet<String> = cli.get_subcommands().map(|c| c.get_name().to_owned()).collect();
    check("culm commands", commands, |c| known.contains(c));
}

#[test]
fn the_extraction_finds_commands_in_code_only() {
    let text = "culm stats in prose\n`culm stats --json`\n```sh\nculm run --queues x; culm pausex q\n```\n";
    assert_eq!(commands(text), ["stats", "run", "pausex"]);
}
