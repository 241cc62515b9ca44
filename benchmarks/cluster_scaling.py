"""`--dask` against threads on one machine: whole command lines, both ways.

  python benchmarks/cluster_scaling.py FOLDER [--segment-size 2] [--repeat 2] [--workers 1,2]

Starts a LocalCluster of N single-threaded worker processes for each N (not
timed: the cluster exists before the command, as a real one would), then runs,
interleaved so that a noisy shared machine slows every variant alike:
`compress -T 1`, `-T 2` and `--dask` on each cluster, then `decompress` the same
ways.  Reports wall seconds (the median), MB/s of raw pixels (H·W·C), segments
per second, CPU seconds (the command's, plus its cluster's worker processes'),
and checks that every archive is byte-identical.  Start-up (torch,
the model, connecting) is included, as a user would see it.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import raw_bytes

REPO = Path(__file__).resolve().parents[1]


def run(arguments: list[str], workers: list[int]) -> tuple[float, float]:
    """(wall, CPU) seconds of one osoa-zip process plus what the worker processes spent meanwhile."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_before = _cpu(workers)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "osoa_zip", *arguments], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime) + _cpu(workers) - workers_before
    print(f"  {wall:7.1f} s wall {cpu:7.1f} s CPU  osoa-zip {' '.join(arguments)}", file=sys.stderr, flush=True)
    return wall, cpu


def _cpu(pids: list[int]) -> float:
    """CPU seconds of the processes (a worker that was replaced counts from then on, and is named)."""
    import psutil
    total = 0.0
    for pid in pids:
        try:
            total += sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.NoSuchProcess:
            print(f"  worker process {pid} is gone: its CPU time is not counted", file=sys.stderr, flush=True)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--segment-size", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    options = parser.parse_args()
    from distributed import LocalCluster

    from osoa_zip.adapt.flags import FLAG_SEGMENT_START
    from osoa_zip.table import read_archive

    clusters = {n: LocalCluster(n_workers=n, processes=True, threads_per_worker=1, dashboard_address=None)
                for n in map(int, options.workers.split(","))}
    variants = {"-T 1": ["-T", "1"], "-T 2": ["-T", "2"]}
    variants.update({f"--dask, {n} worker{'s' * (n > 1)}": ["--dask", cluster.scheduler_address]
                     for n, cluster in clusters.items()})
    worker_pids = {f"--dask, {n} worker{'s' * (n > 1)}": _worker_pids(cluster) for n, cluster in clusters.items()}
    megabytes = raw_bytes(options.folder) / 1e6
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        archives = {name: Path(scratch) / f"{k}.osoa" for k, name in enumerate(variants)}
        for _ in range(options.repeat):
            for name, extra in variants.items():
                times.setdefault((name, "compress"), []).append(
                    run(["compress", "-q", "-f", "--segment-size", str(options.segment_size), *extra,
                         str(options.folder), str(archives[name])], worker_pids.get(name, [])))
            for name, extra in variants.items():
                out = Path(scratch) / "out"
                times.setdefault((name, "decompress"), []).append(
                    run(["decompress", "-q", *extra, str(archives[name]), str(out)], worker_pids.get(name, [])))
                subprocess.run(["rm", "-rf", str(out)], check=True)
        contents = {archive.read_bytes() for archive in archives.values()}
        with open(next(iter(archives.values())), "rb") as archive:
            segments = sum(1 for batch in read_archive(archive)[2] if batch.flags & FLAG_SEGMENT_START)
    for cluster in clusters.values():
        cluster.close()
    print(f"{options.folder}: {megabytes:.2f} MB of raw pixels, {segments} segments, "
          f"archives identical: {len(contents) == 1}; {os.cpu_count()} CPUs")
    print("| variant | direction | wall s (median) | MB/s | segments/s | CPU s (client + workers) | CPU s per MB |")
    print("|---|---|---|---|---|---|---|")
    for (name, direction), values in times.items():
        wall = statistics.median(value[0] for value in values)
        cpu = statistics.median(value[1] for value in values)
        print(f"| {name} | {direction} | {wall:.1f} | {megabytes / wall:.3f} | {segments / wall:.2f} | {cpu:.1f} "
              f"| {cpu / megabytes:.1f} |")


def _worker_pids(cluster) -> list[int]:
    from distributed import Client
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        return list(client.run(os.getpid).values())


if __name__ == "__main__":
    main()
