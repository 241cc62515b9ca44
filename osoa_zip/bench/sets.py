"""The images of a benchmark folder, exactly as each codec gets them.

Every codec is run on one copy of the same files (the first --limit images
in sorted order), so their numbers compare.  model_batches() cuts that copy
into the batches osoa-zip codes, in the same order, from the same public
pieces the archiver uses (scan, read_image, plan_batches); the benchmark
checks it against the archive's own per-batch statistics.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..files.scan import FILE, scan
from ..imaging.io import COLOR_CHANNELS, MODEL_MODES, read_image
from ..imaging.tiles import gather, pad_even, plan_batches
from ..layout import GROUP_SUBPIXELS
from . import BenchError


@dataclass
class BenchSet:
    name: str                 # the folder's name, used in tables and file names
    source: Path              # the folder the user named
    folder: Path              # the copy every codec reads
    files: list[str]          # relative POSIX paths, sorted
    subpixels: int            # sum of H*W*C over the images
    skipped: list[str] = field(default_factory=list)  # files that are not 8-bit L/LA/RGB/RGBA images

    @property
    def images(self) -> int:
        return len(self.files)


def image_subpixels(path: Path) -> int | None:
    """H*W*C of an 8-bit image, None for anything else."""
    try:
        with Image.open(path) as image:
            if image.mode not in MODEL_MODES:
                return None
            return image.width * image.height * MODEL_MODES[image.mode]
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def prepare_set(source: Path, limit: int | None, into: Path, name: str | None = None) -> BenchSet:
    """Copy the first `limit` images of `source` (sorted, recursive) into `into`."""
    source = Path(source)
    if not source.is_dir():
        raise BenchError(f"{source}: not a folder")
    files, skipped, subpixels = [], [], 0
    for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(source).as_posix()
        if limit is not None and len(files) >= limit:
            break
        size = image_subpixels(path)
        if size is None:
            skipped.append(relative)
            continue
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        files.append(relative)
        subpixels += size
    if not files:
        raise BenchError(f"{source}: no 8-bit L/LA/RGB/RGBA images")
    return BenchSet(name or source.resolve().name, source, into, files, subpixels, skipped)


def model_batches(folder: Path, tile_size: int, batch_size) -> list[np.ndarray]:
    """The B x C x H x W uint8 batches osoa-zip codes for `folder`, in archive order.

    Images are grouped by about GROUP_SUBPIXELS sub-pixels as pack.py does;
    a group the archiver stores as files (coded larger than its files) is
    not noticed here, which the caller detects by comparing batch counts.
    """
    groups, current, size = [], [], 0
    for entry in scan([Path(folder)], lambda message: None):
        if entry.kind != FILE:
            continue
        record = read_image(entry.source)
        if record is None:
            continue
        current.append(record.pixels[:, :, :COLOR_CHANNELS[record.mode]])
        size += record.pixels.size
        if size >= GROUP_SUBPIXELS:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    batches = []
    for colour in groups:
        padded = [pad_even(c) for c in colour]
        batches += [gather(batch, padded) for batch in plan_batches([c.shape for c in colour], tile_size, batch_size)]
    return batches


def tile_folder(source: Path, count: int, tile_size: int, into: Path) -> tuple[int, int]:
    """Write `count` images of one model tile each into `into`, cut from `source`'s
    images in order (repeated if needed); return their sub-pixels and how many are distinct.

    For the scaling runs: the work then grows with `count` alone.
    """
    tiles = []
    for path in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        if image_subpixels(path) is None:
            continue
        with Image.open(path) as image:
            pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        for y in range(0, max(height - tile_size, 0) + 1, tile_size):
            for x in range(0, max(width - tile_size, 0) + 1, tile_size):
                tiles.append(pixels[y:y + tile_size, x:x + tile_size])
        if len(tiles) >= count:
            break
    if not tiles:
        raise BenchError(f"{source}: no images to cut tiles from")
    into.mkdir(parents=True)
    subpixels = 0
    for index in range(count):
        tile = tiles[index % len(tiles)]
        # Little zlib effort: these files are inputs, their size is not measured.
        Image.fromarray(tile).save(into / f"{index:06d}.png", compress_level=1)
        subpixels += tile.size
    return subpixels, min(count, len(tiles))
