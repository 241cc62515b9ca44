"""Scale: many small files, and large images.  Time and peak memory of the CLI.

    python benchmarks/scale.py small-files [--files 100000] [--pngs 2000]
    python benchmarks/scale.py large-images [--megapixels 1 4 16] [--decompress-up-to 4] [--no-adapt]

Each step runs `python -m osoa_zip ...` in a subprocess, the way users run it,
and reads that child's peak RSS with os.wait4 (resource.getrusage's
RUSAGE_CHILDREN would report the largest child so far instead).

small-files: a folder of mostly tiny non-images (10-2000 bytes, text-like and
random) and some tiny PNGs (8x8 to 24x24, RGB and gray), compressed,
decompressed and tested; the restored tree is compared with the original.

large-images: one synthetic-but-realistic RGB photo per size (a real photo
upscaled with Lanczos plus a little sensor noise; smoother than a real photo
of that size, so it codes faster and smaller, but memory depends only on the
pixel count), compressed and (up to --decompress-up-to megapixels)
decompressed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTOS = [REPO / "data" / "eval" / "photos768" / "0003.png", REPO / "examples" / "images" / "0002.png"]


def run(*args: str | Path) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes, stderr) of one CLI run; raises on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        # Through GNU time: Linux carries a process's peak RSS across fork and exec, so a
        # child forked straight from this (large) process would report our peak, not its own.
        process = subprocess.Popen(["/usr/bin/time", "-f", "peak-rss-kib %M", sys.executable, "-m", "osoa_zip",
                                    *map(str, args)], stdout=subprocess.DEVNULL, stderr=err, env=env)
        process.wait()
        seconds = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if process.returncode != 0:
        raise RuntimeError(f"osoa-zip {' '.join(map(str, args))} exited {process.returncode}: {stderr[-500:]}")
    peak_kib = int(stderr.strip().splitlines()[-1].split()[-1])
    return seconds, peak_kib * 1024, stderr


def make_small_files(root: Path, files: int, pngs: int, seed: int = 0) -> int:
    """`files` entries in folders of 1000, of which `pngs` are tiny PNGs; returns total bytes."""
    rng = np.random.default_rng(seed)
    words = [bytes(rng.integers(97, 123, rng.integers(2, 9)).astype(np.uint8)) for _ in range(500)]
    png_every = max(1, files // pngs) if pngs else 0
    total = 0
    for index in range(files):
        folder = root / f"d{index // 1000:03d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True)
        if png_every and index % png_every == 0:
            side = int(rng.integers(8, 25))
            channels = 3 if index % 2 else 1
            pixels = rng.integers(0, 40, (side, side, channels)).cumsum(axis=1).clip(0, 255).astype(np.uint8)
            path = folder / f"f{index:06d}.png"
            Image.fromarray(pixels if channels == 3 else pixels[:, :, 0]).save(path, compress_level=0)
        elif index % 3:
            path = folder / f"f{index:06d}.txt"
            path.write_bytes(b" ".join(words[i] for i in rng.integers(0, 500, rng.integers(2, 300))))
        else:
            path = folder / f"f{index:06d}.bin"
            path.write_bytes(rng.bytes(int(rng.integers(10, 2000))))
        total += path.stat().st_size
    return total


def small_files(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="osoa-scale-", dir=args.work))
    try:
        source = work / "src"
        started = time.perf_counter()
        total = make_small_files(source, args.files, args.pngs)
        print(f"made {args.files} files ({args.pngs} PNGs), {total / 1e6:.1f} MB in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        archive = work / "a.osoa"
        rows = []
        extra = ["--no-adapt"] if args.no_adapt else []
        for step, arguments in [("compress", ["compress", *extra, source, archive]),
                                ("decompress", ["decompress", archive, work / "out"]),
                                ("test", ["test", archive])]:
            seconds, peak, stderr = run(*arguments)
            rows.append((step, seconds, peak))
            print(f"{step}: {seconds:.0f}s, peak RSS {peak / 2 ** 20:.0f} MiB  {stderr.strip()[-150:]}", flush=True)
        sys.path.insert(0, str(REPO))
        from osoa_zip.verify import tree_differences
        problems = tree_differences(source, work / "out")
        print(f"archive {archive.stat().st_size / 1e6:.1f} MB ({archive.stat().st_size / total:.1%} of the files); "
              f"restored tree {'identical' if not problems else problems[:5]}")
        print("\n| step | files | seconds | peak RSS MiB |\n|---|---|---|---|")
        for step, seconds, peak in rows:
            print(f"| {step} | {args.files} | {seconds:.0f} | {peak / 2 ** 20:.0f} |")
        if problems:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def realistic_photo(megapixels: float, seed: int = 0, noise_level: int = 2) -> Image.Image:
    photo = next(p for p in PHOTOS if p.exists())
    with Image.open(photo) as image:
        image = image.convert("RGB")
        scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
        size = (round(image.width * scale), round(image.height * scale))
        pixels = np.asarray(image.resize(size, Image.LANCZOS), np.int16)
    noise = np.random.default_rng(seed).integers(-noise_level, noise_level + 1, pixels.shape, dtype=np.int16)
    return Image.fromarray((pixels + noise).clip(0, 255).astype(np.uint8))


def large_images(args) -> None:
    rows = []
    for megapixels in args.megapixels:
        work = Path(tempfile.mkdtemp(prefix="osoa-scale-", dir=args.work))
        try:
            source = work / "src"
            source.mkdir()
            image = realistic_photo(megapixels, noise_level=args.noise)
            image.save(source / "photo.png", compress_level=args.png_level)
            size = (source / "photo.png").stat().st_size
            extra = ["--no-adapt"] if args.no_adapt else []
            seconds, peak, _ = run("compress", "-q", *extra, source, work / "a.osoa")
            row = [f"{megapixels:g}", f"{image.width}x{image.height}", f"{size / 1e6:.1f}",
                   f"{(work / 'a.osoa').stat().st_size * 8 / (image.width * image.height * 3):.3f}",
                   f"{seconds:.0f}", f"{peak / 2 ** 20:.0f}"]
            if megapixels <= args.decompress_up_to:
                seconds, peak, _ = run("decompress", "-q", work / "a.osoa", work / "out")
                with Image.open(work / "out" / "photo.png") as restored:
                    assert np.array_equal(np.asarray(restored), np.asarray(image)), "restored pixels differ"
                row += [f"{seconds:.0f}", f"{peak / 2 ** 20:.0f}"]
            else:
                row += ["-", "-"]
            rows.append(row)
            print(" | ".join(row), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| MP | size | PNG MB | bpsp | compress s | compress peak RSS MiB | decompress s "
          "| decompress peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="folder for the temporary trees (default: $TMPDIR)")
    parser.add_argument("--no-adapt", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    small = commands.add_parser("small-files")
    small.add_argument("--files", type=int, default=100_000)
    small.add_argument("--pngs", type=int, default=2_000)
    large = commands.add_parser("large-images")
    large.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 16])
    large.add_argument("--png-level", type=int, default=6,
                       help="zlib level of the source PNG (0: stored, so the model path always beats the file)")
    large.add_argument("--noise", type=int, default=2,
                       help="uniform noise of +-N added to the upscaled photo (0: smooth, so the model beats PNG)")
    large.add_argument("--decompress-up-to", type=float, default=4)
    args = parser.parse_args()
    {"small-files": small_files, "large-images": large_images}[args.command](args)


if __name__ == "__main__":
    main()
