"""The KubeRay manifests in k8s/: they parse, the RayService validates against KubeRay's CRD schema the
way the API server would, serveConfigV2 is generated from serve_config.yaml, and the manifests agree
with pyproject and the Dockerfile on the Ray version, on auth, ports, probes and GPUs."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema import ValidationError

from tests.conftest import SHARED_DIR

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRD = SHARED_DIR / "schemas" / "kuberay" / "ray.io_rayservices.yaml"
TOKEN_SECRET = "skyrender-ray-token"
SERVE_PORT = 8000
METRICS_PORT = 8080


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifests() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# A JSON Schema validator that behaves like the API server on a CRD's structural schema.
#
# * Unknown fields: the API server prunes them (and `kubectl apply`'s default strict field validation
#   rejects them); plain JSON Schema accepts them. Every object schema with `properties` and neither
#   `additionalProperties` nor `x-kubernetes-preserve-unknown-fields` gets additionalProperties: false,
#   so a misspelt field fails here instead of being dropped silently in the cluster.
# * x-kubernetes-int-or-string: controller-gen already writes `anyOf: [integer, string]` next to it
#   (quantities also carry their `pattern`, which JSON Schema applies to strings only, as k8s does);
#   a bare marker without anyOf gets that anyOf.
# * x-kubernetes-list-type map/set: entries must be unique by their list-map-keys / as a whole.
# * format int32/int64: range-checked. date-time is the standard format.
# * x-kubernetes-validations (CEL) cannot be evaluated here; the CRD has three (managedBy, GCS FT
#   backend) on fields these manifests do not set, and a test asserts that.
# ---------------------------------------------------------------------------------------------


def _structural(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (_structural(v) if k not in ("enum", "required", "default") else v) for k, v in schema.items()}
    if "properties" in out and isinstance(out["properties"], dict):
        out["properties"] = {k: _structural(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def _list_map_keys(validator, keys, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    seen: set[tuple] = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in seen:
            yield ValidationError(
                f"duplicate entries for list-map keys {keys}: {dict(zip(keys, key, strict=True))}"
            )
        seen.add(key)


def _list_type(validator, list_type, instance, schema):
    if list_type != "set" or not validator.is_type(instance, "array"):
        return
    items = [json.dumps(i, sort_keys=True) for i in instance]
    if len(items) != len(set(items)):
        yield ValidationError("duplicate entries in an x-kubernetes-list-type: set")


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


K8sValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    {"x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-list-type": _list_type},
)

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.fixture(scope="module")
def raw_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "RayService"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and version["storage"]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def validator(raw_schema):
    schema = _structural(raw_schema)
    K8sValidator.check_schema(schema)
    return K8sValidator(schema, format_checker=_FORMATS)


def _errors(validator, doc) -> list[str]:
    found = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    name = doc.get("metadata", {}).get("name", "")
    if not (DNS1123_SUBDOMAIN.match(name) and len(name) <= 253):
        found.append(f"metadata/name: {name!r} is not a DNS-1123 subdomain")
    return found


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    docs = _docs(K8S / "rayservice.yaml")
    assert len(docs) == 1
    return docs[0]


def _groups(rs) -> list[dict[str, Any]]:
    cfg = rs["spec"]["rayClusterConfig"]
    return [cfg["headGroupSpec"], *cfg["workerGroupSpecs"]]


def _ray_container(group) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


def _worker(rs, name) -> dict[str, Any]:
    return next(g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == name)


def _serve_config(rs) -> dict[str, Any]:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def _deployment(config, name) -> dict[str, Any]:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


# --- parsing and schema ---------------------------------------------------------------------------


def test_every_manifest_parses():
    files = _manifests()
    names = {p.relative_to(K8S).as_posix() for p in files}
    assert {
        "rayservice.yaml",
        "service.yaml",
        "podmonitor.yaml",
        "secret-example.yaml",
        "cluster-overrides.yaml",
        "kustomization.yaml",
        "templates/rayservice.yaml",
    } <= names
    for path in files:
        docs = _docs(path)
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict), path
            if path.name != "cluster-overrides.yaml":
                assert doc.get("apiVersion") and doc.get("kind"), path


def test_kustomization_lists_only_real_resources():
    kustomization = _docs(K8S / "kustomization.yaml")[0]
    assert set(kustomization["resources"]) == {"rayservice.yaml", "service.yaml", "podmonitor.yaml"}
    for res in kustomization["resources"]:
        assert (K8S / res).is_file()


def test_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    assert kinds == ["PodMonitor", "RayService", "Service"]


def test_rayservice_validates_against_the_crd(validator, rayservice):
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    assert _errors(validator, rayservice) == []


def test_the_template_validates_too(validator):
    template = _docs(K8S / "templates" / "rayservice.yaml")[0]
    assert "serveConfigV2" not in template["spec"]
    assert _errors(validator, template) == []


def test_cel_rules_cover_fields_we_do_not_set(raw_schema, rayservice):
    """CEL (x-kubernetes-validations) is not evaluated here: make sure none applies to our fields."""
    paths: list[str] = []

    def walk(node, path):
        if isinstance(node, dict):
            if "x-kubernetes-validations" in node:
                paths.append(path)
            for key, value in node.get("properties", {}).items():
                walk(value, f"{path}/{key}")
            if isinstance(node.get("items"), dict):
                walk(node["items"], f"{path}/[]")

    walk(raw_schema, "")
    assert paths, "the CRD has CEL rules; if this changes, revisit this test"
    cfg = rayservice["spec"]["rayClusterConfig"]
    for path in paths:
        leaf = path.rsplit("/", 1)[-1]
        assert leaf in {"managedBy", "backend"}, path
    assert "managedBy" not in cfg and "gcsFaultToleranceOptions" not in cfg


@pytest.mark.parametrize(
    "what, breaks",
    [
        ("replicas of the wrong type", lambda s: _wg(s, 0).__setitem__("replicas", "two")),
        ("maxReplicas as a float", lambda s: _wg(s, 1).__setitem__("maxReplicas", 4.5)),
        (
            "a misspelt field",
            lambda s: s["spec"]["rayClusterConfig"].__setitem__("enableInTreeAutoscalng", True),
        ),
        (
            "auth mode outside the enum",
            lambda s: s["spec"]["rayClusterConfig"]["authOptions"].update(mode="none"),
        ),
        ("a CPU request that is no quantity", lambda s: _res(s)["requests"].__setitem__("cpu", "lots")),
        ("a CPU request as a float", lambda s: _res(s)["requests"].__setitem__("cpu", 0.5)),
        ("a duplicate container port", lambda s: _c(s)["ports"].append({"containerPort": 8000, "name": "x"})),
        ("a port beyond int32", lambda s: _c(s)["ports"][0].__setitem__("containerPort", 2**33)),
        ("rayStartParams with a number", lambda s: _wg(s, 0)["rayStartParams"].__setitem__("num-cpus", 4)),
        (
            "serveConfigV2 as a mapping",
            lambda s: s["spec"].__setitem__("serveConfigV2", {"applications": []}),
        ),
        ("a bad object name", lambda s: s["metadata"].__setitem__("name", "Sky_Render")),
    ],
)
def test_the_validator_bites(validator, rayservice, what, breaks):
    broken = copy.deepcopy(rayservice)
    breaks(broken)
    assert _errors(validator, broken), f"{what} was accepted"


def _wg(s, i):
    return s["spec"]["rayClusterConfig"]["workerGroupSpecs"][i]


def _c(s):
    return _ray_container(s["spec"]["rayClusterConfig"]["headGroupSpec"])


def _res(s):
    return _ray_container(_wg(s, 0))["resources"]


# --- generation from serve_config.yaml ------------------------------------------------------------


def test_serve_config_v2_is_generated_from_serve_config_yaml():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_k8s.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_file(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_k8s
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    stale = tmp_path / "rayservice.yaml"
    stale.write_text((K8S / "rayservice.yaml").read_text().replace("max_replicas: 16", "max_replicas: 15"))
    monkeypatch.setattr(gen_k8s, "TARGET", stale)
    assert gen_k8s.main(["--check"]) == 1
    assert gen_k8s.main([]) == 0
    assert gen_k8s.main(["--check"]) == 0


def test_overrides_naming_an_unknown_deployment_are_rejected():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_k8s
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    base = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    with pytest.raises(gen_k8s.OverrideError):
        gen_k8s.merge_serve(
            base, {"applications": [{"name": "skyrender", "deployments": [{"name": "Compse"}]}]}
        )
    with pytest.raises(gen_k8s.OverrideError):
        gen_k8s.merge_serve(base, {"applications": [{"name": "skyrendr"}]})


def test_only_cluster_overrides_differ(rayservice):
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cluster = _serve_config(rayservice)
    lapp, capp = local["applications"][0], cluster["applications"][0]
    for key in ("name", "route_prefix", "import_path"):
        assert capp[key] == lapp[key]
    for key in ("limits", "upstream", "render"):
        assert capp["args"][key] == lapp["args"][key], key
    assert cluster["proxy_location"] == local["proxy_location"]
    assert cluster["logging_config"] == local["logging_config"]
    assert cluster["http_options"] == {**local["http_options"], "host": "0.0.0.0"}
    assert [d["name"] for d in capp["deployments"]] == [d["name"] for d in lapp["deployments"]]
    for local_dep in lapp["deployments"]:
        cluster_dep = _deployment(cluster, local_dep["name"])
        if local_dep["name"] == "Encode":
            # On the cluster each request held pulls its image into the cpu pod's object store:
            # the store's budget bounds it there (k8s/cluster-overrides.yaml).
            assert cluster_dep["max_ongoing_requests"] <= local_dep["max_ongoing_requests"]
        else:
            assert cluster_dep["max_ongoing_requests"] == local_dep["max_ongoing_requests"]
        assert (
            cluster_dep["autoscaling_config"]["max_replicas"]
            > local_dep["autoscaling_config"]["max_replicas"]
        )


def test_surveys_are_real_and_need_no_build(rayservice):
    args = _serve_config(rayservice)["applications"][0]["args"]
    assert args["build_sample_survey"] is False
    urls = [s["url"] for s in args["surveys"]]
    assert all(u.startswith(("http://", "https://", "/opt/skyrender/hips/")) for u in urls), urls
    assert not any("${" in u or "example" in u or "localhost" in u for u in urls), urls
    assert args["cache"]["disk_dir"] == "/var/cache/skyrender"


# --- versions -------------------------------------------------------------------------------------


def test_ray_versions_agree(rayservice):
    pin = re.search(r'"ray\[serve\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    dockerfile = (ROOT / "Dockerfile").read_text()
    tag = re.search(r"^ARG RAY_TAG=(\S+)$", dockerfile, re.M).group(1)
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+-py311", tag), tag
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_TAG\} AS base$", dockerfile, re.M)
    gpu_tags = set(re.findall(r"RAY_TAG=(\S+-gpu)\b", dockerfile))
    assert gpu_tags == {f"{pin}-py311-gpu"}
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == pin == tag.split("-")[0]
    import ray

    assert ray.__version__ == pin


def test_dockerfile_builds_the_sample_and_installs_the_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir ".[serve]"' in dockerfile
    assert "python -m skyrender.samples build /opt/skyrender/hips/hi4pi" in dockerfile
    for path in ("serve_config.yaml", "graph.py", "deployments/", "skyrender/"):
        assert path in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in (
        "pyproject.toml",
        "README.md",
        "serve_config.yaml",
        "graph.py",
        "deployments",
        "skyrender",
    ):
        assert needed not in ignored


# --- ports, auth, probes, GPUs, resources ---------------------------------------------------------


def test_only_the_serve_port_is_exposed(rayservice):
    cfg = rayservice["spec"]
    assert cfg["rayClusterConfig"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert "serveService" not in cfg  # KubeRay's serve Service: ports named "serve" only
    services = [d for p in _manifests() for d in _docs(p) if d.get("kind") in ("Service", "Ingress", "Route")]
    assert [s["kind"] for s in services] == ["Service"]
    for svc in services:
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert [(p["port"], p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]] == [(8000, 8000)]
        assert svc["spec"]["selector"]["ray.io/serve"] == "true"
    serve_ports = {
        p["containerPort"]
        for g in _groups(rayservice)
        for p in _ray_container(g)["ports"]
        if p["name"] == "serve"
    }
    assert serve_ports == {SERVE_PORT}


def test_selectors_match_the_pods(rayservice):
    pod_labels = [g["template"]["metadata"]["labels"] for g in _groups(rayservice)]
    service = _docs(K8S / "service.yaml")[0]
    monitor = _docs(K8S / "podmonitor.yaml")[0]
    for selector in (service["spec"]["selector"], monitor["spec"]["selector"]["matchLabels"]):
        ours = {k: v for k, v in selector.items() if not k.startswith("ray.io/")}
        assert ours and all(ours.items() <= labels.items() for labels in pod_labels)
    # KubeRay sets app.kubernetes.io/name=kuberay on Ray pods: overriding it could confuse tooling.
    assert all("app.kubernetes.io/name" not in labels for labels in pod_labels)


def test_auth_token_comes_from_the_secret(rayservice):
    cfg = rayservice["spec"]["rayClusterConfig"]
    assert cfg["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
    for group in _groups(rayservice):
        env = {e["name"]: e for e in _ray_container(group)["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        token = env["RAY_AUTH_TOKEN"]
        assert "value" not in token
        assert token["valueFrom"]["secretKeyRef"] == {"name": TOKEN_SECRET, "key": "auth_token"}
        assert "RAY_AUTH_TOKEN_PATH" not in env
    for path in _manifests():
        text = path.read_text()
        assert not re.search(r"\b[0-9a-f]{32,}\b", text), f"{path} holds something like a token"
        for doc in _docs(path):
            if doc.get("kind") == "Secret":
                assert path.name == "secret-example.yaml"
    example = _docs(K8S / "secret-example.yaml")[0]
    assert example["metadata"]["name"] == TOKEN_SECRET
    assert example["stringData"]["auth_token"].startswith("REPLACE_WITH")
    assert "openssl rand" in (K8S / "secret-example.yaml").read_text()


def test_probes(rayservice):
    cfg = rayservice["spec"]["rayClusterConfig"]
    head = _ray_container(cfg["headGroupSpec"])
    # KubeRay deploys serveConfigV2 only once the head is Ready: no app probe there (it would deadlock).
    assert "readinessProbe" not in head and "livenessProbe" not in head
    for group in cfg["workerGroupSpecs"]:
        c = _ray_container(group)
        # Readiness is /readyz (catalogue loaded, stages warm), not /healthz: an upstream outage must
        # not take pods that can still serve out of the Service.
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": SERVE_PORT}
        # Liveness is /livez (the process answers): /healthz is 503 when an upstream is down, which a
        # restart can't fix.
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": SERVE_PORT}
        assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] >= 300


def test_gpu_group_and_compose(rayservice):
    gpu = _worker(rayservice, "gpu")
    spec = gpu["template"]["spec"]
    c = _ray_container(gpu)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" == c["resources"]["requests"]["nvidia.com/gpu"]
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert "graphics" in {e["name"]: e.get("value") for e in c["env"]}["NVIDIA_DRIVER_CAPABILITIES"]
    assert c["image"].split(":")[0].endswith("-gpu")
    gpu_resources = json.loads(yaml.safe_load(gpu["rayStartParams"]["resources"]))
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert _deployment(local, "Compose")["ray_actor_options"]["num_gpus"] == 0
    compose = _deployment(_serve_config(rayservice), "Compose")
    assert compose["ray_actor_options"]["num_gpus"] == 1
    assert compose["ray_actor_options"]["resources"].keys() <= gpu_resources.keys()
    assert compose["autoscaling_config"]["max_replicas"] <= gpu["maxReplicas"]
    cpu = _worker(rayservice, "cpu")
    assert "nvidia.com/gpu" not in _ray_container(cpu)["resources"]["limits"]
    assert cpu["minReplicas"] >= 1 and cpu["maxReplicas"] > cpu["minReplicas"]


def test_resources_metrics_and_scratch_volume_everywhere(rayservice):
    cfg = rayservice["spec"]["rayClusterConfig"]
    assert cfg["enableInTreeAutoscaling"] is True and cfg["autoscalerOptions"]["resources"]
    # The head runs only the Ingress replicas (its custom resource): quarter-CPU each, up to max_replicas.
    head_cpus = float(cfg["headGroupSpec"]["rayStartParams"]["num-cpus"])
    ingress = _deployment(_serve_config(rayservice), "Ingress")
    opts, scaling = ingress["ray_actor_options"], ingress["autoscaling_config"]
    assert head_cpus == opts["num_cpus"] * scaling["max_replicas"]
    cache = _serve_config(rayservice)["applications"][0]["args"]["cache"]
    for group in _groups(rayservice):
        c = _ray_container(group)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][kind].keys()
        assert group["rayStartParams"]["metrics-export-port"] == str(METRICS_PORT)
        assert {"name": "metrics", "containerPort": METRICS_PORT} in c["ports"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["tile-cache"] == "/var/cache/skyrender"
        volume = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "tile-cache")
        assert "sizeLimit" in volume["emptyDir"]
        assert int(group["rayStartParams"]["object-store-memory"]) > 0
    # The TileCache actor is pinned by a custom resource that only the cpu group offers; its
    # object store (and every group's scratch volume) is budgeted in tests/cluster/test_budgets.py.
    cpu_resources = json.loads(yaml.safe_load(_worker(rayservice, "cpu")["rayStartParams"]["resources"]))
    assert cache["actor_resources"].keys() <= cpu_resources.keys()
    assert int(_worker(rayservice, "cpu")["rayStartParams"]["object-store-memory"]) > cache["max_bytes"]


def test_podmonitor_scrapes_the_metrics_port():
    monitor = _docs(K8S / "podmonitor.yaml")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["metrics"]
    assert endpoints[0]["path"] == "/metrics"
    # head and workers alike: no node-type restriction
    assert "ray.io/node-type" not in monitor["spec"]["selector"].get("matchLabels", {})


def test_every_pod_runs_serve_as_the_replicas_do(rayservice):
    """The Serve settings serve_config.yaml gives its replicas (the front: HAProxy and direct ingress,
    the event-loop settings, the drain period, niceness) are on every pod too: Serve's controller and
    HAProxy read them from the node, not from the application's runtime_env."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from node_env import node_env

    wanted = node_env(ROOT / "serve_config.yaml")
    assert wanted["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and wanted["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    for group in _groups(rayservice):
        env = {e["name"]: e.get("value") for e in _ray_container(group)["env"]}
        assert {k: env.get(k) for k in wanted} == wanted, group.get("groupName", "head")
