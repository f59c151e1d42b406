"""Start the real Serve application from ``serve_config.yaml`` on loopback, for tests.

This is what ``serve run serve_config.yaml`` does (deploy the config's applications on a
Serve instance), with the test's overrides: a free HTTP port, the test's surveys, and a
Ray cluster started here and shut down after the module.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

# For modules that test correctness, not deadlines: a busy machine's cold first renders get 30 s.
SLOW_MACHINE_DEADLINES = {"deadline_s": 30.0, "max_deadline_s": 30.0, "hips2fits_deadline_s": 30.0}


#: Where the tests' ports come from: above Ray's worker ports (10002-19999) and below Serve's direct
#: ingress ports (30000-31000, 40000-41000) and the kernel's ephemeral range (32768-60999). A
#: port the kernel hands out for ``bind(0)`` can be taken again in the seconds before the front
#: binds it, by any of Ray's processes binding or connecting (seen once: HAProxy's "Address
#: already in use" at a benchmark's start).
_TEST_PORTS = range(20000, 30000)


#: The caller's own setting, if any (a module reading metrics sets 1 s for its cluster only).
_METRICS_INTERVAL_MS = os.environ.get("RAY_metrics_report_interval_ms")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that nothing else here picks at random."""
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(_TEST_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_TEST_PORTS}")


def load_config() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def scrape_metrics(port: int) -> dict[str, list]:
    """The Prometheus samples Ray exports on ``port``, by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def ingress_log_record(request_id: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The ingress's JSON log line of the render with ``request_id``, or None after ``timeout_s``."""
    import glob
    import json

    import ray

    # This cluster's session (session_latest may be another test run's on a shared machine).
    session = ray._private.worker._global_node.get_session_dir_path()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in glob.glob(f"{session}/logs/serve/replica_skyrender_Ingress_*.log"):
            for line in open(path, encoding="utf-8", errors="replace"):
                if request_id in line and "tiles_requested" in line:
                    return json.loads(json.loads(line)["message"])
        time.sleep(0.5)
    return None


class ServeApp:
    """A running Serve application; ``url`` is its HTTP base URL."""

    def __init__(
        self,
        args: dict[str, Any],
        *,
        deployments: dict[str, dict[str, Any]] | None = None,
        metrics_port: int | None = None,
        timeout_s: float = 180.0,
    ):
        import ray
        from ray import serve
        from ray.serve._private import api as serve_api
        from ray.serve.schema import ServeDeploySchema

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = load_config()
        config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": self.port}
        app = config["applications"][0]
        # Each test module gets its own disk-cache directory unless it names one.
        self.cache_dir = tempfile.mkdtemp(prefix="skyrender-cache-")
        app["args"] = _merge(_merge(app["args"], {"cache": {"disk_dir": self.cache_dir}}), args)
        for dep in app["deployments"]:
            dep.update((deployments or {}).get(dep["name"], {}))
        self.config = config
        # A module that reads the metrics gets them each second; the others (and the benchmarks)
        # run with Ray's default (10 s), as the service does: each report costs every process CPU.
        if metrics_port is not None:
            os.environ["RAY_metrics_report_interval_ms"] = "1000"
        elif _METRICS_INTERVAL_MS is None:
            os.environ.pop("RAY_metrics_report_interval_ms", None)
        else:
            os.environ["RAY_metrics_report_interval_ms"] = _METRICS_INTERVAL_MS
        # The nodes get Serve's settings the application gives its replicas (as k8s/ sets them on
        # the pods), so that the proxies started here run like the cluster's.
        for name, value in app.get("runtime_env", {}).get("env_vars", {}).items():
            if name.startswith("RAY_SERVE_") or name == "RAY_worker_niceness":
                os.environ.setdefault(name, str(value))
        init_kwargs: dict[str, Any] = {
            "num_cpus": 4,  # logical CPUs: fractional replicas fit; the machine has 2 cores
            "include_dashboard": False,
            "namespace": "serve",
            "log_to_driver": False,
        }
        if metrics_port is not None:
            init_kwargs["_metrics_export_port"] = metrics_port
        for attempt in range(3):
            try:
                ray.init(**init_kwargs)
                break
            except Exception as exc:  # a raylet slow to register on a loaded machine: try again
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
                ray.shutdown()
        client = serve_api.serve_start(http_options=config["http_options"])
        client.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
        deadline = time.monotonic() + timeout_s
        names = [a["name"] for a in config["applications"]]  # the probe applications too
        while True:
            statuses = serve.status().applications
            pending = [n for n in names if n not in statuses or statuses[n].status != "RUNNING"]
            if not pending:
                break
            bad = ("DEPLOY_FAILED", "UNHEALTHY")
            failed = [statuses[n] for n in pending if n in statuses and statuses[n].status in bad]
            if failed:
                self.close()
                raise RuntimeError(f"application failed: {failed[0].message}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"applications {pending} not RUNNING after {timeout_s} s")
            time.sleep(0.5)
        self.client = httpx.Client(base_url=self.url, timeout=60.0)
        # The proxy may need a moment after RUNNING.
        for _ in range(100):
            try:
                self.client.get("/openapi.json")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        # /healthz's application answers from the ingress's latest answer: wait for its first, as
        # a caller of the started service gets (until then a 503 "ingress not answering").
        while time.monotonic() < deadline:
            try:
                if self.client.get("/healthz").json().get("error") != "ingress not answering":
                    break
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.2)

    def compose_renders(self, timeout_s: float = 10.0) -> int:
        """Compose's render count, asked live (``Cache-Control: no-cache``): /healthz otherwise
        reports the last answer it has, which may predate the renders a test just made."""
        until = time.monotonic() + timeout_s
        while True:
            compose = self.client.get("/healthz", headers={"Cache-Control": "no-cache"}).json()["compose"]
            if "renders" in compose and "age_s" not in compose:
                return int(compose["renders"])
            if time.monotonic() > until:
                raise AssertionError(f"Compose never answered /healthz live: {compose}")
            time.sleep(0.1)

    def close(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(self.cache_dir, ignore_errors=True)
