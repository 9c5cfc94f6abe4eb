#!/usr/bin/env bash
# Starts the local services culm needs (Redis, PostgreSQL) when they are not already up.
# Loopback only. Safe to run repeatedly.
set -euo pipefail

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
pg_up() { pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }

if ! redis_up; then
  echo "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "Redis did not start; see /var/log/redis/ci.log" >&2; exit 1; }
fi

# PostgreSQL (the ledger, archive and outbox tests need it): installed on a fresh machine
# where we are root, with trust for the postgres role on loopback only.
if ! command -v pg_isready >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing PostgreSQL"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  ver="$(ls /etc/postgresql | sort -V | tail -n1)"
  hba="/etc/postgresql/$ver/main/pg_hba.conf"
  sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main restart || true
fi

if command -v pg_isready >/dev/null 2>&1 && ! pg_up; then
  echo "starting PostgreSQL on 127.0.0.1:5432"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 100); do pg_up && break; sleep 0.1; done
  pg_up || echo "warning: PostgreSQL is not running (tests/tests/postgres.rs will fail)" >&2
fi
# promtool (Debian's prometheus package) validates deploy/prometheus/alerts.yml and a live
# /metrics scrape (scripts/check-deploy.sh, tests/tests/deploy.rs). Installed once; the
# Prometheus server it ships is not started.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 \
    || { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1; }; } \
    || echo "warning: could not install promtool; deploy checks will fail" >&2
  # The package's service must not run here (it would listen on :9090).
  { command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now prometheus >/dev/null 2>&1; } || true
fi
echo "services ready: redis://127.0.0.1:6379 postgres://postgres@127.0.0.1:5432"
