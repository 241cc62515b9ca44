"""What segments cost in archive size: each --segment-size against one segment (0).

    python benchmarks/segment_cost.py [FOLDER ...] [--sizes 0,32,64,128] [--default] [--threads 2]

Each folder (default: data/eval/* and, if built, data/speed/*) is compressed in
process with the default settings and each segment size, plus (--default) the
size the command line uses when --segment-size is not given
(osoa_zip.adapt.segments.DEFAULT_SEGMENT_BATCHES).  The bytes do not depend on
--threads (it only makes the run shorter).  Prints a markdown table: batches,
bytes per segment size and the cost against one segment in percent.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from osoa_zip import AdaptationConfig, compress
from osoa_zip.adapt.segments import DEFAULT_SEGMENT_BATCHES

REPO = Path(__file__).resolve().parents[1]


def archive_size(folder: Path, segment_batches: int, threads: int) -> tuple[int, int, float]:
    """(bytes, batches, seconds) of the folder's archive with this segment size."""
    output = io.BytesIO()
    started = time.perf_counter()
    summary = compress([folder], output, adaptation=AdaptationConfig(segment_batches=segment_batches),
                       threads=threads)
    return len(output.getvalue()), len(summary.batches), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--sizes", default="0", help="segment sizes in batches, comma-separated (0: one segment)")
    parser.add_argument("--default", action="store_true", help="also the default rule's segment size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    folders = args.folders or sorted(p for base in ("data/eval", "data/speed") for p in (REPO / base).glob("*")
                                     if p.is_dir())
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    print("| folder | batches | segment size | segments | bytes | cost against one segment | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for folder in folders:
        wanted = sizes + ([DEFAULT_SEGMENT_BATCHES] if args.default else [])
        one = None
        for size in dict.fromkeys([0] + wanted):
            size_bytes, batches, seconds = archive_size(folder, size, args.threads)
            one = size_bytes if size == 0 else one
            segments = -(-batches // size) if size else 1
            cost = f"{100 * (size_bytes / one - 1):+.2f}%" if size else "—"
            print(f"| {folder.name} | {batches} | {size or 'none'} | {segments} | {size_bytes} | {cost} "
                  f"| {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
