"""What the archive's entries look like to the rest of osoa-zip: limits, shared types, and
image records to and from their table entries.

The chunk kinds themselves (tags, payloads, validating readers) are container/records.py's;
this module adds what needs the imaging side, which the container may not import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .container.records import (  # noqa: F401 — re-exported: the writer's limits and codecs
    DATA_CHUNK_BYTES,
    MAX_GROUP_IMAGES,
    ImageEntry,
    xz_compress,
    xz_decompressor,
    xz_filters,
)
from .imaging.io import MODEL_MODES, ImageRecord
from .imaging.verbatim import Raster, fits

CHUNK_OVERHEAD = 16  # tag, length and CRC of one chunk
GROUP_SUBPIXELS = 1 << 25       # images are coded in groups of about this many sub-pixels
MAX_IMAGE_SUBPIXELS = 1 << 30   # a declared image larger than this is refused
Progress = Callable[[int], None]
Warn = Callable[[str], None]


class UsageError(Exception):
    """The request itself is wrong: missing sources, existing output, ..."""


class ClusterError(Exception):
    """A Dask cluster (--dask) could not finish the work: workers lost too often, the
    scheduler gone, a worker that runs another osoa-zip (osoa_zip/cluster.py)."""


class PartsError(Exception):
    """The process that adapts the first part of each batch (adapt/parts.py) failed or stopped:
    the command cannot finish."""


@dataclass
class Summary:
    files: int = 0
    images: int = 0
    input_bytes: int = 0
    image_subpixels: int = 0
    image_bits: int = 0
    batches: list = field(default_factory=list)
    blocks: int = 0  # solid blocks written (compress) or decoded (decompress, test)
    seconds: float = 0.0
    lost: list = field(default_factory=list)    # --salvage: entries that could not be restored
    damage: list = field(default_factory=list)  # --salvage: what was damaged, one line each

    @property
    def bits_per_subpixel(self) -> float:
        return self.image_bits / self.image_subpixels if self.image_subpixels else 0.0


def image_entry(name: str, mode: int, mtime_ns: int, record: ImageRecord) -> ImageEntry:
    """The table entry of an image to archive: its place, its shape, and what Pillow needs to
    write it back (verbatim PNG chunks, palette, a raster file's verbatim bytes), with the hash
    promised by --byte-exact."""
    height, width = record.pixels.shape[:2]
    return ImageEntry(name, mode, mtime_ns, height, width, record.mode, record.format, record.palette,
                      record.png_before, record.png_after, record.sha256, record.compression, record.verbatim,
                      [tuple(raster.to_json()) for raster in record.rasters])


def record_from_entry(entry: ImageEntry, pixels: np.ndarray | None = None, picture=None) -> ImageRecord:
    """An image to restore, its pixels in an array (palette indices) or already in a Pillow picture."""
    return ImageRecord(pixels=pixels, picture=picture, mode=entry.image_mode, format=entry.format,
                       png_before=entry.png_before, png_after=entry.png_after, sha256=entry.sha256,
                       palette=entry.palette, compression=entry.compression, verbatim=entry.verbatim,
                       rasters=tuple(Raster.from_json(row) for row in entry.rasters))


def impossible_images(images: list[ImageEntry]) -> str | None:
    """Why no encoder wrote this image table (a bad mode or size, too many pixels), or None: a
    table is checked before anything is allocated for it."""
    for image in images:
        mode, height, width = image.image_mode, image.height, image.width
        if mode not in MODEL_MODES or height <= 0 or width <= 0:
            return f"image {image.name!r} declares a bad mode or size ({mode!r}, {width}x{height})"
        if height * width * MODEL_MODES[mode] > MAX_IMAGE_SUBPIXELS:
            return f"image {image.name!r} declares {width}x{height} pixels, more than any encoder writes"
        rasters = [Raster.from_json(row) for row in image.rasters]
        problem = fits(image.verbatim, rasters, mode, width, height) if image.verbatim or rasters else None
        if problem:
            return f"image {image.name!r} declares {problem}, which no encoder writes"
    if sum(image.height * image.width * MODEL_MODES[image.image_mode] for image in images) \
            > 4 * GROUP_SUBPIXELS + MAX_IMAGE_SUBPIXELS:
        return f"its group of {len(images)} images declares more pixels than any encoder writes"
    return None
