#!/usr/bin/env bash
# Install what the tests need (venv, Python packages, Mesa's CPU Vulkan driver for the wgpu
# path) and run lint, the test suite and the benchmarks in short mode.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s mesa-vulkan-drivers >/dev/null 2>&1; then
  # lavapipe gives wgpu a real Vulkan adapter on the CPU, so CI exercises the GPU code path.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1) \
    >/dev/null || echo "warning: could not install mesa-vulkan-drivers; the wgpu tests will fail" >&2
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s chromium-driver >/dev/null 2>&1; then
  # The viewer's tests drive Debian's headless Chromium through Selenium (no browser download).
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >/dev/null || echo "warning: could not install chromium; the viewer tests will fail" >&2
fi
bash scripts/bootstrap.sh test
export XDG_RUNTIME_DIR="$(mktemp -d)"  # Mesa wants a private 0700 runtime dir
trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
.venv/bin/python bench/bench_core.py --short
.venv/bin/python bench/bench_service.py --short
.venv/bin/python bench/bench_layers.py --short
.venv/bin/python bench/bench_viewer.py --short
.venv/bin/python bench/overload.py --short
