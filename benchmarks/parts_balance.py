"""Each process's time per batch when a command shares its batches with the worker (adapt/parts.py).

  python benchmarks/parts_balance.py compress -q -f data/speed/tiles32_2048 t.osoa
  python benchmarks/parts_balance.py decompress -q -f t.osoa out/

Runs the command line in this process.  Its worker is forked from this process once the model
is loaded (adapt/parts.py), so the timers patched in here run in the worker too; each
process appends its own lines to a temporary file.  Prints, per batch (medians, and sums
over the command's batches): the command's deferred step on the previous batch, its own part
of this batch, its wait for the worker's answer and the rest until it sends the next request;
the worker's work per request (its part, its answer and its step) and its idle time before
the request.  The slower of the two sets the pace: a process that never waits is the
bottleneck, and the other's idle time is what moving work to it could use.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from osoa_zip.adapt import engine, parts
from osoa_zip.cli import main

LOG = Path(tempfile.mkdtemp(prefix="parts-balance-")) / "times.txt"


def _log(*values) -> None:
    with open(LOG, "a") as handle:  # one line a call: the worker ends with os._exit
        handle.write(" ".join(map(str, values)) + "\n")


def _timed(owner, name: str, tag: str) -> None:
    original = getattr(owner, name)

    def timed(*arguments, **options):
        started = time.perf_counter()
        try:
            return original(*arguments, **options)
        finally:
            _log(tag, os.getpid(), started, time.perf_counter())
    setattr(owner, name, timed)


def _patch() -> None:
    for name in ("_analyse_in_parts", "_decode_in_parts", "_flush"):
        _timed(engine.OnlineAdapter, name, name)
    for name in ("analysed", "decoded"):
        _timed(parts.PartWorker, name, "wait")
    for name in ("_analyse", "_decode", "_step", "_adapt_on", "_tile_bits"):
        _timed(parts._Server, name, "worker")


def _report(parent: int) -> None:
    rows = [line.split() for line in LOG.read_text().splitlines()] if LOG.exists() else []
    events = [(tag, int(pid), float(start), float(end)) for tag, pid, start, end in rows]
    batches = sorted((start, end) for tag, pid, start, end in events
                     if tag in ("_analyse_in_parts", "_decode_in_parts"))
    if not batches:
        print("no batch was shared with a worker (too little work, or one thread)")
        return

    def inside(tag: str, start: float, end: float) -> float:
        return sum(min(e, end) - max(s, start) for t, p, s, e in events
                   if t == tag and p == parent and s < end and e > start)
    step = [inside("_flush", s, e) for s, e in batches]
    wait = [inside("wait", s, e) for s, e in batches]
    own = [e - s - f - w for (s, e), f, w in zip(batches, step, wait)]
    rest = [batches[i + 1][0] - batches[i][1] for i in range(len(batches) - 1)]
    work: list[list[float]] = []  # the worker's requests, nested calls (a step inside a part) merged
    for s, e in sorted((s, e) for t, p, s, e in events if t == "worker" and p != parent and s >= batches[0][0]):
        if work and s <= work[-1][1]:
            work[-1][1] = max(work[-1][1], e)
        else:
            work.append([s, e])
    busy = [e - s for s, e in work]
    idle = [work[i + 1][0] - work[i][1] for i in range(len(work) - 1)]
    span = batches[-1][1] - batches[0][0]
    print(f"{len(batches)} batches in {span:.2f} s ({1000 * span / len(batches):.1f} ms a batch)\n")
    print("| process | part | median ms a batch | sum s |")
    print("|---|---|---:|---:|")
    for process, part, values in (("command", "step on the previous batch", step),
                                  ("command", "its own part", own),
                                  ("command", "waiting for the worker", wait),
                                  ("command", "the rest, to the next request", rest),
                                  ("worker", "work (its part, answer, step)", busy),
                                  ("worker", "idle", idle)):
        if values:
            print(f"| {process} | {part} | {1000 * statistics.median(values):.1f} | {sum(values):.2f} |")


if __name__ == "__main__":
    _patch()
    parent = os.getpid()
    try:
        main(sys.argv[1:], standalone_mode=False)
    finally:
        if os.getpid() == parent:
            _report(parent)
