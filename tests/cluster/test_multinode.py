"""Two Ray nodes on this machine: compose placed on the "GPU" node by a custom resource,
fetch on the other; a tile fetched once reaches compose through the object store."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.service.loopback import StaticHips
from tests.service.serve_harness import free_port

RAY = str(Path(os.sys.executable).parent / "ray")


def _kill_cluster(temp_dir: str) -> None:
    """Stop only the processes of the cluster started here (``ray stop`` would stop every one)."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in mine:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(mine, timeout=10)
    for proc in mine:
        if proc.is_running():
            proc.kill()


@pytest.fixture(scope="module")
def cluster(hips_dir):
    temp_dir = tempfile.mkdtemp(prefix="skr-mn-", dir="/tmp")
    port = free_port()
    # Token auth stays on, with a token of this cluster's own: a fresh machine has no
    # ~/.ray/auth_token, and `ray start` with RAY_AUTH_MODE=token refuses to run without one.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    common = ["--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    started = subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
         '--resources={"fetch_node": 4}', *common],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if started.returncode != 0:
        _kill_cluster(temp_dir)
        pytest.fail(f"ray start --head failed: {started.stdout[-2000:]}{started.stderr[-2000:]}")
    try:
        subprocess.run(
            [RAY, "start", f"--address=127.0.0.1:{port}", '--resources={"render_gpu": 1}', *common[:1]],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
        upstream = StaticHips(hips_dir)
        yield {"address": f"127.0.0.1:{port}", "upstream": upstream, "temp_dir": temp_dir, "env": env}
        upstream.stop()
    finally:
        _kill_cluster(temp_dir)


def test_compose_reads_tiles_fetched_on_the_other_node(cluster):
    env = cluster["env"]
    driver = Path(__file__).with_name("multinode_driver.py")
    run = subprocess.run(
        [os.sys.executable, str(driver), cluster["address"], cluster["upstream"].url],
        env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert len(out["nodes"]) == 2 and out["codes"] == [200, 200]
    health, stats = out["health"], out["cache"]
    compose_node = health["compose"]["node_id"]
    # Placement: compose on the render_gpu node, fetch on the other. The cache actor
    # (0 CPU, only an index of references) may land on either node: the tile bytes
    # live in the object store of the node whose fetch replica called ray.put.
    assert "render_gpu" in out["nodes"][compose_node]
    assert stats["fetch_node_id"] != compose_node
    # Each tile left the upstream once; both renders read every tile from the object store.
    counts = cluster["upstream"].counts
    fetched = {p: counts.get(p, 0) for p in out["tile_paths"]}
    assert all(n <= 1 for n in fetched.values()), fetched
    found = sum(fetched.values())
    assert found >= 1
    assert stats["puts"] == found and stats["hits"] >= found
    assert health["compose"]["tiles_read_from_object_store"] == 2 * found
