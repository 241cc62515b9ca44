"""What segments cost in archive size: each --segment-size against one segment (0).

    python benchmarks/segment_cost.py [FOLDER ...] [--sizes 0,32,64,128] [--default] [--threads 2]
                                      [--curves FOLDER]

Each folder (default: data/eval/* and, if built, data/speed/*) is compressed in
process with the default settings and each segment size, plus (--default) the
size the command line uses when --segment-size is not given
(AdaptationConfig.segment_batches).  The bytes do not depend on
--threads (it only makes the run shorter).  Prints a markdown table: batches,
bytes per segment size and the cost against one segment in percent.

--curves writes each folder's one-segment per-batch bits (NAME.json): the
adaptation's learning curve, from which estimated_cost() tells what any segment
size would cost on a longer folder of the same kind (its batches are
exchangeable: random tiles, or a shuffled dataset).
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from osoa_zip import AdaptationConfig, compress

REPO = Path(__file__).resolve().parents[1]


def archive_size(folder: Path, segment_batches: int, threads: int) -> tuple[int, list[int], float]:
    """(bytes, bits of each batch, seconds) of the folder's archive with this segment size."""
    output = io.BytesIO()
    started = time.perf_counter()
    summary = compress([folder], output, adaptation=AdaptationConfig(segment_batches=segment_batches),
                       threads=threads)
    return len(output.getvalue()), [batch.bits for batch in summary.batches], time.perf_counter() - started


def estimated_cost(curve: list[int], segment_batches: int, batches: int | None = None) -> float:
    """The fraction of the coded bits that cutting ``batches`` batches (default: the curve's
    length) into segments of ``segment_batches`` adds, if batch j of every segment costs
    what batch j of one long segment costs on average (curve[j]) and the curve is flat after
    its end.  Exact in expectation for exchangeable batches; the measured sizes check it."""
    batches = batches or len(curve)
    def bits(j: int) -> float:
        return curve[min(j, len(curve) - 1)] if j < len(curve) else sum(curve[-16:]) / len(curve[-16:])
    whole = sum(bits(j) for j in range(batches))
    cut = sum(bits(j % segment_batches) for j in range(batches))
    return cut / whole - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--sizes", default="0", help="segment sizes in batches, comma-separated (0: one segment)")
    parser.add_argument("--default", action="store_true", help="also the default rule's segment size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--curves", type=Path, default=None, help="write each one-segment run's per-batch bits here")
    args = parser.parse_args()
    folders = args.folders or sorted(p for base in ("data/eval", "data/speed") for p in (REPO / base).glob("*")
                                     if p.is_dir())
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    print("| folder | batches | segment size | segments | bytes | cost against one segment | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for folder in folders:
        wanted = sizes + ([AdaptationConfig.segment_batches] if args.default else [])
        one = None
        for size in dict.fromkeys([0] + wanted):
            size_bytes, bits, seconds = archive_size(folder, size, args.threads)
            batches = len(bits)
            one = size_bytes if size == 0 else one
            if size == 0 and args.curves:
                args.curves.mkdir(parents=True, exist_ok=True)
                (args.curves / f"{folder.name}.json").write_text(json.dumps(bits))
            segments = -(-batches // size) if size else 1
            cost = f"{100 * (size_bytes / one - 1):+.2f}%" if size else "—"
            print(f"| {folder.name} | {batches} | {size or 'none'} | {segments} | {size_bytes} | {cost} "
                  f"| {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
