#!/usr/bin/env bash
# The Python client's tests (clients/python): a virtual environment under
# target/py-venv (created when missing, python3 -m venv), the client installed with its
# test extras from PyPI, then pytest against a real `culm run` (target/debug/culm, which
# scripts/test.sh builds first) on the local Redis and PostgreSQL. The suite starts its
# own culm on a free port with its own key prefix and database.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || {
    echo "python3 -m venv failed: install python3-venv" >&2
    exit 1
  }
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q "./clients/python[test]"
# From the tests' directory, so `import culm` is the installed package, not the source tree.
cd clients/python
CULM_BIN="${CULM_BIN:-$PWD/../../target/debug/culm}" "../../$venv/bin/python" -m pytest -q -p no:cacheprovider tests
