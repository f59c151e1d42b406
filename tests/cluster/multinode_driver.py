"""Driver for test_multinode: deploys the cluster's serveConfigV2 (from k8s/rayservice.yaml, its
placement included) on a running two-node cluster, checks tiles cross nodes, then kills node B
(which holds the tile cache actor and a TileFetch replica) while clients pan, and prints what the
clients saw as JSON.

Run in its own process so that RAY_AUTH_MODE=token applies from Ray's first import.
Usage: python multinode_driver.py RAY_ADDRESS UPSTREAM_URL NODE_B_TEMP_DIR SCRATCH_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[2]
APP = "skyrender"
FIELD = {"ra": 266.4, "dec": -28.9, "fovDeg": 3.0, "width": 256, "height": 256}
#: The pan: small steps around the field (every view fully covered by the shared tiles).
VIEWS = [{"ra": 266.4 + dx, "dec": -28.9 + dy, "fovDeg": 1.0, "width": 256, "height": 256}
         for dx in (-0.3, 0.0, 0.3) for dy in (-0.2, 0.2)]  # fmt: skip
CLIENTS = 3
LOAD_BEFORE_KILL_S = 3.0
MAX_RECOVERY_S = 120.0  # give up (and fail) if full service is not back by then
AFTER_FULL_SERVICE_S = 4.0


def cluster_config(upstream: str, scratch: str, http_port: int) -> dict:
    """The cluster's serveConfigV2 with what one machine needs changed, placement kept."""
    rayservice = next(d for d in yaml.safe_load_all((ROOT / "k8s" / "rayservice.yaml").read_text()) if d)
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config["proxy_location"] = "HeadOnly"  # both nodes share this host's ports
    config["http_options"] = {"host": "127.0.0.1", "port": http_port, "request_timeout_s": 30}
    app = config["applications"][0]
    app["args"]["surveys"] = [
        {"name": "dss2-red", "url": f"{upstream}/cds-dss2-red"},
        {"name": "planck", "url": f"{upstream}/cds-planck-hfi143"},  # warm-up only: other tiles
    ]
    app["args"]["build_sample_survey"] = False
    app["args"]["cache"].update(max_bytes=128 * 2**20, disk_dir=scratch, disk_max_bytes=64 * 2**20)
    replicas = {"Ingress": 1, "TileFetch": 2, "Compose": 1, "Encode": 2}
    for dep in app["deployments"]:
        n = replicas[dep["name"]]
        dep["autoscaling_config"].update(min_replicas=n, max_replicas=n)
        if dep["name"] == "Compose":  # the GPU is what this machine lacks: keep its custom resource
            dep["ray_actor_options"].update(num_cpus=0.5, num_gpus=0)
    return config


def cache_stats(http: httpx.Client, deadline_s: float = 60.0) -> dict:
    """The tile cache's counters, polled until the actor answers (a loaded machine can be slow)."""
    end = time.monotonic() + deadline_s
    while True:
        stats = http.get("/v1/stats").json()["cache"]
        if "puts" in stats or time.monotonic() > end:
            return stats
        time.sleep(0.5)


def live_compose(http: httpx.Client) -> dict:
    """Compose's answer in /healthz asked now (``Cache-Control: no-cache``), not the last one
    reported: counts read just after renders must be live."""
    return http.get("/healthz", headers={"Cache-Control": "no-cache"}).json()["compose"]


def replica_nodes() -> dict[str, list[str]]:
    """Deployment -> node ids of its ALIVE replicas (from the GCS: no dashboard needed)."""
    from ray._private import state

    out: dict[str, list[str]] = {}
    for info in state.actors(actor_state_name="ALIVE").values():
        name = info.get("ActorClassName", "")
        if name.startswith(f"ServeReplica:{APP}:"):
            out.setdefault(name.rsplit(":", 1)[1], []).append(info["Address"]["NodeID"])
    return {k: sorted(v) for k, v in out.items()}


def cache_actor_node(name: str) -> str | None:
    from ray._private import state

    for info in state.actors(actor_state_name="ALIVE").values():
        if info.get("Name") == name:
            return info["Address"]["NodeID"]
    return None


def kill_node(temp_dir: str) -> int:
    """SIGKILL every process of node B (raylet, agents, workers): a node lost at once."""
    procs: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(temp_dir in part for part in proc.info["cmdline"] or []):
                procs[proc.pid] = proc
                for child in proc.children(recursive=True):
                    procs[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in procs.values():
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return len(procs)


class Panner:
    """Clients panning over VIEWS; every answer is recorded with its time and picture."""

    def __init__(self, base_url: str, reference: dict[int, tuple[str, str]]):
        self.base_url, self.reference = base_url, reference
        self.results: list[dict] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _loop(self, offset: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=40) as http:
            i = offset
            while not self._stop.is_set():
                view = i % len(VIEWS)
                i += 1
                start = time.monotonic()
                try:
                    r = http.post("/v1/preview", json=VIEWS[view])
                    status = str(r.status_code)
                    digest = hashlib.sha256(r.content).hexdigest() if r.status_code == 200 else ""
                    tiles = r.headers.get("X-Tiles-Used", "")
                    detail = "" if r.status_code == 200 else r.text[:200]
                except httpx.HTTPError as exc:
                    status, digest, tiles, detail = type(exc).__name__, "", "", str(exc)[:200]
                end = time.monotonic()
                wrong = status == "200" and (digest, tiles) != self.reference[view]
                with self._lock:
                    self.results.append({"start": start, "end": end, "status": status, "wrong": wrong,
                                         "detail": detail})  # fmt: skip


def main(address: str, upstream: str, temp_b: str, scratch: str) -> int:
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    sys.path.insert(0, str(ROOT))
    from tests.service.serve_harness import free_port

    http_port = free_port()
    config = cluster_config(upstream, scratch, http_port)
    cache_name = config["applications"][0]["args"]["cache"]["name"]
    ray.init(address=address, namespace="serve", log_to_driver=False)
    node_a = ray.get_runtime_context().get_node_id()  # the driver is on the head, node A
    nodes = {n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]}
    (node_b,) = [n for n in nodes if n != node_a]
    out: dict = {"nodes": nodes, "node_a": node_a, "node_b": node_b}

    @ray.remote(num_cpus=0)
    class Seat:
        """Holds node A's tile-cache slot while the app starts, so the cache actor lands on B."""

        def ping(self) -> bool:
            return True

    on_a = NodeAffinitySchedulingStrategy(node_a, soft=False)
    seat = Seat.options(resources={"skyrender-cache": 1}, scheduling_strategy=on_a).remote()
    ray.get(seat.ping.remote(), timeout=60)
    try:
        client = serve_api.serve_start(http_options=config["http_options"], proxy_location="HeadOnly")
        client.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
        deadline = time.monotonic() + 240
        while True:
            status = serve.status().applications.get(APP)
            if status is not None and status.status == "RUNNING":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"not running: {status}")
            time.sleep(1)
        base = f"http://127.0.0.1:{http_port}"
        http = httpx.Client(base_url=base, timeout=60)
        for _ in range(100):
            try:
                if http.get("/v1/stats").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        # Warm every stage on another survey's tiles (a cold first render on a loaded machine can
        # pass the deadline), then count only what phase 1 adds.
        for _ in range(5):
            if http.post("/v1/preview", json={**FIELD, "survey": "planck"}).status_code == 200:
                break
        stats0 = cache_stats(http)
        reads0 = live_compose(http)["tiles_read_from_object_store"]

        # --- phase 1: a tile fetched on one node is read by compose on the other -----------
        manifest = http.post("/v1/tile-manifest", json=FIELD).json()
        codes = [http.post("/v1/preview", json=FIELD).status_code,
                 http.post("/v1/preview", json={**FIELD, "colormap": "gray"}).status_code]  # fmt: skip
        health = {"compose": live_compose(http)}
        stats1 = cache_stats(http)
        out["cross"] = {
            "codes": codes,
            "tile_paths": [httpx.URL(t["url"]).path for t in manifest["tiles"]],
            "compose_node": health["compose"]["node_id"],
            "tiles_read_from_object_store": health["compose"]["tiles_read_from_object_store"] - reads0,
            "cache": {**stats1, **{k: stats1[k] - stats0[k] for k in ("puts", "hits")}},
        }
        ray.kill(seat)  # node A may hold the cache actor again (after B is lost)

        # --- phase 2: the reference pictures, then node B lost while clients pan -------------
        reference = {}
        for i, view in enumerate(VIEWS):
            r = http.post("/v1/preview", json=view)
            assert r.status_code == 200, r.text
            reference[i] = (hashlib.sha256(r.content).hexdigest(), r.headers.get("X-Tiles-Used", ""))
        for view in VIEWS:  # warm: the renders now read their tiles from the cache on B
            http.post("/v1/preview", json=view)
        before = {"replica_nodes": replica_nodes(), "cache_node": cache_actor_node(cache_name),
                  "cache": cache_stats(http)}  # fmt: skip
        panner = Panner(base, reference)
        panner.start()
        time.sleep(LOAD_BEFORE_KILL_S)
        killed = kill_node(temp_b)
        t_kill = time.monotonic()
        t_full = t_dead = None
        stats: dict = {}
        while time.monotonic() - t_kill < MAX_RECOVERY_S:
            time.sleep(0.5)
            if t_dead is None and not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == node_b):
                t_dead = time.monotonic()
            nodes_now = replica_nodes()
            app = serve.status().applications.get(APP)
            try:
                stats = httpx.get(f"{base}/v1/stats", timeout=5).json().get("cache", {})
            except (httpx.HTTPError, ValueError):
                stats = {}
            full = (
                app is not None
                and app.status == "RUNNING"
                and nodes_now.get("TileFetch") == [node_a, node_a]
                and nodes_now.get("Encode") == [node_a, node_a]
                and cache_actor_node(cache_name) == node_a
                and stats.get("node_id") == node_a
                and stats.get("puts", 0) > 0
                and stats.get("hits", 0) > 0
            )
            if full:
                t_full = time.monotonic()
                break
        if t_full is not None:
            time.sleep(AFTER_FULL_SERVICE_S)
        panner.stop()
        results = panner.results
        after_kill = [r for r in results if r["end"] >= t_kill]
        failed = [r for r in after_kill if r["status"] != "200"]
        lat_503 = [r["end"] - r["start"] for r in results if r["status"] == "503"]
        out["loss"] = {
            "processes_killed": killed,
            "before": before,
            "requests": len(results),
            "requests_after_kill": len(after_kill),
            "statuses": dict(Counter(r["status"] for r in results)),
            "failed_by_status": dict(Counter(r["status"] for r in failed)),
            "failure_details": sorted({r["detail"] for r in failed})[:5],
            "wrong_pictures": sum(r["wrong"] for r in results),
            "max_latency_s": round(max(r["end"] - r["start"] for r in results), 2),
            "max_503_latency_s": round(max(lat_503, default=0.0), 2),
            "seconds_to_full_service": None if t_full is None else round(t_full - t_kill, 1),
            "seconds_to_node_declared_dead": None if t_dead is None else round(t_dead - t_kill, 1),
            "failures_s_after_kill": sorted(
                (round(r["start"] - t_kill, 1), round(r["end"] - t_kill, 1), r["status"]) for r in failed
            ),
            "seconds_to_last_failure": round(max((r["end"] - t_kill for r in failed), default=0.0), 1),
            "ok_after_full_service": sum(1 for r in results if t_full and r["start"] >= t_full
                                         and r["status"] == "200"),  # fmt: skip
            "after": {"replica_nodes": replica_nodes(), "cache": stats},
        }
        loss = out["loss"]
        print(
            f"NODE-LOSS: {loss['requests_after_kill']} requests answered after the kill of node B "
            f"({killed} processes: cache actor, TileFetch and Encode replicas); failed by status: "
            f"{loss['failed_by_status'] or 'none'}; pictures with holes: {loss['wrong_pictures']}; "
            f"slowest answer {loss['max_latency_s']} s (slowest 503 {loss['max_503_latency_s']} s); "
            f"last failure {loss['seconds_to_last_failure']} s after the kill; full service "
            f"(replicas and cache actor back on node A, cache filling) after "
            f"{loss['seconds_to_full_service']} s; failures: {loss['failure_details']}"
        )
        # What the surviving node's logs say happened (the ingress logs each retried render).
        logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
        serve_logs = "".join(p.read_text(errors="replace") for p in logs.glob("serve/replica_*.log"))
        loss["renders_retried"] = serve_logs.count("died during a render; retrying once")
        loss["tile_losses_seen_by_compose"] = serve_logs.count("tiles lost from the object store")
        loss["log_files_node_a"] = sum(1 for p in logs.rglob("*") if p.is_file())
        loss["warnings"] = [
            line[:400] for line in serve_logs.splitlines() if '"WARNING"' in line or " WARNING " in line
        ][-25:]
        print(
            f"NODE-LOSS: node B declared dead {loss['seconds_to_node_declared_dead']} s after the kill; "
            f"renders retried by the ingress: {loss['renders_retried']}; tiles lost at compose: "
            f"{loss['tile_losses_seen_by_compose']}; serve warnings: {len(loss['warnings'])}; "
            f"log files on node A: {loss['log_files_node_a']}"
        )
        print("RESULT " + json.dumps(out))
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
