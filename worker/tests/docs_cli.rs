//! Every `culm <command>` the docs show (in inline code or in code blocks) is a command
//! the binary has: a reader who copies one gets it run, not `unrecognized subcommand`.
use clap::CommandFactory;
use std::{collections::BTreeSet, path::Path};

fn docs() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("clients/python/README.md"),
    ];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        files.extend(entries.flatten().map(|e| e.path()));
    }
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .filter_map(|p| {
            Some((
                p.strip_prefix(&root).ok()?.display().to_string(),
                std::fs::read_to_string(&p).ok()?,
            ))
        })
        .collect()
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
    let mut unknown = Vec::new();
    let mut seen = 0;
    for (file, text) in docs() {
        for c in commands(&text) {
            seen += 1;
            if !known.contains(&c) {
                unknown.push(format!("{file}: `culm {c}`"));
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        seen > 20,
        "found only {seen} culm commands in the docs: is the extraction broken?"
    );
    assert!(
        unknown.is_empty(),
        "commands `culm` does not have:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_extraction_finds_commands_in_code_only() {
    let text = "culm stats in prose\n`culm stats --json`\n```sh\nculm run --queues x; culm pausex q\n```\n";
    assert_eq!(commands(text), ["stats", "run", "pausex"]);
}
