"""The KubeRay manifests: they parse, validate against the RayService CRD, and agree with
serve_config.yaml, pyproject and the Dockerfile."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import SHARED_DIR

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def crd_schema():
    crd = yaml.safe_load((SHARED_DIR / "schemas" / "kuberay" / "ray.io_rayservices.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def rayservice():
    return _docs(K8S / "rayservice.yaml")[0]


def _validate(schema, doc) -> None:
    # k8s "int-or-string" fields carry x-kubernetes-int-or-string with no type; plain JSON
    # Schema then accepts anything there, which is what Kubernetes accepts too.
    jsonschema.Draft7Validator(schema).validate(doc)


def test_every_manifest_parses():
    files = sorted(K8S.glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        for doc in _docs(path):
            assert "apiVersion" in doc or path.name.startswith("cluster-overrides"), path


def test_rayservice_validates_against_the_crd(crd_schema, rayservice):
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    _validate(crd_schema, rayservice)


def test_the_validator_bites(crd_schema, rayservice):
    broken = copy.deepcopy(rayservice)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        _validate(crd_schema, broken)
    broken = copy.deepcopy(rayservice)
    broken["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "none"
    with pytest.raises(jsonschema.ValidationError):
        _validate(crd_schema, broken)


def test_serve_config_is_generated_from_serve_config_yaml():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_k8s.py"), "--check"], capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()


def test_cluster_overrides_only(rayservice):
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cluster = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    lapp, capp = local["applications"][0], cluster["applications"][0]
    assert capp["import_path"] == lapp["import_path"] == "graph:build_app"
    assert (
        capp["args"]["limits"] == lapp["args"]["limits"]
        and capp["args"]["upstream"] == lapp["args"]["upstream"]
    )
    compose_local = next(d for d in lapp["deployments"] if d["name"] == "Compose")
    compose_cluster = next(d for d in capp["deployments"] if d["name"] == "Compose")
    assert compose_local["ray_actor_options"]["num_gpus"] == 0
    assert compose_cluster["ray_actor_options"]["num_gpus"] == 1
    assert [d["name"] for d in capp["deployments"]] == [d["name"] for d in lapp["deployments"]]


def test_ray_versions_agree(rayservice):
    pin = re.search(r'"ray\[serve\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    image = re.search(r"ARG RAY_IMAGE=rayproject/ray:([0-9.]+)-py", (ROOT / "Dockerfile").read_text()).group(
        1
    )
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == pin == image
    import ray

    assert ray.__version__ == pin


def test_gpu_group_and_probes(rayservice):
    cfg = rayservice["spec"]["rayClusterConfig"]
    gpu = next(g for g in cfg["workerGroupSpecs"] if g["groupName"] == "gpu")
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["template"]["spec"]["tolerations"] and gpu["template"]["spec"]["nodeSelector"]
    head = cfg["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    assert head["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for group in [cfg["headGroupSpec"], *cfg["workerGroupSpecs"]]:
        c = group["template"]["spec"]["containers"][0]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert any(p["containerPort"] == 8080 for p in c["ports"])  # metrics export port
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        assert any(v["mountPath"] == "/var/cache/skyrender" for v in c["volumeMounts"])


def test_only_http_is_exposed_and_auth_stays_on(rayservice):
    cfg = rayservice["spec"]["rayClusterConfig"]
    assert cfg["authOptions"]["mode"] == "token" and cfg["authOptions"]["secretName"]
    assert cfg["headGroupSpec"]["serviceType"] == "ClusterIP"
    for path in K8S.glob("*.yaml"):
        for doc in _docs(path):
            if doc.get("kind") == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
                assert [p["port"] for p in doc["spec"]["ports"]] == [8000]
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml") if p.name != "secret-example.yaml")
    assert "auth_token:" not in text  # no literal token outside the example
    example = _docs(K8S / "secret-example.yaml")[0]
    assert example["stringData"]["auth_token"] == "REPLACE_WITH_A_RANDOM_TOKEN"


def test_podmonitor_scrapes_the_metrics_port():
    monitor = _docs(K8S / "podmonitor.yaml")[0]
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
