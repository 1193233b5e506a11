#!/usr/bin/env bash
# Unpacks Debian's `prometheus` package (prometheus and promtool) into DEST for the
# integration tests. Only the files are extracted: no maintainer script runs, so no system
# service is installed or started and no user is created. Does nothing when DEST already
# holds the binaries.
set -euo pipefail
dest="$(realpath -m "${1:-.venv/prometheus}")"
if [ -x "$dest/usr/bin/prometheus" ] && [ -x "$dest/usr/bin/promtool" ]; then
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt's package lists may be missing or stale on a fresh machine: refresh them only then.
if ! apt-get download prometheus >/dev/null 2>&1; then
    apt-get update -qq
    apt-get download prometheus >/dev/null
fi
mkdir -p "$dest"
dpkg-deb -x prometheus_*.deb "$dest"
"$dest/usr/bin/prometheus" --version | head -1
