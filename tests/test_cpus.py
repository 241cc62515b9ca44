"""cpus.py: -T's default counts the CPUs this process may use, not the machine's, within its memory."""
from __future__ import annotations

import os

import pytest

from osoa_zip.cpus import (
    FIXED_MEMORY,
    SEGMENT_MEMORY,
    available_cpus,
    available_memory,
    cgroup_cpu_limit,
    default_threads,
)


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def fake_cgroups(tmp_path, proc_lines: list[str], files: dict[str, str]):
    """A cgroup root under tmp_path with these files, and a /proc/self/cgroup with these lines."""
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("".join(line + "\n" for line in proc_lines))
    return root, proc


def test_v2_quota_rounds_up(tmp_path):
    root, proc = fake_cgroups(tmp_path, ["0::/job"], {"job/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert available_cpus(root, proc) == min(2, affinity())


def test_v2_without_a_quota(tmp_path):
    root, proc = fake_cgroups(tmp_path, ["0::/job"], {"job/cpu.max": "max 100000\n", "cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(root, proc) == affinity()


def test_v2_a_parent_limits_its_children(tmp_path):
    root, proc = fake_cgroups(tmp_path, ["0::/a/b"], {"a/b/cpu.max": "800000 100000",
                                                      "a/cpu.max": "50000 100000"})
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert available_cpus(root, proc) == 1  # never less than one


def test_v2_in_a_namespace_the_root_holds_the_quota(tmp_path):
    # Inside a container /proc/self/cgroup says "/" and the limit sits at the mount's root.
    root, proc = fake_cgroups(tmp_path, ["0::/"], {"cpu.max": "100000 100000"})
    assert available_cpus(root, proc) == 1


def test_v1_quota_and_no_quota(tmp_path):
    root, proc = fake_cgroups(tmp_path, ["4:memory:/x", "3:cpu,cpuacct:/job"],
                              {"cpu/job/cpu.cfs_quota_us": "100000", "cpu/job/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root, proc) == 1.0
    assert available_cpus(root, proc) == 1
    root, proc = fake_cgroups(tmp_path / "unlimited", ["3:cpu,cpuacct:/"],
                              {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root, proc) is None


def test_v1_mounted_as_cpu_comma_cpuacct(tmp_path):
    root, proc = fake_cgroups(tmp_path, ["2:cpuacct,cpu:/"],
                              {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root, proc) == 3.0


@pytest.mark.parametrize("text", ["", "garbage", "12 0", "-5 100000", "max"])
def test_unreadable_quotas_are_no_limit(tmp_path, text):
    root, proc = fake_cgroups(tmp_path, ["0::/"], {"cpu.max": text})
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(root, proc) == affinity()


def test_no_cgroups_at_all(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "no-proc-file") is None
    assert available_cpus(tmp_path / "none", tmp_path / "no-proc-file") == affinity()


def test_affinity_is_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert available_cpus(tmp_path / "none", tmp_path / "none") == 1


def test_this_machine():
    assert 1 <= available_cpus() <= affinity()


MIB = 1 << 20


def test_threads_are_kept_within_the_available_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    meminfo = tmp_path / "meminfo"
    root, proc = fake_cgroups(tmp_path, ["0::/"], {})
    for available, threads in ((100, 1), (FIXED_MEMORY // MIB + 10, 1),
                               ((FIXED_MEMORY + 3 * SEGMENT_MEMORY) // MIB, 4), (1 << 30, 64)):
        meminfo.write_text(f"MemTotal:       99999999 kB\nMemAvailable:   {available * 1024} kB\n")
        assert default_threads(root, proc, meminfo) == threads, available


def test_a_cgroup_memory_limit_counts_what_is_left_under_it(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable:   {64 << 20} kB\n")  # 64 GiB free on the host
    limit = FIXED_MEMORY + 2 * SEGMENT_MEMORY + 500 * MIB
    root, proc = fake_cgroups(tmp_path, ["0::/job"], {"job/memory.max": str(limit),
                                                      "job/memory.current": str(500 * MIB)})
    assert available_memory(root, proc, meminfo) == limit - 500 * MIB
    assert default_threads(root, proc, meminfo) == 3
    root, proc = fake_cgroups(tmp_path / "v1", ["5:memory:/job"], {"memory/job/memory.limit_in_bytes": str(1 << 62),
                                                                   "memory/job/memory.usage_in_bytes": "0"})
    assert available_memory(root, proc, meminfo) == 64 << 30  # v1's "no limit" is a huge number
    root, proc = fake_cgroups(tmp_path / "max", ["0::/job"], {"job/memory.max": "max", "job/memory.current": "5"})
    assert default_threads(root, proc, meminfo) == 8


def test_unknown_memory_leaves_the_cpus(tmp_path):
    assert available_memory(tmp_path / "none", tmp_path / "none", tmp_path / "none") is None
    assert default_threads(tmp_path / "none", tmp_path / "none", tmp_path / "none") == affinity()
