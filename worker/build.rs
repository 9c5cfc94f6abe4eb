//! Embeds the schedule catalog (`schedules/*.toml` at the workspace root) into the
//! binary, so a container needs no files; `[scheduler] dir` loads from disk instead.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dir = manifest.join("..").join("schedules");
    // A directory is scanned recursively for changes, so new files trigger a rebuild.
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from(
        "/// `(file name, contents)` of every `schedules/*.toml`, sorted by name.\npub static EMBEDDED: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).expect("UTF-8 file name");
        let abs = fs::canonicalize(f).expect("schedule file exists");
        out.push_str(&format!(
            "    (\"schedules/{name}\", include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded_schedules.rs");
    fs::write(dest, out).expect("write embedded_schedules.rs");
}
