"""Driver for test_multinode: deploys serve_config.yaml on a running two-node cluster, sends
real requests, prints the service's counters as JSON, and shuts Serve down.

Run in its own process so that RAY_AUTH_MODE=token applies from Ray's first import.
Usage: python multinode_driver.py RAY_ADDRESS UPSTREAM_URL
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]


def main(address: str, upstream: str) -> int:
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    sys.path.insert(0, str(ROOT))
    from tests.service.serve_harness import free_port

    http_port = free_port()
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"  # both nodes share this host's ports
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    app_cfg = config["applications"][0]
    app_cfg["args"].update(
        surveys=[{"name": "dss2-red", "url": f"{upstream}/cds-dss2-red"}], build_sample_survey=False
    )
    app_cfg["args"]["cache"]["disk_enabled"] = False  # the object store is what is under test
    placement = {"Compose": {"render_gpu": 1}, "TileFetch": {"fetch_node": 1}, "Ingress": {"fetch_node": 1},
                 "Encode": {"fetch_node": 1}}  # fmt: skip
    for dep in app_cfg["deployments"]:
        dep["autoscaling_config"].update(min_replicas=1, max_replicas=1)
        dep["ray_actor_options"]["resources"] = placement[dep["name"]]
    ray.init(address=address, namespace="serve", log_to_driver=False)
    try:
        client = serve_api.serve_start(http_options=config["http_options"], proxy_location="HeadOnly")
        client.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
        deadline = time.monotonic() + 240
        while True:
            status = serve.status().applications.get("skyrender")
            if status is not None and status.status == "RUNNING":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"not running: {status}")
            time.sleep(1)
        http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60)
        for _ in range(50):
            try:
                http.get("/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        field = {"ra": 266.4, "dec": -28.9, "fovDeg": 3.0, "width": 256, "height": 256}
        manifest = http.post("/v1/tile-manifest", json=field).json()
        codes = [http.post("/v1/preview", json=field).status_code,
                 http.post("/v1/preview", json={**field, "colormap": "gray"}).status_code]  # fmt: skip
        out = {
            "nodes": {n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]},
            "tile_paths": [httpx.URL(t["url"]).path for t in manifest["tiles"]],
            "codes": codes,
            "health": http.get("/healthz").json(),
            "cache": http.get("/v1/stats").json()["cache"],
        }
        print("RESULT " + json.dumps(out))
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
