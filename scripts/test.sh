#!/usr/bin/env bash
# The test command (README and CI run exactly this): starts local services if needed,
# runs the whole workspace's tests against the real Redis with nextest, then the
# doctests, which nextest skips (they include the README's Rust examples, through
# tests/src/lib.rs). The doctests run even when nextest failed; the exit status is
# nextest's failure if it failed, else the doctests'.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --locked -p culm-worker --bin culm
status=0
cargo nextest run --locked --workspace --no-fail-fast "$@" || status=$?
cargo test --locked --doc --workspace || status=$((status == 0 ? $? : status))
exit "$status"
