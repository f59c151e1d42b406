#!/usr/bin/env bash
# Regenerate src/schema.d.ts from docs/openapi.json (run after the API changes; commit the result).
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules ] || npm ci --no-audit --no-fund
npm run --silent generate
