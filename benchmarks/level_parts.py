"""Two levels side by side in one process: CPU seconds per compress, their ratio, and the CPU of
each part of a compress (each thread's own CPU clock, so the coder's helper thread counts apart).

  python benchmarks/level_parts.py data/eval/gray32 [--limit 128] [--levels 1,6] [--rounds 8]

Archives are made into memory through the library (osoa_zip.archive.compress), as
benchmarks/presets.py makes them: each archive loads and checks its model, as the command
line does; interpreter and torch start-up are excluded.  The levels alternate round by
round, so a noisy shared machine slows both alike; the first two rounds are warm-ups
(numba's loops are loaded once the compresses so far reach native.COMPRESS_MIN_BYTES).
One intra-op thread and one thread for wide products (the command line uses two for
those).  Prints each archive's SHA-256 prefix: two versions of the code that print the
same digests wrote the same bytes.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import statistics
import time
from pathlib import Path

import torch

import osoa_zip.adapt.engine as engine
import osoa_zip.coding.mixture_coder as mixture_coder
import osoa_zip.models.idf as idf
import osoa_zip.pack as pack
import osoa_zip.triage as triage
from osoa_zip.adapt.presets import PRESETS
from osoa_zip.archive import compress
from osoa_zip.exact.stack import set_gemm_threads
from osoa_zip.models.registry import DEFAULT_MODEL

PARTS = [(pack, "load_model", "loading the model"), (pack, "read_image", "reading images"),
         (triage.Triage, "clearly_pays", "triage: classical bound"), (triage.Triage, "judge", "triage: θ0 samples"),
         (engine.OnlineAdapter, "_choose", "forward pass (and the guard's)"),
         (idf.SubLatticeFlow, "factor_tile_bits", "tile bits (frozen)"),
         (engine.OnlineAdapter, "_push", "entropy coder (helper thread)"),
         (mixture_coder, "_Latents", "  of which per-latent lookups and CDF rows"),
         (engine.OnlineAdapter, "_adapt", "adaptation")]


def timed_parts(spent: dict) -> None:
    """Wrap each part so that its thread's CPU time adds up in ``spent`` (by label)."""
    for owner, name, label in PARTS:
        function = getattr(owner, name, None)
        if function is None:
            continue

        @functools.wraps(function)
        def timed(*args, _function=function, _label=label, **kwargs):
            started = time.thread_time()
            try:
                return _function(*args, **kwargs)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.thread_time() - started
        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--levels", default="1,6")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    set_gemm_threads(1)
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() == ".png")[:args.limit]
    levels = [int(level) for level in args.levels.split(",")]
    models = {level: PRESETS[level].model or DEFAULT_MODEL for level in levels}  # -1 names its own
    configs = {level: PRESETS[level].config(models[level]) for level in levels}
    spent: dict[str, float] = {}
    timed_parts(spent)
    totals: dict[int, list[float]] = {level: [] for level in levels}
    parts: dict[int, dict[str, list[float]]] = {level: {} for level in levels}
    digests = {}
    for round_ in range(args.rounds + 2):
        for level in levels:
            spent.clear()
            output = io.BytesIO()
            started = time.process_time()
            compress(files, output, models[level], configs[level])
            seconds = time.process_time() - started
            digests[level] = hashlib.sha256(output.getvalue()).hexdigest()[:16]
            if round_ >= 2:
                totals[level].append(seconds)
                for label, value in spent.items():
                    parts[level].setdefault(label, []).append(value)
    medians = {level: statistics.median(values) for level, values in totals.items()}
    print(f"{args.folder.name} ({len(files)} files), median of {args.rounds} rounds, CPU ms per compress")
    print("| part | " + " | ".join(f"-{level}" for level in levels) + " |")
    print("|---|" + "---:|" * len(levels))
    for _, _, label in PARTS:
        if any(label in parts[level] for level in levels):
            cells = [f"{statistics.median(parts[level][label]) * 1000:.1f}" if label in parts[level] else ""
                     for level in levels]
            print(f"| {label} | " + " | ".join(cells) + " |")
    print("| **whole compress (process CPU)** | " + " | ".join(f"**{medians[level] * 1000:.1f}**"
                                                             for level in levels) + " |")
    first = levels[0]
    for level in levels[1:]:
        pairwise = statistics.median(b / a for a, b in zip(totals[first], totals[level]))
        print(f"-{first} against -{level}: {medians[level] / medians[first]:.3f}x by medians, "
              f"{pairwise:.3f}x pairwise")
    print("archives: " + ", ".join(f"-{level} {digest}" for level, digest in digests.items()))


if __name__ == "__main__":
    main()
