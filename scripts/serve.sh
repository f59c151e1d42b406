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
exec .venv/bin/serve run serve_config.yaml "$@"
