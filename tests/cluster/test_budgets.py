"""Placement and budgets of the generated RayService: every stage lands only on the worker group
sized for it, and for every group what can land there fits its scratch volume's sizeLimit and its
object store (scripts/k8s_budget.py does the arithmetic; these tests check it and make it bite)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import gen_k8s
    import k8s_budget
finally:
    sys.path.remove(str(ROOT / "scripts"))

GiB = 2**30


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return next(d for d in yaml.safe_load_all((ROOT / "k8s" / "rayservice.yaml").read_text()) if d)


def _by_group(rs) -> dict[str, k8s_budget.Budget]:
    return {b.group.name: b for b in k8s_budget.budgets(rs)}


def _app(rs) -> dict:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]


def _set_app(rs, app) -> None:
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    cfg["applications"][0] = app
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)


def _worker(rs, name) -> dict:
    return next(g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == name)


def test_every_group_fits(rayservice):
    budgets = k8s_budget.budgets(rayservice)
    assert [b.group.name for b in budgets] == ["head", "cpu", "gpu"]
    for b in budgets:
        assert b.problems == [], k8s_budget.report(budgets)
        # Everything Ray writes is on the budgeted volume: its temp dir (logs) and its spill directory.
        items = {item for item, _, _ in b.scratch}
        assert {"Ray logs", "Ray spill"} <= items, b.group.name
        assert 0 < b.scratch_total <= b.group.size_limit_bytes
    print("\n" + k8s_budget.report(budgets))


def test_each_stage_lands_only_on_its_group(rayservice):
    groups = _by_group(rayservice)
    assert set(groups["head"].placed) == {"Ingress"} and not groups["head"].cache_actor
    assert set(groups["cpu"].placed) == {"TileFetch", "Encode"} and groups["cpu"].cache_actor
    assert set(groups["gpu"].placed) == {"Compose"} and not groups["gpu"].cache_actor
    assert groups["gpu"].placed["Compose"] == 1  # one GPU per pod
    # Serve and KubeRay agree on which resources exist: every resource a deployment or the cache
    # actor asks for is offered by some group (else it would stay PENDING_CREATION forever).
    offered = {name for g in k8s_budget.groups(rayservice) for name in g.resources}
    app = _app(rayservice)
    asked = {r for d in app["deployments"] for r in (d["ray_actor_options"].get("resources") or {})}
    asked |= set(app["args"]["cache"]["actor_resources"])
    assert asked and asked <= offered


def test_the_disk_tier_only_where_its_replicas_land(rayservice):
    groups = _by_group(rayservice)
    disk = _app(rayservice)["args"]["cache"]["disk_max_bytes"]
    assert ("disk tile tier", disk) in [(i, n) for i, n, _ in groups["cpu"].scratch]
    for name in ("head", "gpu"):
        assert "disk tile tier" not in [i for i, _, _ in groups[name].scratch]


def test_the_tile_cache_fits_its_object_store_with_headroom(rayservice):
    cpu = _by_group(rayservice)["cpu"]
    app = _app(rayservice)
    cache = app["args"]["cache"]["max_bytes"]
    store = cpu.group.object_store_bytes
    headroom = dict((i, n) for i, n, _ in cpu.store)["headroom"]
    encode = next(d for d in app["deployments"] if d["name"] == "Encode")
    image = app["args"]["limits"]["max_pixels"] * 4 * 3
    assert headroom >= max(store // 4, encode["max_ongoing_requests"] * image)
    assert cache + headroom <= store


# --- the check bites: each way the cluster could evict itself is caught -------------------


def _problems(rs) -> list[str]:
    return [p for b in k8s_budget.budgets(rs) for p in b.problems]


def test_fetch_without_placement_overflows_the_gpu_volume(rayservice):
    """The issue's case: TileFetch with only num_cpus may land on a GPU pod and fill its volume."""
    rs = copy.deepcopy(rayservice)
    app = _app(rs)
    fetch = next(d for d in app["deployments"] if d["name"] == "TileFetch")
    del fetch["ray_actor_options"]["resources"]
    _set_app(rs, app)
    groups = _by_group(rs)
    assert "TileFetch" in groups["gpu"].placed
    assert any(p.startswith("group gpu: scratch volume") for p in _problems(rs))


def test_a_cache_actor_without_placement_may_land_on_a_small_store(rayservice):
    rs = copy.deepcopy(rayservice)
    app = _app(rs)
    app["args"]["cache"]["actor_resources"] = {}
    _set_app(rs, app)
    problems = _problems(rs)
    assert any(p.startswith("group head: object store") for p in problems), problems
    assert any(p.startswith("group gpu: object store") for p in problems), problems


def _volume(rs, group):
    return _worker(rs, group)["template"]["spec"]["volumes"][0]["emptyDir"]


def _start(rs, group):
    return _worker(rs, group)["rayStartParams"]


@pytest.mark.parametrize(
    "what, breaks, group",
    [
        ("a disk budget over the volume", lambda rs: _cache(rs, disk_max_bytes=15 * GiB), "cpu"),
        ("a tile cache over the store", lambda rs: _cache(rs, max_bytes=3 * GiB), "cpu"),
        ("Ray's default log rotation", lambda rs: _drop_env(rs, "RAY_ROTATION_MAX_BYTES"), "gpu"),
        ("a smaller volume", lambda rs: _volume(rs, "gpu").update(sizeLimit="2Gi"), "gpu"),
        ("a bigger store", lambda rs: _start(rs, "cpu").update({"object-store-memory": "8589934592"}), "cpu"),
    ],
)
def test_the_check_bites(rayservice, what, breaks, group):
    rs = copy.deepcopy(rayservice)
    breaks(rs)
    assert any(p.startswith(f"group {group}:") for p in _problems(rs)), what


def _cache(rs, **changes):
    app = _app(rs)
    app["args"]["cache"].update(changes)
    _set_app(rs, app)


def _drop_env(rs, name):
    for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        c = g["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != name]


def test_the_generator_refuses_an_overflowing_manifest(monkeypatch, tmp_path):
    overrides = yaml.safe_load((ROOT / "k8s" / "cluster-overrides.yaml").read_text())
    overrides["applications"][0]["args"]["cache"]["disk_max_bytes"] = 20 * GiB
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))
    monkeypatch.setattr(gen_k8s, "OVERRIDES", path)
    monkeypatch.setattr(gen_k8s, "TARGET", tmp_path / "rayservice.yaml")
    assert gen_k8s.main([]) == 2
    assert not (tmp_path / "rayservice.yaml").exists()


def test_the_budget_script_prints_the_arithmetic():
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "k8s_budget.py")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    for group in ("head", "cpu", "gpu"):
        assert f"### group `{group}`" in run.stdout
    assert "OVERFLOW" not in run.stdout


def test_the_local_config_asks_for_no_custom_resources():
    """`serve run serve_config.yaml` on one machine: nothing may need a resource a laptop lacks."""
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]
    for dep in local["deployments"]:
        assert not dep.get("ray_actor_options", {}).get("resources"), dep["name"]
        assert dep.get("ray_actor_options", {}).get("num_gpus", 0) == 0
    assert not local["args"].get("cache", {}).get("actor_resources")


def test_the_numba_cache_allowance_holds(tmp_path, hips_dir):
    """Compile every kernel (both interpolations) into an empty NUMBA_CACHE_DIR and weigh it."""
    cache_dir = tmp_path / "numba"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    cli = str(Path(sys.executable).parent / "skyrender")
    for interpolation in ("bilinear", "nearest"):
        run = subprocess.run(
            [cli, "render", "--hips", str(hips_dir / "cds-dss2-red"), "--ra", "266.4", "--dec", "-28.9",
             "--fov", "1", "--width", "64", "--height", "64", "--interpolation", interpolation,
             "-o", str(tmp_path / f"{interpolation}.png")],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
    size = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    assert 0 < size <= k8s_budget.NUMBA_CACHE_ALLOWANCE / 16, size
