#!/usr/bin/env bash
# The test command (README and CI run exactly this): starts local services if needed,
# then runs the whole workspace's tests against the real Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/test-deps.sh
cargo build --locked -p culm-worker --bin culm
exec cargo nextest run --locked --workspace --no-fail-fast "$@"
