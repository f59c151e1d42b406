"""CPU time of every process of the benchmark's own Ray cluster, grouped by role.

On a 2-core machine the throughput of concurrent renders is bounded by the CPU a request
costs summed over ALL processes (Serve's proxy, the ingress, each stage, the tile-cache
actor, raylet, GCS, the client itself), so the benchmark prints that sum and its parts.
Only descendants of this process are counted: other clusters on the machine are not.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuSnapshot", "cpu_by_role", "snapshot"]

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds (user + system) per process id, and each process's role."""

    seconds: dict[int, float]
    roles: dict[int, str]


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _role(pid: int) -> str:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    cmd = raw.replace(b"\0", b" ").decode(errors="replace")
    if pid == os.getpid():
        return "client (this process)"
    m = re.search(r"ray::ServeReplica:[^:\s]+:(\w+)", cmd)
    if m:
        return m.group(1)
    for key, name in (
        ("ProxyActor", "Serve proxy"),
        ("haproxy", "HAProxy"),
        ("ServeController", "Serve controller"),
        ("TileCache", "tile-cache actor"),
        ("gcs_server", "GCS"),
        ("raylet", "raylet"),
        ("DashboardAgent", "dashboard/agents"),
        ("RuntimeEnvAgent", "dashboard/agents"),
        ("dashboard", "dashboard/agents"),
        ("runtime_env", "dashboard/agents"),
        ("log_monitor", "log monitor"),
    ):
        if key in cmd:
            return name
    if cmd.startswith("ray::IDLE") or "default_worker.py" in cmd:
        return "idle workers"
    return "other: " + cmd.split()[0][:40] if cmd else "other"


def _cpu_seconds(pid: int) -> float | None:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def snapshot() -> CpuSnapshot:
    """CPU seconds so far of this process and all its descendants."""
    children = _children()
    todo, seen = [os.getpid()], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(children.get(pid, []))
    seconds, roles = {}, {}
    for pid in seen:
        s = _cpu_seconds(pid)
        if s is not None:
            seconds[pid], roles[pid] = s, _role(pid)
    return CpuSnapshot(seconds, roles)


def cpu_by_role(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds spent between the snapshots, per role, largest first."""
    out: dict[str, float] = {}
    for pid, s in after.seconds.items():
        spent = s - before.seconds.get(pid, 0.0)
        role = after.roles[pid]
        out[role] = out.get(role, 0.0) + spent
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
