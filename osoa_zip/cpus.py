"""How many CPUs this process may use, and how many segment threads its memory allows: ``-T``'s default.

``os.cpu_count()`` counts the machine's CPUs, not this process's share of them:
a container limited to two CPUs by a cgroup quota on a 64-core host, or a job
pinned to four cores by ``taskset``/a batch scheduler, would start 64 threads
that take turns on a few cores (each with its own adapter, so memory grows too).
So the count is the smallest of
  - the CPUs in this process's affinity mask (``os.sched_getaffinity``), and
  - the cgroup CPU quota, rounded up (cgroup v2 ``cpu.max``; v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), the tightest one on the way
    from this process's cgroup up to the root,
and at least 1.  The cgroup root is a parameter so that tests can fake it.

``default_threads`` also keeps the threads within the memory this process may
take (like ``xz -T0`` under a memory limit): each segment coded beside another
holds its own networks, optimiser moments and a batch's graph, measured at
~100 MB on 32 x 32 tiles and ~325 MB on 128 x 128 photo tiles
(docs/PERFORMANCE.md), on top of the fixed ~300-400 MB of torch and the model.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MEMINFO = Path("/proc/meminfo")
FIXED_MEMORY = 400 << 20       # torch, the model, one segment's working memory
SEGMENT_MEMORY = 400 << 20     # each further segment side by side (photo tiles: ~325 MB measured)


def default_threads(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP,
                    meminfo: Path = PROC_MEMINFO) -> int:
    """-T 0: one thread per available CPU, as many as the available memory holds (at least 1)."""
    threads = available_cpus(cgroup_root, proc_cgroup)
    memory = available_memory(cgroup_root, proc_cgroup, meminfo)
    if memory is not None:
        threads = min(threads, 1 + max(0, memory - FIXED_MEMORY) // SEGMENT_MEMORY)
    return max(1, threads)


def available_memory(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP,
                     meminfo: Path = PROC_MEMINFO) -> int | None:
    """Bytes this process could still take: the kernel's MemAvailable, capped by what is left
    under the cgroup memory limit (v2 memory.max - memory.current; v1 memory.limit_in_bytes -
    memory.usage_in_bytes); None if neither is known."""
    found = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for version, relative in _own_cgroups(proc_cgroup, "memory"):
        base = cgroup_root if version == 2 else cgroup_root / "memory"
        names = ("memory.max", "memory.current") if version == 2 else ("memory.limit_in_bytes",
                                                                     "memory.usage_in_bytes")
        for folder in _up_to_root(base, relative):
            limit, used = (_read_int(folder / name) for name in names)
            if limit is not None and used is not None and limit < 1 << 60:  # v1 writes ~2^63 for none
                found.append(max(0, limit - used))
    return min(found) if found else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # "max" (no limit), or no such file
        return None


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The number of CPUs this process can keep busy at once (at least 1)."""
    count = _affinity_count()
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _affinity_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux (macOS has no affinity call)
        return os.cpu_count() or 1


def cgroup_cpu_limit(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The cgroup CPU quota in CPUs (e.g. 1.5), or None when there is none (or no cgroups).

    Every cgroup on the way up limits the ones below it, so the smallest quota
    found from this process's own cgroup up to the root counts.  Inside a
    container the root is often this process's cgroup already (a cgroup
    namespace), so the root's own files are read too.
    """
    limits = []
    for version, relative in _own_cgroups(proc_cgroup):
        base = cgroup_root if version == 2 else cgroup_root / "cpu"
        if version == 1 and not base.is_dir():
            base = cgroup_root / "cpu,cpuacct"
        for folder in _up_to_root(base, relative):
            limit = _read_v2(folder) if version == 2 else _read_v1(folder)
            if limit is not None:
                limits.append(limit)
    if not limits and not proc_cgroup.is_file():  # no /proc here: the root's files alone
        limits = [limit for limit in (_read_v2(cgroup_root), _read_v1(cgroup_root / "cpu")) if limit is not None]
    return min(limits) if limits else None


def _own_cgroups(proc_cgroup: Path, controller: str = "cpu") -> list[tuple[int, str]]:
    """(cgroup version, path below the hierarchy's root) of the hierarchies that hold the controller."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            found.append((2, path))
        elif controller in controllers.split(","):
            found.append((1, path))
    return found


def _up_to_root(base: Path, relative: str) -> list[Path]:
    """base/relative, its parents, ..., base (only those inside base)."""
    parts = [part for part in relative.split("/") if part and part not in (".", "..")]
    return [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read_v2(folder: Path) -> float | None:
    """cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD"."""
    try:
        fields = (folder / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _read_v1(folder: Path) -> float | None:
    """cgroup v1: ``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    try:
        quota = (folder / "cpu.cfs_quota_us").read_text().strip()
        period = (folder / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us
