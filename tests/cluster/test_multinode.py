"""Two Ray nodes on this machine, placed as the generated RayService places the stages.

Node A (the head) offers the head, cpu and gpu groups' custom resources (it stands in for the
capacity that survives); node B offers the cpu group's. The application is the cluster's
serveConfigV2 (its placement included), with a loopback upstream. One driver run checks that tiles
fetched on one node reach compose on the other through the object store, then kills node B, which
holds the tile cache actor and a TileFetch replica, while clients pan, and measures how the
service comes through.

Each node has its own temp dir and ports, so other Ray clusters on this machine are untouched;
only processes started here are stopped, by PID (never ``ray stop``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import yaml

from tests.service.loopback import StaticHips
from tests.service.serve_harness import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import k8s_budget
finally:
    sys.path.remove(str(ROOT / "scripts"))


def _processes_of(temp_dir: str) -> list[psutil.Process]:
    """The processes of the node whose temp dir is ``temp_dir``, and all their children."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(temp_dir in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _stop(temp_dir: str, sig: int = signal.SIGTERM) -> None:
    procs = _processes_of(temp_dir)
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _resources(*groups: k8s_budget.Group) -> str:
    merged: dict[str, float] = {}
    for g in groups:
        merged.update(g.resources)
    return json.dumps(merged)


def _ports() -> list[str]:
    # Every port a node listens on, chosen here: two nodes on one host (and other engineers'
    # clusters) must not collide on Ray's fixed defaults (52365, 10001, ...).
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")  # fmt: skip
    return [f"--{name}={free_port()}" for name in names]


def _ray_start(args: list[str], temp_dir: str, env: dict[str, str]) -> None:
    """``ray start``, tried again on a start-up timeout: on a loaded machine Ray's agents can take
    longer than the 30 s its start-up waits for them (a fresh temp dir's processes are stopped first)."""
    for attempt in (1, 2, 3):
        started = subprocess.run([RAY, "start", *args], env=env, capture_output=True, text=True, timeout=180)
        if started.returncode == 0:
            return
        _stop(temp_dir)
        if "timed out during startup" not in started.stdout + started.stderr or attempt == 3:
            pytest.fail(f"ray start {args[0]} failed: {started.stdout[-2000:]}{started.stderr[-2000:]}")


@pytest.fixture(scope="module")
def cluster(hips_dir, tmp_path_factory):
    rayservice = next(d for d in yaml.safe_load_all((ROOT / "k8s" / "rayservice.yaml").read_text()) if d)
    groups = {g.name: g for g in k8s_budget.groups(rayservice)}
    temp_a = tempfile.mkdtemp(prefix="skr-a-", dir="/tmp")
    temp_b = tempfile.mkdtemp(prefix="skr-b-", dir="/tmp")
    port = free_port()
    # Token auth stays on, with a token of this cluster's own: a fresh machine has no
    # ~/.ray/auth_token, and `ray start` with RAY_AUTH_MODE=token refuses to run without one.
    # The Ray settings the pods get (log rotation, node health checks) come from the manifest.
    ray_env = {k: v for k, v in groups["head"].env.items() if k.startswith("RAY_") and k != "RAY_AUTH_MODE"}
    assert "RAY_health_check_period_ms" in ray_env
    env = {**os.environ, **ray_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    common = ["--disable-usage-stats", "--object-store-memory=268435456", *_ports()]
    try:
        _ray_start(
            ["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
             f"--ray-client-server-port={free_port()}", "--num-cpus=3", f"--temp-dir={temp_a}",
             f"--resources={_resources(groups['head'], groups['cpu'], groups['gpu'])}", *common],
            temp_a, env,
        )  # fmt: skip
        _ray_start(
            [f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--temp-dir={temp_b}",
             f"--resources={_resources(groups['cpu'])}", "--disable-usage-stats",
             "--object-store-memory=268435456", *_ports()],
            temp_b, env,
        )  # fmt: skip
        upstream = StaticHips(hips_dir)
        yield {
            "address": f"127.0.0.1:{port}",
            "upstream": upstream,
            "temp_b": temp_b,
            "env": env,
            "scratch": str(tmp_path_factory.mktemp("scratch")),
        }
        upstream.stop()
    finally:
        _stop(temp_b)
        _stop(temp_a)
        shutil.rmtree(temp_b, ignore_errors=True)
        shutil.rmtree(temp_a, ignore_errors=True)


@pytest.fixture(scope="module")
def run(cluster):
    """One driver run: deploy, cross-node phase, node-loss phase (it kills node B itself)."""
    driver = Path(__file__).with_name("multinode_driver.py")
    out = subprocess.run(
        [sys.executable, str(driver), cluster["address"], cluster["upstream"].url, cluster["temp_b"],
         cluster["scratch"]],
        env=cluster["env"], capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-4000:] + out.stderr[-4000:]
    report = [line for line in out.stdout.splitlines() if line.startswith("NODE-LOSS")]
    print("\n" + "\n".join(report))
    return json.loads(lines[-1][len("RESULT ") :])


def test_compose_reads_tiles_fetched_on_the_other_node(cluster, run):
    out = run["cross"]
    assert out["codes"] == [200, 200]
    nodes, a, b = run["nodes"], run["node_a"], run["node_b"]
    # Placement from the manifest: Ingress and Compose can only be on A; the cache actor was
    # steered to B (A's cache slot held), so its objects live in B's object store.
    assert "skyrender-ingress" in nodes[a] and "skyrender-gpu" in nodes[a]
    assert "skyrender-gpu" not in nodes[b] and "skyrender-cache" in nodes[b]
    assert out["compose_node"] == a and out["cache"]["node_id"] == b
    # Each tile left the upstream once; both renders read every tile from the object store.
    counts = cluster["upstream"].counts
    fetched = {p: counts.get(p, 0) for p in out["tile_paths"]}
    assert all(n == 1 for n in fetched.values()), fetched
    found = len(fetched)
    assert found >= 1 and out["cache"]["puts"] == found and out["cache"]["hits"] >= found
    assert out["tiles_read_from_object_store"] == 2 * found


def test_losing_the_node_with_the_cache_and_a_fetch_replica(run):
    loss = run["loss"]
    a, b = run["node_a"], run["node_b"]
    before = loss["before"]
    assert before["cache_node"] == b
    assert b in before["replica_nodes"]["TileFetch"] and a in before["replica_nodes"]["TileFetch"]
    # Every request answered: 200 or 503; no hang. The one exception: a request sent before Ray
    # declared node B dead (4 health checks 1 s apart; longer on a loaded machine) and routed to a
    # replica there may end at its render deadline (6 s) as a 504 (docs/operations.md, Losing a node).
    statuses = loss["statuses"]
    assert set(statuses) <= {"200", "503", "504"}, json.dumps(loss, indent=1)
    dead_at = loss["seconds_to_node_declared_dead"]
    assert dead_at is not None, loss
    for start, end, status in loss["failures_s_after_kill"]:
        during_the_switch = status == "504" and start < dead_at and end - start <= 8
        assert status == "503" or during_the_switch, json.dumps(loss, indent=1)
    assert loss["requests_after_kill"] >= 20
    assert loss["max_latency_s"] < 20, loss
    assert loss["max_503_latency_s"] < 10, loss
    # No picture with holes: every 200 is byte-identical to that view's render before the kill.
    assert loss["wrong_pictures"] == 0, loss
    # Back to full service: replicas on the surviving node, the cache actor re-created there and
    # filling again, and requests answered 200 after it.
    assert loss["seconds_to_full_service"] is not None, loss
    after = loss["after"]
    assert after["replica_nodes"]["TileFetch"] == [a, a] and after["replica_nodes"]["Encode"] == [a, a]
    assert after["cache"]["node_id"] == a
    assert after["cache"]["puts"] > 0 and after["cache"]["hits"] > 0
    assert loss["ok_after_full_service"] >= 10
