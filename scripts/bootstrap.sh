#!/usr/bin/env bash
# Create ./.venv with Python 3.11 and install skyrender with the extras given (default: serve,sample).
# Idempotent: a second run only checks. Usage: bash scripts/bootstrap.sh [extras]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve,sample}"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".[${extras}]"
  touch "$stamp"
fi
