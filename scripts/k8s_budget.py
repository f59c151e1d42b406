"""Scratch-volume and object-store budgets of every Ray group in k8s/rayservice.yaml.

    python scripts/k8s_budget.py            # print the arithmetic per group; exit 1 on any overflow

For each group (head and workers) it works out, from the manifest and its serveConfigV2, which
deployments (and the tile cache actor) can be placed there (their CPUs, GPUs and custom resources
against the group's ``rayStartParams``), how many replicas of each can share one pod, and what they
can write into the pod's ``emptyDir`` scratch volume:

* the disk tile tier: ``cache.disk_max_bytes`` once per pod (every fetch replica of a pod shares the
  directory and its budget; `deployments.disk_cache` enforces it across processes);
* numba's cache of compiled kernels (``NUMBA_CACHE_DIR`` on the volume): ``NUMBA_CACHE_ALLOWANCE``;
* Ray's logs (``temp-dir`` on the volume): log streams x ``RAY_ROTATION_MAX_BYTES`` x (backups + 1);
* Ray's spilled objects (``object-spilling-directory``, else the temp dir, on the volume): up to
  the node's ``object-store-memory`` (an allowance: objects spill only past the store);

and checks that their sum stays under the volume's ``sizeLimit`` (past it the kubelet evicts the
whole pod). Where the tile cache actor can live it also checks that ``cache.max_bytes`` plus room
for in-flight images fits that node's object store (past it Ray spills and hits get slow).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RAYSERVICE = ROOT / "k8s" / "rayservice.yaml"
SCRATCH_VOLUME = "tile-cache"

#: Deployments whose replicas write the disk tile tier (the survey catalogue is read through them too).
DISK_TIER_DEPLOYMENTS = frozenset({"TileFetch"})
#: numba's cache for our kernels measured 0.24 MB (tests/cluster/test_budgets.py measures it again);
#: the allowance leaves room for more kernels and signatures.
NUMBA_CACHE_ALLOWANCE = 64 * 2**20
#: Log streams (files that grow) of one Ray worker process: worker-*.out, worker-*.err,
#: python-core-worker-*.log and the component's own log (a Serve replica's or proxy's).
LOG_STREAMS_PER_WORKER = 4
#: Log streams of a node's Ray system processes (raylet, agents, log monitor, events), and on the
#: head also GCS, the dashboard and its modules, and the Serve controller (counted on a running
#: two-node cluster, rounded up).
SYSTEM_LOG_STREAMS = {"head": 40, "worker": 24}
#: Ray's defaults when the variables are not set: 512 MiB per file, 5 backups.
RAY_ROTATION_DEFAULTS = (512 * 2**20, 5)
#: A composed image is float32 with up to 3 channels (colour surveys).
IMAGE_BYTES_PER_PIXEL = 4 * 3
#: The object store keeps at least this share free of the tile cache for objects in flight.
MIN_STORE_HEADROOM = 0.25

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPE]i?|[kmgtpe])?$")
_FACTORS = {
    None: 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (``16Gi``, ``500m``, ``4``) as a number (bytes, cores)."""
    text = str(value).strip()
    if text.endswith("m") and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) / 1000
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _FACTORS[match.group(2)]


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class Placement:
    """What a deployment (or the cache actor) reserves per replica."""

    name: str
    num_cpus: float
    num_gpus: float
    resources: dict[str, float]
    max_replicas: int
    max_ongoing_requests: int = 0


@dataclass(frozen=True)
class Group:
    """What one pod of a Ray group offers."""

    name: str
    kind: str  # head | worker
    cpus: float
    gpus: float
    resources: dict[str, float]
    object_store_bytes: int
    size_limit_bytes: int
    mount_path: str
    temp_dir: str
    spill_dir: str
    env: dict[str, str]

    def on_volume(self, path: str) -> bool:
        return path == self.mount_path or path.startswith(self.mount_path.rstrip("/") + "/")

    def replicas_fitting(self, p: Placement) -> int:
        """How many replicas of ``p`` one pod of this group can hold (0: it cannot land here)."""
        limits = [p.max_replicas]
        for need, have in [(p.num_cpus, self.cpus), (p.num_gpus, self.gpus)] + [
            (amount, self.resources.get(name, 0.0)) for name, amount in p.resources.items()
        ]:
            if need > 0:
                limits.append(math.floor(have / need + 1e-9))
        return max(0, min(limits))


@dataclass
class Budget:
    """The arithmetic for one group."""

    group: Group
    placed: dict[str, int] = field(default_factory=dict)  # deployment -> replicas per pod
    cache_actor: bool = False
    scratch: list[tuple[str, int, str]] = field(default_factory=list)  # (item, bytes, how)
    store: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def scratch_total(self) -> int:
        return sum(n for _, n, _ in self.scratch)

    @property
    def store_total(self) -> int:
        return sum(n for _, n, _ in self.store)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.scratch_total > self.group.size_limit_bytes:
            out.append(
                f"group {self.group.name}: scratch volume needs {gib(self.scratch_total)}, "
                f"sizeLimit is {gib(self.group.size_limit_bytes)}"
            )
        if self.store and self.store_total > self.group.object_store_bytes:
            out.append(
                f"group {self.group.name}: object store needs {gib(self.store_total)}, "
                f"object-store-memory is {gib(self.group.object_store_bytes)}"
            )
        return out


def _start_resources(params: dict[str, str]) -> dict[str, float]:
    raw = params.get("resources")
    if not raw:
        return {}
    text = raw
    if text.startswith('"'):  # KubeRay's quoting: the JSON object inside a quoted string
        text = yaml.safe_load(text)
    return {k: float(v) for k, v in json.loads(text).items()}


def _group(spec: dict[str, Any], name: str, kind: str) -> Group:
    params = spec.get("rayStartParams", {})
    pod = spec["template"]["spec"]
    container = pod["containers"][0]  # KubeRay's Ray container is the first
    limits = container.get("resources", {}).get("limits", {})
    cpus = quantity(params["num-cpus"]) if "num-cpus" in params else quantity(limits.get("cpu", 0))
    gpus = quantity(params["num-gpus"]) if "num-gpus" in params else quantity(limits.get("nvidia.com/gpu", 0))
    volume = next(v for v in pod.get("volumes", []) if v["name"] == SCRATCH_VOLUME)
    mount = next(m for m in container["volumeMounts"] if m["name"] == SCRATCH_VOLUME)
    if "sizeLimit" not in volume.get("emptyDir", {}):
        raise ValueError(f"group {name}: the scratch emptyDir has no sizeLimit")
    if "object-store-memory" not in params:
        raise ValueError(f"group {name}: object-store-memory is not set (Ray would take 30 % of RAM)")
    temp_dir = params.get("temp-dir", "/tmp/ray")
    return Group(
        name=name,
        kind=kind,
        cpus=cpus,
        gpus=gpus,
        resources=_start_resources(params),
        object_store_bytes=int(params["object-store-memory"]),
        size_limit_bytes=int(quantity(volume["emptyDir"]["sizeLimit"])),
        mount_path=mount["mountPath"],
        temp_dir=temp_dir,
        spill_dir=params.get("object-spilling-directory", temp_dir),
        env={e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e},
    )


def groups(rayservice: dict[str, Any]) -> list[Group]:
    cfg = rayservice["spec"]["rayClusterConfig"]
    out = [_group(cfg["headGroupSpec"], "head", "head")]
    out += [_group(g, g["groupName"], "worker") for g in cfg["workerGroupSpecs"]]
    return out


def placements(app: dict[str, Any]) -> list[Placement]:
    out = []
    for dep in app["deployments"]:
        opts = dep.get("ray_actor_options") or {}
        scaling = dep.get("autoscaling_config") or {}
        out.append(
            Placement(
                name=dep["name"],
                num_cpus=float(opts.get("num_cpus", 1)),  # Serve's default: one CPU per replica
                num_gpus=float(opts.get("num_gpus", 0)),
                resources={k: float(v) for k, v in (opts.get("resources") or {}).items()},
                max_replicas=int(scaling.get("max_replicas", dep.get("num_replicas", 1))),
                max_ongoing_requests=int(dep.get("max_ongoing_requests", 5)),
            )
        )
    return out


def budgets(rayservice: dict[str, Any]) -> list[Budget]:
    """The budget of every group of ``rayservice`` (a parsed RayService)."""
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    app = serve["applications"][0]
    args = app.get("args") or {}
    cache, limits = args.get("cache", {}), args.get("limits", {})
    deps = placements(app)
    by_name = {p.name: p for p in deps}
    cache_actor = Placement("TileCache", 0.0, 0.0, dict(cache.get("actor_resources") or {}), 1)
    image_bytes = int(limits.get("max_pixels", 4096 * 4096)) * IMAGE_BYTES_PER_PIXEL
    out = []
    for g in groups(rayservice):
        b = Budget(g)
        for p in deps:
            n = g.replicas_fitting(p)
            if n:
                b.placed[p.name] = n
        # Replicas share the pod's CPUs: no more processes than the smallest reservation allows.
        smallest = min((by_name[n].num_cpus for n in b.placed if by_name[n].num_cpus > 0), default=0)
        replicas = sum(b.placed.values())
        if smallest:
            replicas = min(replicas, math.floor(g.cpus / smallest + 1e-9))
        b.cache_actor = cache.get("enabled", True) and g.replicas_fitting(cache_actor) > 0
        # --- scratch volume
        disk_users = sorted(DISK_TIER_DEPLOYMENTS & b.placed.keys())
        if cache.get("disk_enabled", True) and disk_users and g.on_volume(cache.get("disk_dir", "")):
            n = int(cache["disk_max_bytes"])
            sharing = sum(b.placed[d] for d in disk_users)
            b.scratch.append(
                ("disk tile tier", n, f"disk_max_bytes, one budget shared by up to {sharing} replicas")
            )
        if b.placed and g.on_volume(g.env.get("NUMBA_CACHE_DIR", "")):
            b.scratch.append(("numba cache", NUMBA_CACHE_ALLOWANCE, "allowance (measured 0.24 MB)"))
        if g.on_volume(g.temp_dir):
            max_bytes = int(g.env.get("RAY_ROTATION_MAX_BYTES", RAY_ROTATION_DEFAULTS[0]))
            backups = int(g.env.get("RAY_ROTATION_BACKUP_COUNT", RAY_ROTATION_DEFAULTS[1]))
            # replicas + Serve proxy (+ controller on the head) + the cache actor + Ray's idle
            # worker pool (one per CPU)
            workers = replicas + 1 + (g.kind == "head") + int(b.cache_actor) + math.ceil(g.cpus)
            streams = SYSTEM_LOG_STREAMS[g.kind] + LOG_STREAMS_PER_WORKER * workers
            b.scratch.append(
                (
                    "Ray logs",
                    streams * max_bytes * (backups + 1),
                    f"{streams} streams ({workers} workers) x {max_bytes // 2**20} MiB x {backups + 1}",
                )
            )
        if g.on_volume(g.spill_dir):
            b.scratch.append(("Ray spill", g.object_store_bytes, "allowance: one object store's worth"))
        # --- object store of the node that may hold the tile cache
        if b.cache_actor:
            encode = by_name.get("Encode")
            inflight = image_bytes * (encode.max_ongoing_requests if encode else 1)
            headroom = max(inflight, int(MIN_STORE_HEADROOM * g.object_store_bytes))
            b.store.append(("tile cache", int(cache.get("max_bytes", 0)), "cache.max_bytes"))
            b.store.append(
                (
                    "headroom",
                    headroom,
                    f"max(Encode max_ongoing_requests x largest image {image_bytes // 2**20} MiB, "
                    f"{int(MIN_STORE_HEADROOM * 100)} % of the store)",
                )
            )
        out.append(b)
    return out


def report(bs: list[Budget]) -> str:
    """The arithmetic as a Markdown table per group."""
    lines = []
    for b in bs:
        g = b.group
        placed = ", ".join(f"{n} x{k}" for n, k in b.placed.items()) or "no replicas"
        lines.append(f"### group `{g.name}`: {placed}" + (", tile cache actor" if b.cache_actor else ""))
        lines.append("")
        lines.append("| scratch volume | bytes | how |")
        lines.append("|---|---|---|")
        for item, n, how in b.scratch:
            lines.append(f"| {item} | {gib(n)} | {how} |")
        verdict = "fits" if b.scratch_total <= g.size_limit_bytes else "OVERFLOW"
        lines.append(
            f"| **sum** | **{gib(b.scratch_total)}** | sizeLimit {gib(g.size_limit_bytes)}: {verdict} |"
        )
        if b.store:
            lines.append("")
            lines.append("| object store | bytes | how |")
            lines.append("|---|---|---|")
            for item, n, how in b.store:
                lines.append(f"| {item} | {gib(n)} | {how} |")
            verdict = "fits" if b.store_total <= g.object_store_bytes else "OVERFLOW"
            lines.append(
                f"| **sum** | **{gib(b.store_total)}** | "
                f"object-store-memory {gib(g.object_store_bytes)}: {verdict} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    path = Path(argv[0]) if argv else RAYSERVICE
    rayservice = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    bs = budgets(rayservice)
    print(report(bs))
    problems = [p for b in bs for p in b.problems]
    for p in problems:
        print(f"OVERFLOW: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
