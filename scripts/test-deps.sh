#!/usr/bin/env bash
# Installs the system packages the tests need beyond the services, when they are missing:
# libfaketime (Debian's faketime), which the delivery tests preload into a replica to run
# it with a clock that is ahead; headless Chromium and its WebDriver (Debian's chromium
# and chromium-driver), which the dashboard's browser tests drive. Safe to run
# repeatedly; installs only as root with apt.
set -euo pipefail

missing=()
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || missing+=(faketime)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing packages: ${missing[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
fi
