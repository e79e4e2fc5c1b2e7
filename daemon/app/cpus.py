"""How many CPUs this process may use: ``process.workers = "auto"``.

The CPUs its affinity allows (``os.sched_getaffinity``: ``taskset``, systemd's ``CPUAffinity=``, a cpuset), capped by
the CPU quota of its cgroup and of every cgroup above it (cgroup v2 ``cpu.max``; v1 ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us``): Kubernetes' ``limits.cpu``, systemd's ``CPUQuota=``, ``docker run --cpus``. A fractional
quota counts the whole CPUs it gives (1.5 CPUs: 1; never less than 1): a worker is one event loop, and one that the
kernel throttles every period answers late.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple


class Cpus(NamedTuple):
    workers: int  # what "auto" runs: the smaller of the two, at least 1
    affinity: int
    quota: float | None  # CPUs the cgroup quota gives (the smallest on the way to the root); None: no quota

    def __str__(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"a cgroup CPU quota of {self.quota:g}"
        return f"{self.workers} (CPU affinity {self.affinity}, {quota})"


def available(root: Path = Path("/"), affinity: int | None = None) -> Cpus:
    """The CPUs this process may use. ``root`` is where /proc and /sys are (tests give a tree of their own)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quotas = [q for q in _quotas(root) if q is not None]
    quota = min(quotas) if quotas else None
    count = affinity if quota is None else min(affinity, max(1, math.floor(quota)))
    return Cpus(max(1, count), affinity, quota)


def _quotas(root: Path) -> list[float | None]:
    """The quota of this process's cgroup and of each above it, in CPUs."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found: list[float | None] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: one hierarchy
            for directory in _up(root / "sys/fs/cgroup", path):
                found.append(_v2(directory / "cpu.max"))
        elif "cpu" in controllers.split(","):
            for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                base = root / "sys/fs/cgroup" / mount
                if base.is_dir():
                    for directory in _up(base, path):
                        found.append(_v1(directory))
                    break
    return found


def _up(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and every one above it to the mount (a container sees its own cgroup at the mount: a
    path of the host's that is not there is skipped)."""
    parts = [p for p in path.strip("/").split("/") if p]
    directories = [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in directories if d.is_dir()]


def _v2(path: Path) -> float | None:
    try:
        quota, _, period = path.read_text().strip().partition(" ")
    except OSError:
        return None
    try:
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except ValueError:
        return None


def _v1(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
