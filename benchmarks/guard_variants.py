"""What the never-worse guard costs and saves, per evaluation set.

  OMP_NUM_THREADS=1 python benchmarks/guard_variants.py [--sets photos768,tiles64,fashion_mnist,tiles32]

Variants: the default guard (θ0 compared with the adapted model; after θ0 loses by
more than 1% the next comparison waits 1, 2, 4, 8 batches), the same comparing every
batch, no guard, and no adaptation.  Sizes are exact; CPU seconds are process time
(noisy on a shared machine, but the same work on every run).

Measured with release 1.0.0's guard, which also tried undoing the last update
(FLAG_ROLLBACK), bpsp (CPU s): photos768 2.3579 (28.5) with undo vs 2.3628 (18.8)
θ0 only; tiles64 2.4132 (7.8) vs 2.4117 (5.8); fashion_mnist 5.0164 (6.9) vs
5.0002 (5.0).  Undoing an update saved a little on the batch where it was chosen
and cost more later (the adaptation lost its step), so it is no longer written.
Comparing only a probe of two tiles per batch was worse on every set (2.3641,
2.4307, 5.0337).
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from osoa_zip.adapt import engine
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.pack import compress

EVAL = Path("data/eval")


def _measure(folder: Path, config: AdaptationConfig) -> tuple[int, float, list[int]]:
    buffer = io.BytesIO()
    started = time.process_time()
    summary = compress([folder], buffer, adaptation=config)
    return len(buffer.getvalue()), time.process_time() - started, [b.flags for b in summary.batches]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="photos768,tiles64,fashion_mnist,tiles32")
    args = parser.parse_args()
    always = staticmethod(lambda track: True)
    backoff = engine.OnlineAdapter.__dict__["_probe_due"]  # the staticmethod itself
    for name in args.sets.split(","):
        folder = EVAL / name
        subpixels = sum(np.asarray(Image.open(path)).size for path in folder.iterdir())
        for label, config, probe_due in [
                ("guard", AdaptationConfig(), backoff),
                ("guard, every batch", AdaptationConfig(), always),
                ("no guard", AdaptationConfig(guard=False), backoff),
                ("no adaptation", AdaptationConfig(adapt=False), backoff)]:
            engine.OnlineAdapter._probe_due = probe_due
            size, seconds, flags = _measure(folder, config)
            print(f"{name:14s} {label:20s} {8 * size / subpixels:.4f} bpsp  {seconds:6.1f} s CPU  "
                  f"θ0 coded {sum(bool(f & engine.FLAG_PRETRAINED) for f in flags)}/{len(flags)} batches",
                  flush=True)
        engine.OnlineAdapter._probe_due = backoff


if __name__ == "__main__":
    main()
