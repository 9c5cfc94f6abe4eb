#!/usr/bin/env bash
# The fault-injection soak (logic in tests/src/bin/culm-soak.rs).
#
# 100,000 platform.record jobs through two `culm run` worker processes on a throwaway
# redis-server (127.0.0.1:6390 by default, AOF with appendfsync always, temp dir; never
# the shared 6379), the workers talking to it through a fault-injecting proxy
# (tests/src/faults.rs). At random moments: one worker is SIGKILLed five times and
# restarted; Redis is SIGKILLed once and restarted from its AOF; Redis is frozen with
# SIGSTOP for 20 s (longer than the lease) and resumed with SIGCONT; the proxy drops six
# replies after their commands ran in Redis (fetch, ack, extend in turn). Prints jobs lost
# (must be 0), jobs run more than once, jobs dead-lettered, and the recovery after each
# fault; exits 1 if any job was lost.
#
# Usage: scripts/soak.sh [--release] [culm-soak options: --jobs N --rate R --port P
#        --seed S --concurrency C --sleep-ms MS --lease-ttl 3s --kills 5 --freeze-s 20
#        --drops 6 ...]  (--freeze-s 0 / --drops 0 leave those faults out)
# Loopback only; bounded by --deadline-s (default 600) and an outer timeout.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
if [[ "${1:-}" == "--release" ]]; then
  profile=release
  shift
fi
flags=()
[[ $profile == release ]] && flags=(--release)
cargo build "${flags[@]}" -p culm-worker --bin culm -p culm-tests --bin culm-soak

out=$(mktemp)
status=0
timeout -k 10 900 "target/$profile/culm-soak" --culm "target/$profile/culm" "$@" | tee "$out" || status=$?
if [[ $status -eq 0 ]] && ! grep -q '^| jobs lost | \*\*0\*\* |$' "$out"; then
  echo "soak: jobs were lost" >&2
  status=1
fi
rm -f "$out"
exit $status
