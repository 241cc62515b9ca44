"""The cyclic garbage collector's share of one osoa-zip command: its passes and their CPU time.

  python benchmarks/collector.py compress -q -f data/speed/tiles32_2048 t.osoa
  python benchmarks/collector.py decompress -q -f t.osoa out/

Runs the command line in this process (as `python -m osoa_zip` would, without the quick exit)
and prints to stderr, per generation, how many collections ran and the CPU time of this
thread inside them, and the thread's CPU time for the whole command.  Only the command's own
process is seen; its worker process (adapt/parts.py) collects on its own.  A full collection
(generation 2) walks every object the process tracks: after `import torch` that is ~250,000.
"""
from __future__ import annotations

import gc
import sys
import time

_passes = {generation: [0, 0.0] for generation in range(3)}
_started = [0.0]


def _timed(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.thread_time()
    else:
        record = _passes[info["generation"]]
        record[0] += 1
        record[1] += time.thread_time() - _started[0]


def main() -> None:
    gc.callbacks.append(_timed)
    begun = time.thread_time()
    from osoa_zip.cli import main as command_line
    status = 0
    try:
        command_line(sys.argv[1:], prog_name="osoa-zip")
    except SystemExit as leaving:
        status = leaving.code if isinstance(leaving.code, int) else 1
    spent = time.thread_time() - begun
    passes = ", ".join(f"generation {generation}: {count} in {seconds:.3f} s"
                       for generation, (count, seconds) in _passes.items())
    print(f"collector: {passes}; the command's main thread: {spent:.2f} CPU s", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
