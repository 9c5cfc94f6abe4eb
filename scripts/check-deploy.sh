#!/usr/bin/env bash
# Validates deploy/: alert rules with promtool, the dashboard as JSON, every YAML file
# parses, kustomize renders (when kubectl is installed). The deep checks (commands parse
# with the real CLI, probes, secrets, metric names, a live /metrics scrape through
# `promtool check metrics`) are in tests/tests/deploy.rs, which CI runs with the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v promtool >/dev/null 2>&1 || {
  echo "promtool is missing: run scripts/services.sh (installs Debian's prometheus package)" >&2
  exit 1
}
promtool check rules deploy/prometheus/alerts.yml

python3 -m json.tool deploy/grafana/culm.json >/dev/null
echo "deploy/grafana/culm.json: valid JSON"

if python3 -c 'import yaml' 2>/dev/null; then
  find deploy -name '*.yaml' -o -name '*.yml' | sort | while read -r f; do
    python3 -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$f"
  done
  echo "deploy/**/*.yaml: valid YAML"
fi

if command -v kubectl >/dev/null 2>&1; then
  for overlay in deploy/kubernetes/base deploy/kubernetes/keda; do
    kubectl kustomize "$overlay" >/dev/null
    echo "$overlay: kustomize renders"
  done
fi

# Every culm_* metric the dashboard, alerts and KEDA use is defined in telemetry.rs or,
# for the integration metrics, in jobs/src/http/metrics.rs.
known=$(grep -ho '"culm_[a-z0-9_]*"' worker/src/telemetry.rs jobs/src/http/metrics.rs | tr -d '"' | sort -u)
used=$(grep -rhoE 'culm_[a-z0-9_]+' deploy/grafana deploy/prometheus deploy/kubernetes/keda \
  | grep -v '_$' | sed -E 's/_(bucket|count|sum)$//' | sort -u)
missing=$(comm -13 <(echo "$known") <(echo "$used") || true)
if [ -n "$missing" ]; then
  echo "deploy/ references metrics culm does not export:" >&2
  echo "$missing" >&2
  exit 1
fi
echo "deploy/: every referenced metric is exported"
