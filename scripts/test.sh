#!/usr/bin/env bash
# The test command (README and CI run exactly this): starts local services if needed,
# runs the whole workspace's tests against the real Redis with nextest, then the
# doctests, which nextest skips (they include the README's Rust examples, through
# tests/src/lib.rs), then the Python client's pytest suite (scripts/test-python.sh).
# Every stage runs even when an earlier one failed; the exit status is the first
# failure's. The doctests' line sums the doctests of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/test-deps.sh
cargo build --locked -p culm-worker --bin culm
status=0
cargo nextest run --locked --workspace --no-fail-fast "$@" || status=$?
doc_log=$(mktemp)
trap 'rm -f "$doc_log"' EXIT
cargo test --locked --doc --workspace 2>&1 | tee "$doc_log" || status=$((status == 0 ? $? : status))
# One closing line for every crate's doctests (the last crate alone may have none).
{ grep -oE '[0-9]+ passed; [0-9]+ failed' "$doc_log" || true; } |
  awk '{p += $1; f += $3} END {printf "doctests: %d passed, %d failed\n", p, f}'
bash scripts/test-python.sh || status=$((status == 0 ? $? : status))
exit "$status"
