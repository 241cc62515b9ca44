"""Compression levels -1 ... -9 side by side: bpsp and MB/s both ways, every level, every set.

  python benchmarks/presets.py [SET ...] [--limits tiles32=64,...] [--levels 1,6,9] [--gemm-threads 1]
                               [--repeat 1]

For each evaluation set (default: data/eval/{tiles32,tiles64,fashion_mnist,gray32,
photos768}) the first N images (--limits; by default half of tiles32 and tiles64,
8 batches each at -6, every Fashion-MNIST image and grey tile, 7 and 2 batches,
and the first photo, 533 x 401) are compressed at every level through
the library (osoa_zip.archive.compress into memory), then decompressed into a
scratch folder (osoa_zip.archive.decompress) and checked pixel for pixel against
the originals.  Levels run one after the other within each set, so that a noisy
shared machine slows every level alike.  Timings are wall seconds inside this
process (after a warm-up archive at every level, so torch's start-up, ~2 s of
every command whatever its level, is excluded; each archive loads and checks its
model, as the command line does) and CPU seconds of the process (all threads).
Products run on one thread by default (--gemm-threads; the command line uses two
for wide products): on a shared machine a second OpenMP thread spins while it
waits for a core, which inflated the CPU time of the two-thread runs by up to
3x, unevenly between levels.  bpsp counts the whole archive per sub-pixel.
Prints a markdown table for docs/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osoa_zip.adapt.presets import DEFAULT_LEVEL, PRESETS
from osoa_zip.archive import compress, decompress
from osoa_zip.bench.sets import image_subpixels
from osoa_zip.exact.stack import set_gemm_threads
from osoa_zip.models.registry import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
SETS = ("tiles32", "tiles64", "fashion_mnist", "gray32", "photos768")


def first_images(folder: Path, limit: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if image_subpixels(p))[:limit]


def pixels(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


DEFAULT_LIMITS = "tiles32=128,tiles64=64,fashion_mnist=512,gray32=128,photos768=1"


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    return " ".join(flag for flag in wanted if flag in flags) or "no AVX2"


def timed(work) -> tuple[float, float]:
    """(wall, CPU) seconds of work()."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_level(level: int, files: list[Path], scratch: Path) -> tuple[int, tuple, tuple]:
    """(archive bytes, compress (wall, CPU) seconds, decompress (wall, CPU)); the restored pixels are checked."""
    chosen = PRESETS[level]
    model = chosen.model or DEFAULT_MODEL
    output = io.BytesIO()
    encode = timed(lambda: compress(list(files), output, model, chosen.config(model)))
    destination = Path(tempfile.mkdtemp(prefix=f"level{level}-", dir=scratch))
    output.seek(0)
    decode = timed(lambda: decompress(output, destination))
    for path in files:
        restored = destination / path.name
        original_mode, original = pixels(path)
        restored_mode, decoded = pixels(restored)
        if original_mode != restored_mode or not np.array_equal(original, decoded):
            raise SystemExit(f"level {level}: {path.name} did not come back pixel for pixel")
    return len(output.getvalue()), encode, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", default=list(SETS))
    parser.add_argument("--limits", default=DEFAULT_LIMITS, help="SET=N,...: the first N images of each set")
    parser.add_argument("--levels", default=",".join(str(level) for level in PRESETS))
    parser.add_argument("--gemm-threads", type=int, default=1, help="threads for wide products (CLI: 2)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every level; the least time counts")
    args = parser.parse_args()
    levels = [int(item) for item in args.levels.split(",")]
    limits = {name: int(count) for name, count in (item.split("=") for item in args.limits.split(","))}
    torch.set_num_threads(1)  # what the command line does (osoa_zip/cli.py)
    set_gemm_threads(args.gemm_threads)
    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}, one intra-op thread, "
          f"{args.gemm_threads} for wide products; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for level in levels:  # each level's model loaded, and every code path run once
            run_level(level, first_images(REPO / "data" / "eval" / "gray32", 1), Path(scratch))
        for name in args.sets:
            files = first_images(REPO / "data" / "eval" / name, limits.get(name, 64))
            subpixels = sum(image_subpixels(path) for path in files)
            best: dict[int, tuple] = {}
            for _ in range(args.repeat):  # levels in turn, each round; the fastest round of each counts
                for level in levels:
                    size, encode, decode = run_level(level, files, Path(scratch))
                    print(f"{name} -{level}: {8 * size / subpixels:.4f} bpsp, {size} bytes, "
                          f"wall {encode[0]:.1f} / {decode[0]:.1f} s, CPU {encode[1]:.1f} / {decode[1]:.1f} s, "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
                    if level in best:
                        encode, decode = (tuple(map(min, a, b)) for a, b in zip(best[level][1:], (encode, decode)))
                    best[level] = (size, encode, decode)
            rows += [(name, len(files), subpixels, level, *best[level]) for level in levels]
    print(f"load average {os.getloadavg()[0]:.2f} at the end\n")
    print(f"| set (images, MB) | level | bpsp | size vs -{DEFAULT_LEVEL} | MB/s compress / decompress (wall) "
          f"| MB/s by CPU time | speed vs -{DEFAULT_LEVEL} by CPU time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, count, subpixels, level, size, encode, decode in rows:
        base = next((r for r in rows if r[0] == name and r[3] == DEFAULT_LEVEL), None)
        relative = f"{size / base[4] - 1:+.2%}" if base else ""
        faster = f"{base[5][1] / encode[1]:.2f}× / {base[6][1] / decode[1]:.2f}×" if base else ""
        megabytes = subpixels / 1e6
        print(f"| {name} ({count}, {megabytes:.2f}) | -{level} | {8 * size / subpixels:.4f} | {relative} | "
              f"{megabytes / encode[0]:.3f} / {megabytes / decode[0]:.3f} | "
              f"{megabytes / encode[1]:.3f} / {megabytes / decode[1]:.3f} | {faster} |")


if __name__ == "__main__":
    main()
