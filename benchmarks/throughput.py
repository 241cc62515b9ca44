"""Whole-command-line speed: `osoa-zip compress` and `decompress`, MB/s of raw pixels.

  python benchmarks/throughput.py [FOLDER ...] [--repeat 2] [--option "--give-up-after 0" ...] [--jxl] [--limit N]
      [--models idf-sublattice-v6,idf-sublattice-v7]

For each folder (default: data/eval/* and, if built, data/speed/*:
`python scripts/build_corpus.py --speed-sets`), each variant of the command line
(defaults, then each --option string) is run `--repeat` times, interleaved
(folder by folder, variant after variant), so that a noisy shared machine
slows every variant alike.  Reports wall seconds, CPU seconds (user + system of
the process and its threads) and MB/s of raw pixels (H·W·C bytes, one byte per
sub-pixel), start-up included, plus the archive's size.  Start-up (importing
torch, loading the model) is measured on a one-image folder and printed, so
that steady-state throughput can be told from it: it is a constant ~1 s that
dominates folders of a few hundred kB.

A variant's -T N (threads; e.g. --option "-T 1" against the default, every CPU)
is given to decompress too.  --models runs every variant with each of the named
models (`--model NAME`), side by side in the same run: e.g. an engine-2 model
beside v6 (a model outside models/ is found through OSOA_ZIP_MODELS).  --jxl adds
JPEG XL lossless (effort 7) on the same images in the same run, encode and decode,
on one core (taskset -c 0: libjxl would otherwise use every core), as the
per-image child of `osoa-zip bench`.  MB/s is given per wall second and, in
parentheses, per CPU second (on a loaded machine the CPU figure is the one to compare).
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from osoa_zip.bench.classical import child_command, jxl_backend
from osoa_zip.bench.sets import image_subpixels

REPO = Path(__file__).resolve().parents[1]


def raw_bytes(folder: Path) -> int:
    """H·W·C of the folder's 8-bit images, from their headers (nothing is decoded)."""
    return sum(image_subpixels(path) or 0 for path in sorted(folder.iterdir()))


def timed(arguments: list[str], command: list[str] | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one osoa-zip process (or of ``command``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command or [sys.executable, "-m", "osoa_zip", *arguments], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--option", action="append", default=[],
                        help="a variant: extra compress options, as one string (its -T also for decompress)")
    parser.add_argument("--jxl", action="store_true", help="also JPEG XL lossless e7 on one core, same images")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each folder (copied)")
    parser.add_argument("--no-defaults", action="store_true", help="only the --option variants, not the defaults")
    parser.add_argument("--models", default="", help="comma-separated models, each run with every variant "
                                                     "(default: the command line's default model)")
    args = parser.parse_args()
    if args.jxl and not jxl_backend():
        parser.error("--jxl needs pillow-jxl-plugin (pip install 'osoa-zip[bench]')")
    folders = args.folders or sorted(p for base in ("data/eval", "data/speed") for p in (REPO / base).glob("*")
                                     if p.is_dir())
    models = [name.strip() for name in args.models.split(",") if name.strip()] or [""]
    options = args.option if args.no_defaults and args.option else [""] + args.option
    variants = [(model, option) for model in models for option in options]
    print(f"load average {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        one = scratch / "one"
        one.mkdir()
        first = next(p for p in sorted(folders[0].iterdir()))
        (one / first.name).write_bytes(first.read_bytes())
        startup = min(timed(["compress", "-q", "-f", str(one), str(scratch / "one.osoa")])[0] for _ in range(2))
        print(f"start-up: compress of one small image takes {startup:.2f} s")
        print("| folder | raw MB | model | options | bytes | compress s (CPU s) | MB/s (per CPU s) "
              "| decompress s (CPU s) | MB/s (per CPU s) |")
        print("|---|---:|---|---|---:|---:|---:|---:|---:|")
        for folder in folders:
            if args.limit:
                folder = _first_images(folder, args.limit, scratch)
            raw = raw_bytes(folder)
            for _ in range(args.repeat):
                for model, variant in variants:
                    archive, out = scratch / "a.osoa", scratch / "out"
                    options = shlex.split(variant) + (["--model", model] if model else [])
                    c_wall, c_cpu = timed(["compress", "-q", "-f", *options, str(folder), str(archive)])
                    d_wall, d_cpu = timed(["decompress", "-q", "-f", *_threads_of(options), str(archive), str(out)])
                    print(f"| {folder.name} | {raw / 1e6:.3f} | {model or 'default'} | {variant or 'defaults'} "
                          f"| {archive.stat().st_size} "
                          f"| {c_wall:.2f} ({c_cpu:.2f}) | {_rates(raw, c_wall, c_cpu)} | {d_wall:.2f} ({d_cpu:.2f}) "
                          f"| {_rates(raw, d_wall, d_cpu)} |", flush=True)
                if args.jxl:
                    _jxl_row(folder, raw, scratch)


def _first_images(folder: Path, count: int, scratch: Path) -> Path:
    """A copy of the folder's first ``count`` files (named like it, with the count)."""
    subset = scratch / "subsets" / f"{folder.name}[:{count}]"
    subset.mkdir(parents=True)
    for path in sorted(folder.iterdir())[:count]:
        shutil.copyfile(path, subset / path.name)
    return subset


def _threads_of(options: list[str]) -> list[str]:
    """The -T/--threads option of a compress command line, for decompress."""
    for index, option in enumerate(options):
        if option in ("-T", "--threads") and index + 1 < len(options):
            return [option, options[index + 1]]
        if option.startswith("--threads="):
            return [option]
    return []


def _jxl_row(folder: Path, raw: int, scratch: Path) -> None:
    encoded, decoded = scratch / "jxl", scratch / "jxl-decoded"
    for path in (encoded, decoded):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
    one_core = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if shutil.which("taskset") else []
    e_wall, e_cpu = timed([], one_core + child_command("encode", "jxl", folder, encoded, 0))
    d_wall, d_cpu = timed([], one_core + child_command("decode", "jxl", encoded, decoded, 0))
    size = sum(path.stat().st_size for path in encoded.iterdir())
    print(f"| {folder.name} | {raw / 1e6:.3f} | JPEG XL | e7, one core | {size} | {e_wall:.2f} ({e_cpu:.2f}) "
          f"| {_rates(raw, e_wall, e_cpu)} | {d_wall:.2f} ({d_cpu:.2f}) | {_rates(raw, d_wall, d_cpu)} |", flush=True)


def _rates(raw: int, wall: float, cpu: float) -> str:
    """MB/s of raw pixels per wall second (per CPU second)."""
    return f"{raw / 1e6 / wall:.3f} ({raw / 1e6 / max(cpu, 1e-9):.3f})"


if __name__ == "__main__":
    main()
