"""A mixed folder like a real user's, archived by osoa-zip and by `tar | xz -9e` side by side.

Issue 17 judges osoa-zip on a folder nobody here tuned for: several hundred small files of
every kind. This script builds one, deterministically and offline, from what is on disk:

  * photo-like images: crops of data/eval/photos768 and copies of the photo tiles
    (tiles32, tiles64, examples/images), saved as PNG, BMP, PPM/PGM and TIFF, in RGB or grey;
  * other images: palette and RGBA PNGs, gradients, flat colours, text-like renders, noise;
  * odd and broken files: truncated PNG/TIFF, a garbled TIFF, zero-byte files, JPEGs,
    16-bit and 1-bit PNGs;
  * text: copies of the Python standard library's own .py/.txt files, generated CSV/JSON/logs;
  * binary: seeded random bytes, an SQLite database, a zip, a raw float array.

It then measures, in one run (the machine is shared and noisy, so only ratios within one run
mean anything): `tar -cf - DIR | xz -9e` (size, seconds); `osoa-zip compress DIR out.osoa`
with default flags (size, seconds, what it wrote to stderr); `osoa-zip decompress` and a
byte-for-byte comparison of every file (pixels, mode, size and palette for images whose bytes
differ); and `osoa-zip list`, to count entries by method and the photo-like images on the
model path. Usage:

    python benchmarks/mixed_folder.py [--count 300] [--out DIR] [--keep] [--flags='-1 ...']

--flags passes options to `osoa-zip compress` (default: none, i.e. default flags).

The same seed, Python and Pillow give the same folder (the standard-library files copied are
the running interpreter's own).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
EVAL = REPO / "data" / "eval"

PHOTO = "photo"      # photo-like image: should take the model path when the model codes it smaller
IMAGE = "image"      # other readable lossless image (palette, RGBA, synthetic)
ODD = "odd"          # broken, lossy or unusual image-named file: must come back byte-exact
TEXT = "text"
BINARY = "binary"

# Share of --count per kind; photo-like and other images dominate, as in the folder.
SHARES = {PHOTO: 0.30, IMAGE: 0.22, ODD: 0.08, TEXT: 0.25, BINARY: 0.15}


# ---------------------------------------------------------------------------------------------
# Building the folder


def _photo_sources() -> tuple[list[Image.Image], list[Path]]:
    """The large photos to crop from, and the ready-made photo tiles to copy."""
    photos = [Image.open(path).convert("RGB") for path in sorted((EVAL / "photos768").glob("*.png"))]
    tiles = sorted((EVAL / "tiles32").glob("*.png")) + sorted((EVAL / "tiles64").glob("*.png"))
    tiles += sorted((REPO / "examples" / "images").glob("*.png"))
    if not photos or not tiles:
        sys.exit(f"mixed_folder: no photos under {EVAL} (build data/ first)")
    return photos, tiles


def _crop(rng: random.Random, photos: list[Image.Image]) -> Image.Image:
    photo = rng.choice(photos)
    width = rng.choice([32, 48, 64, 96, 128, 160, 192])
    height = rng.choice([32, 48, 64, 96, 128, 160, 192])
    width, height = min(width, photo.width), min(height, photo.height)
    left = rng.randrange(photo.width - width + 1)
    top = rng.randrange(photo.height - height + 1)
    return photo.crop((left, top, left + width, top + height))


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _gimp_pnm(image: Image.Image) -> bytes:
    """PPM/PGM as GIMP writes it: a comment line Pillow does not write back."""
    magic = b"P5" if image.mode == "L" else b"P6"
    return (magic + b"\n# CREATOR: GIMP PNM Filter Version 1.1\n"
            + f"{image.width} {image.height}\n255\n".encode() + image.tobytes())


def _foreign_bmp(image: Image.Image) -> bytes:
    """24-bit BMP as many tools write it: 72 dpi and biSizeImage 0 (allowed for BI_RGB),
    which Pillow writes differently, so the bytes are not Pillow's."""
    rgb = np.asarray(image.convert("RGB"))[::-1, :, ::-1]
    stride = (3 * image.width + 3) // 4 * 4
    rows = np.zeros((image.height, stride), dtype=np.uint8)
    rows[:, :3 * image.width] = rgb.reshape(image.height, -1)
    pixels = rows.tobytes()
    info = struct.pack("<IiiHHIIiiII", 40, image.width, image.height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels


def _photo_file(rng: random.Random, index: int, photos, tiles) -> tuple[str, bytes]:
    if rng.random() < 0.3:
        image = Image.open(rng.choice(tiles)).convert("RGB")
    else:
        image = _crop(rng, photos)
    if rng.random() < 0.2:
        image = image.convert("L")
    grey = image.mode == "L"
    fmt = rng.choices(["png", "bmp", "pnm", "tiff", "tiff_lzw", "foreign_bmp", "gimp_pnm"],
                      weights=[10, 1, 1, 1, 2, 2, 2])[0]
    if fmt == "foreign_bmp":
        return f"photos/photo_{index:03d}.bmp", _foreign_bmp(image)
    if fmt == "gimp_pnm":
        return f"photos/photo_{index:03d}.{'pgm' if grey else 'ppm'}", _gimp_pnm(image)
    if fmt == "png":
        return f"photos/photo_{index:03d}.png", _encode(image, "PNG", compress_level=rng.choice([6, 9]))
    if fmt == "bmp":
        return f"photos/photo_{index:03d}.bmp", _encode(image, "BMP")
    if fmt == "pnm":
        return f"photos/photo_{index:03d}.{'pgm' if grey else 'ppm'}", _encode(image, "PPM")
    compression = "tiff_lzw" if fmt == "tiff_lzw" else None
    return f"photos/photo_{index:03d}.tif", _encode(image, "TIFF", compression=compression)


def _gradient(rng: random.Random, width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        a, b, c = (rng.uniform(-1, 1) for _ in range(3))
        plane = a * x / width + b * y / height + c
        channels.append((plane - plane.min()) / (np.ptp(plane) or 1) * 255)
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), "RGB")


def _text_render(rng: random.Random, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 255, 255) if rng.random() < 0.7 else (30, 30, 40))
    draw = ImageDraw.Draw(image)
    ink = (0, 0, 0) if image.getpixel((0, 0))[0] > 128 else (220, 220, 200)
    words = ["osoa", "zip", "lossless", "tile", "batch", "photo", "adapt", "model", "flow", "ANS"]
    for row in range(2, height - 10, 12):
        draw.text((3, row), " ".join(rng.choice(words) for _ in range(6)), fill=ink)
    return image


def _synthetic_file(rng: random.Random, index: int, photos) -> tuple[str, bytes]:
    width, height = rng.choice([16, 32, 64, 100, 128, 200]), rng.choice([16, 32, 64, 100, 128])
    kind = rng.choice(["gradient", "flat", "text", "noise", "palette", "palette", "rgba", "grey"])
    if kind == "gradient":
        image = _gradient(rng, width, height)
    elif kind == "flat":
        image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    elif kind == "text":
        image = _text_render(rng, max(width, 96), max(height, 32))
    elif kind == "noise":
        noise = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (height, width, 3))
        image = Image.fromarray(noise.astype(np.uint8), "RGB")
    elif kind == "palette":
        image = _crop(rng, photos).quantize(rng.choice([4, 16, 64, 256]),
                                            dither=rng.choice([Image.Dither.NONE, Image.Dither.FLOYDSTEINBERG]))
    elif kind == "rgba":
        image = _crop(rng, photos).convert("RGBA")
        alpha = _gradient(rng, image.width, image.height).convert("L")
        image.putalpha(alpha)
    else:
        image = _gradient(rng, width, height).convert("L")
    fmt = "PNG" if kind in ("palette", "rgba") or rng.random() < 0.7 else rng.choice(["BMP", "TIFF"])
    suffix = {"PNG": "png", "BMP": "bmp", "TIFF": "tif"}[fmt]
    return f"images/{kind}_{index:03d}.{suffix}", _encode(image, fmt)


def _odd_file(rng: random.Random, index: int, photos) -> tuple[str, bytes]:
    """Files a real folder has and an archiver must survive: each is stored byte-exact."""
    image = _crop(rng, photos)
    kind = ["truncated_png", "truncated_tiff", "garbled_tiff", "empty", "jpeg",
            "png16", "bilevel", "gif"][index % 8]
    if kind == "truncated_png":
        data = _encode(image, "PNG")
        return f"odd/truncated_{index:03d}.png", data[:len(data) * 3 // 5]
    if kind == "truncated_tiff":
        data = _encode(image, "TIFF")
        return f"odd/truncated_{index:03d}.tif", data[:len(data) // 2]
    if kind == "garbled_tiff":
        data = bytearray(_encode(image, "TIFF", compression="tiff_lzw"))
        for _ in range(12):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        return f"odd/garbled_{index:03d}.tif", bytes(data)
    if kind == "empty":
        return f"odd/empty_{index:03d}.{rng.choice(['png', 'txt', 'tif'])}", b""
    if kind == "jpeg":
        return f"odd/camera_{index:03d}.jpg", _encode(image, "JPEG", quality=rng.choice([75, 90]))
    if kind == "png16":
        deep = (np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype("<u2")
        return f"odd/deep16_{index:03d}.png", _encode(Image.frombytes("I;16", image.size, deep.tobytes()), "PNG")
    if kind == "bilevel":
        return f"odd/bilevel_{index:03d}.png", _encode(image.convert("1"), "PNG")
    return f"odd/anim_{index:03d}.gif", _encode(image.quantize(32), "GIF")


def _stdlib_texts() -> list[Path]:
    """The interpreter's own library sources: real text that is on every machine."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.txt")) + sorted(stdlib.glob("email/*.py"))
    return [path for path in found if 200 < path.stat().st_size < 40_000]


def _text_file(rng: random.Random, index: int, texts: list[Path]) -> tuple[str, bytes]:
    kind = rng.choices(["copy", "csv", "json", "log"], weights=[6, 2, 1, 1])[0]
    if kind == "copy" and texts:
        source = rng.choice(texts)
        return f"text/{index:03d}_{source.name}", source.read_bytes()
    if kind == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["id", "timestamp", "sensor", "value", "status"])
        for row in range(rng.randrange(50, 600)):
            writer.writerow([row, 1_700_000_000 + 60 * row, rng.choice("ABCD"),
                             f"{rng.gauss(20, 5):.3f}", rng.choice(["ok", "ok", "ok", "warn"])])
        return f"text/table_{index:03d}.csv", buffer.getvalue().encode()
    if kind == "json":
        records = [{"name": f"item{n}", "tags": rng.sample(["a", "b", "c", "d", "e"], 2),
                    "score": round(rng.random(), 4), "size": rng.randrange(10**6)}
                   for n in range(rng.randrange(10, 200))]
        return f"text/records_{index:03d}.json", json.dumps(records, indent=2).encode()
    lines = [f"2026-01-{1 + n % 28:02d} 12:{n % 60:02d}:00 {rng.choice(['INFO', 'INFO', 'WARN', 'DEBUG'])} "
             f"worker-{rng.randrange(8)} processed batch {n} in {rng.uniform(0.1, 3):.2f}s"
             for n in range(rng.randrange(100, 800))]
    return f"text/run_{index:03d}.log", ("\n".join(lines) + "\n").encode()


def _binary_file(rng: random.Random, index: int, texts: list[Path], folder: Path) -> tuple[str, bytes]:
    kind = ["random", "floats", "sqlite", "zip", "random", "floats"][index % 6]
    if kind == "random":
        return f"bin/blob_{index:03d}.bin", rng.randbytes(rng.randrange(256, 40_000))
    if kind == "floats":
        values = np.cumsum(np.random.default_rng(rng.randrange(2**32)).normal(size=rng.randrange(500, 5000)))
        return f"bin/signal_{index:03d}.f32", values.astype("<f4").tobytes()
    if kind == "sqlite":
        path = folder / f"db_{index:03d}.sqlite"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT, value REAL)")
            db.executemany("INSERT INTO events (name, value) VALUES (?, ?)",
                           [(f"event{n}", rng.random()) for n in range(rng.randrange(100, 2000))])
        db.close()
        data = path.read_bytes()
        path.unlink()
        return f"bin/db_{index:03d}.sqlite", data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in rng.sample(texts, min(3, len(texts))):
            archive.writestr(zipfile.ZipInfo(source.name, date_time=(2026, 1, 1, 0, 0, 0)),
                             source.read_bytes(), zipfile.ZIP_DEFLATED)
    return f"bin/bundle_{index:03d}.zip", buffer.getvalue()


def build_folder(folder: Path, count: int, seed: int) -> dict[str, str]:
    """Write about `count` files under `folder`; return each relative path's kind."""
    rng = random.Random(seed)
    photos, tiles = _photo_sources()
    texts = _stdlib_texts()
    scratch = Path(tempfile.mkdtemp(prefix="mixed-scratch-"))
    kinds: dict[str, str] = {}
    stamp = 1_767_225_600  # 2026-01-01: fixed times, so that tar's output is the same every run
    try:
        for kind, share in SHARES.items():
            for index in range(max(1, round(count * share))):
                if kind == PHOTO:
                    name, data = _photo_file(rng, index, photos, tiles)
                elif kind == IMAGE:
                    name, data = _synthetic_file(rng, index, photos)
                elif kind == ODD:
                    name, data = _odd_file(rng, index, photos)
                elif kind == TEXT:
                    name, data = _text_file(rng, index, texts)
                else:
                    name, data = _binary_file(rng, index, texts, scratch)
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                os.utime(path, (stamp + len(kinds), stamp + len(kinds)))
                kinds[name] = kind
        for directory in [folder, *(path for path in folder.rglob("*") if path.is_dir())]:
            os.utime(directory, (stamp, stamp))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return kinds


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Run:
    size: int
    seconds: float       # wall clock
    cpu_seconds: float   # user + system of the child processes (osoa-zip uses every CPU by default)
    stderr: str = ""
    returncode: int = 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _osoa_zip() -> list[str]:
    return [sys.executable, "-m", "osoa_zip"]


def run_tar_xz(folder: Path, archive: Path) -> Run:
    start, cpu = time.perf_counter(), _children_cpu()
    with archive.open("wb") as output:
        tar = subprocess.Popen(["tar", "--sort=name", "-cf", "-", "-C", str(folder.parent), folder.name],
                               stdout=subprocess.PIPE)
        xz = subprocess.run(["xz", "-9e"], stdin=tar.stdout, stdout=output, check=True)
        tar.stdout.close()
        if tar.wait() != 0 or xz.returncode != 0:
            sys.exit("mixed_folder: tar | xz failed")
    return Run(archive.stat().st_size, time.perf_counter() - start, _children_cpu() - cpu)


def run_osoa(arguments: list[str], output: Path | None = None) -> Run:
    """Run osoa-zip as a user would from a script: stdin/stdout/stderr not a terminal."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(_osoa_zip() + arguments, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    size = output.stat().st_size if output is not None and output.exists() else 0
    return Run(size, seconds, _children_cpu() - cpu, done.stderr, done.returncode)


@dataclass
class Entry:
    kind: str      # file, image, dir, ...
    coded: int     # bytes the archive spends on it, as `list` apportions them
    method: str    # model, palette, xz, store, ... ("" for a directory or link)
    name: str


def list_entries(archive: Path) -> list[Entry]:
    """The entries of `osoa-zip list` (names here have no spaces)."""
    done = subprocess.run(_osoa_zip() + ["list", str(archive)], capture_output=True, text=True, check=True)
    entries = []
    for line in done.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        method = fields[3] if len(fields) >= 5 else ""
        entries.append(Entry(fields[0], int(float(fields[2])), method, fields[-1]))
    return entries


def tar_xz_bytes(folder: Path, names: list[str]) -> int:
    """Size of `tar | xz -9e` over these files alone: what one solid stream would give them."""
    tar = subprocess.Popen(["tar", "--sort=name", "-cf", "-", "-C", str(folder), *sorted(names)],
                           stdout=subprocess.PIPE)
    xz = subprocess.run(["xz", "-9e"], stdin=tar.stdout, capture_output=True, check=True)
    tar.stdout.close()
    tar.wait()
    return len(xz.stdout)


def model_would_win(folder: Path, missed: list[str], entries: list[Entry], scratch: Path) -> int:
    """How many photo-like images left off the model path the model codes smaller than the
    archive stored them (issue 17: each of those belongs on the model path).

    Their pixels, saved as PNG, are compressed on their own with default flags: an estimate
    (a group of their own adapts on less), compared with what the archive spent on each."""
    if not missed:
        return 0
    if scratch.exists():
        shutil.rmtree(scratch)
    pixels_dir = scratch / "pixels"
    for number, name in enumerate(missed):
        with Image.open(folder / name) as image:
            target = pixels_dir / f"{number:03d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
    trial = scratch / "missed.osoa"
    if run_osoa(["compress", str(pixels_dir), str(trial)], trial).returncode != 0:
        print("  (could not compress the missed photos on their own)")
        return 0
    through_model = {entry.name: entry for entry in list_entries(trial)}
    stored = {entry.name: entry for entry in entries}
    wins = 0
    for number, name in enumerate(missed):
        model = through_model.get(f"{number:03d}.png")
        model_bytes = f"{model.coded} B via {model.method}" if model else "?"
        win = model is not None and model.method == "model" and model.coded < stored[name].coded
        wins += win
        print(f"  photo-like, not on the model path: {name} ({(folder / name).stat().st_size} B file, "
              f"{stored[name].coded} B via {stored[name].method}; its pixels alone: {model_bytes})"
              f"{'  <- model smaller' if win else ''}")
    return wins


def _same_pixels(original: Path, restored: Path) -> bool:
    with Image.open(original) as a, Image.open(restored) as b:
        if (a.mode, a.size) != (b.mode, b.size) or a.getpalette() != b.getpalette():
            return False
        return a.tobytes() == b.tobytes()


def compare(folder: Path, restored: Path, image_names: set[str]) -> Counter:
    """Count files restored byte-identical, pixel-identical (images only), differing, missing."""
    counts: Counter = Counter()
    originals = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    for name in sorted(originals):
        back = restored / name
        if not back.is_file():
            counts["missing"] += 1
            print(f"  missing: {name}")
        elif back.read_bytes() == (folder / name).read_bytes():
            counts["bytes"] += 1
        elif name in image_names and _same_pixels(folder / name, back):
            counts["pixels"] += 1
        else:
            counts["differ"] += 1
            print(f"  differs: {name}")
    extra = {path.relative_to(restored).as_posix() for path in restored.rglob("*") if path.is_file()}
    counts["extra"] = len(extra - originals)
    return counts


def print_breakdown(folder: Path, kinds: dict[str, str], entries: list[Entry], archive_size: int) -> None:
    """Where the bytes go, by kind of file: osoa-zip's coded bytes against one solid
    `tar | xz -9e` over that kind alone (the container's own overhead is the remainder)."""
    coded = {entry.name: entry.coded for entry in entries}
    print()
    print("| kind | files | bytes | tar \\| xz -9e of these alone | osoa-zip coded | ratio | method model |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    model = {entry.name for entry in entries if entry.method == "model"}
    for kind in SHARES:
        names = [name for name, of in kinds.items() if of == kind]
        raw = sum((folder / name).stat().st_size for name in names)
        solid = tar_xz_bytes(folder, names)
        ours = sum(coded.get(name, 0) for name in names)
        print(f"| {kind} | {len(names)} | {raw} | {solid} | {ours} | {ours / solid:.2f} | "
              f"{sum(name in model for name in names)} |")
    # A solid block's bytes are shared among its files by size, so per kind the rows above are
    # estimates; over every file off the model path together they are exact.
    general = [entry.name for entry in entries if entry.kind == "file"]
    solid = tar_xz_bytes(folder, general)
    ours = sum(coded[name] for name in general)
    print(f"| all files off the model path | {len(general)} | {sum((folder / n).stat().st_size for n in general)} "
          f"| {solid} | {ours} | {ours / solid:.2f} | |")
    print(f"| container overhead | | | | {archive_size - sum(coded.values())} | | |")


def _tool_version(tool: str) -> str:
    done = subprocess.run([tool, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.stdout else tool


def _cpu_flags() -> str:
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"]
    return " ".join(f"{flag}{'+' if flag in flags else '-'}" for flag in wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="about this many files (default 300)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, help="work here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder, archives and restored copy")
    parser.add_argument("--flags", default="", help="options for `osoa-zip compress`, e.g. --flags='-1'")
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="mixed-folder-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "mixed"
    if folder.exists():
        shutil.rmtree(folder)
    try:
        kinds = build_folder(folder, args.count, args.seed)
        total = sum((folder / name).stat().st_size for name in kinds)
        by_kind = Counter(kinds.values())
        print(f"folder: {folder} — {len(kinds)} files, {total / 1e6:.2f} MB "
              f"({', '.join(f'{n} {k}' for k, n in by_kind.items())})")
        print(f"CPU flags: {_cpu_flags()}; load average before: {os.getloadavg()[0]:.2f}")

        tar_xz = run_tar_xz(folder, work / "mixed.tar.xz")
        print(f"tar | xz -9e ({_tool_version('xz')}): {tar_xz.size} B in {tar_xz.seconds:.1f} s")
        archive = work / "mixed.osoa"
        archive.unlink(missing_ok=True)
        packed = run_osoa(["compress", *args.flags.split(), str(folder), str(archive)], archive)
        print(f"osoa-zip compress {args.flags}".rstrip() + f": {packed.size} B in {packed.seconds:.1f} s, "
              f"exit {packed.returncode}, "
              f"{len(packed.stderr.splitlines())} stderr lines")
        if packed.returncode != 0:
            sys.exit(f"mixed_folder: osoa-zip compress failed:\n{packed.stderr}")

        entries = list_entries(archive)
        methods = Counter(entry.method or "link" for entry in entries if entry.kind != "dir")
        image_names = {entry.name for entry in entries if entry.kind == "image"}
        on_model = {entry.name for entry in entries if entry.method == "model"}
        photos = [name for name, kind in kinds.items() if kind == PHOTO]
        photos_on_model = sum(name in on_model for name in photos)
        missed = sorted(set(photos) - on_model)
        smaller = model_would_win(folder, missed, entries, work / "missed")

        restored = work / "restored"
        if restored.exists():
            shutil.rmtree(restored)
        unpacked = run_osoa(["decompress", str(archive), str(restored)])
        if unpacked.returncode != 0:
            sys.exit(f"mixed_folder: osoa-zip decompress failed:\n{unpacked.stderr}")
        counts = compare(folder, restored, image_names)
        exact = counts["missing"] == counts["differ"] == counts["extra"] == 0
        print(f"osoa-zip decompress: {unpacked.seconds:.1f} s; {counts['bytes']} byte-identical, "
              f"{counts['pixels']} pixel-identical, {counts['differ']} differ, {counts['missing']} missing, "
              f"{counts['extra']} extra")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if packed.stderr:
            print("osoa-zip compress stderr (first 10 lines):")
            for line in packed.stderr.splitlines()[:10]:
                print(f"  | {line}")

        print()
        print(f"| {len(kinds)} files, {total / 1e6:.2f} MB | tar \\| xz -9e | osoa-zip | ratio |")
        print("|---|---:|---:|---:|")
        print(f"| archive bytes | {tar_xz.size} | {packed.size} | {packed.size / tar_xz.size:.2f} |")
        print(f"| compress seconds | {tar_xz.seconds:.1f} | {packed.seconds:.1f} | "
              f"{packed.seconds / tar_xz.seconds:.1f}× |")
        print(f"| compress CPU seconds | {tar_xz.cpu_seconds:.1f} | {packed.cpu_seconds:.1f} | "
              f"{packed.cpu_seconds / tar_xz.cpu_seconds:.1f}× |")
        print(f"| decompress seconds | | {unpacked.seconds:.1f} | |")
        print(f"| round trip exact | yes | {'yes' if exact else 'no'} "
              f"({counts['bytes']} bytes, {counts['pixels']} pixels) | |")
        print(f"| stderr empty | yes | {'yes' if not packed.stderr else 'no'} "
              f"({len(packed.stderr.splitlines())} lines) | |")
        print(f"| photo-like images on the model path | | {photos_on_model} / {len(photos)} | |")
        print(f"| photo-like images off it that the model codes smaller | | {smaller} / {len(missed)} | |")
        print(f"| entries by method | | {', '.join(f'{m} {n}' for m, n in sorted(methods.items()))} | |")
        print_breakdown(folder, kinds, entries, packed.size)
    finally:
        if not args.keep:
            shutil.rmtree(work if args.out is None else folder, ignore_errors=True)
            if args.out is not None:
                for leftover in ("mixed.tar.xz", "mixed.osoa", "restored", "missed"):
                    target = work / leftover
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
