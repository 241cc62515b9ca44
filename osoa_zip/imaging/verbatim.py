"""Files whose pixels are plain raster: everything but the raster kept verbatim (format 1.5).

Pillow re-writes a BMP, PPM/PGM or TIFF with its own header: a file another tool
wrote (GIMP's comment line, a BMP's resolution or ``biSizeImage`` 0, TIFF tags in
another order, trailing bytes) comes back with the same pixels but other bytes.
Where the file's pixel data is uncompressed raster, its bytes are a function of
the pixels alone: Pillow's decoder says where each run of them lies (a "raw" tile:
offset, box, raw mode, row stride, row order), and Pillow's raw *encoder*, given
the same arguments, writes exactly those bytes back (rows padded with zeros to the
stride, bottom-up when the row step is -1).  So the archive keeps the file minus its
rasters verbatim (``verbatim``: header, palette, tags, trailer, in file order) and
where each raster goes (``rasters``); the model codes the pixels, and the restorer
interleaves the two.  A writer takes this path only after rebuilding the whole file
this way from the decoded pixels and finding it byte-identical to the original
(io.py); anything else (compressed data, a raster whose padding is not zero, a
32-bit BMP whose fourth byte is not what Pillow writes) stays a general-path file.

A raster's raw mode, stride and row step are checked against what a writer ever
writes (RAW_MODES, the stride of padded rows) before anything is encoded, so a
hostile archive cannot ask Pillow's encoder for more than one padded row per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

from PIL import Image

# Per image mode: the raw modes a raster may be written in, with their bits per pixel.
RAW_MODES = {
    "L": {"L": 8},
    "P": {"P": 8},
    "RGB": {"RGB": 24, "BGR": 24, "BGRX": 32},
    "LA": {"LA": 16},
    "RGBA": {"RGBA": 32, "BGRA": 32},
}
_BITS = {raw_mode: bits for modes in RAW_MODES.values() for raw_mode, bits in modes.items()}
MAX_PADDING = 3                 # bytes a row may be padded by (BMP pads rows to 4 bytes)
MAX_VERBATIM_BYTES = 1 << 20    # a file with more non-pixel bytes than this stays on the general path
BAND_BYTES = 1 << 20            # raster bytes encoded per step


@dataclass(frozen=True)
class Raster:
    """One run of raw pixel bytes in the original file: the pixels of ``box`` (x0, y0, x1, y1)
    at byte ``offset``, in ``raw_mode``, rows ``stride`` bytes apart (0: unpadded), top-down
    (``row_step`` 1) or bottom-up (-1)."""

    offset: int
    box: tuple[int, int, int, int]
    raw_mode: str
    stride: int
    row_step: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one row in the file (the stride, or the unpadded row)."""
        return self.stride or ((self.box[2] - self.box[0]) * _BITS[self.raw_mode] + 7) // 8

    @property
    def length(self) -> int:
        return self.row_bytes * (self.box[3] - self.box[1])

    def to_json(self) -> list:
        return [self.offset, *self.box, self.raw_mode, self.stride, self.row_step]

    @classmethod
    def from_json(cls, value) -> Raster:
        offset, x0, y0, x1, y1, raw_mode, stride, row_step = value
        return cls(offset, (x0, y0, x1, y1), raw_mode, stride, row_step)


def rasters_of(image: Image.Image) -> tuple[Raster, ...] | None:
    """The rasters of an opened (not yet loaded) image, in file order, or None unless all of its
    pixel data is uncompressed raster of a kind RAW_MODES lists, in runs that do not overlap."""
    rasters = []
    for tile in image.tile:
        if tile.codec_name != "raw":
            return None
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        raw_mode, stride, row_step = (tuple(args) + (0, 1))[:3]
        raster = Raster(int(tile.offset), tuple(int(v) for v in tile.extents), raw_mode, int(stride), int(row_step))
        if problem(raster, image.mode, image.width, image.height):
            return None
        rasters.append(raster)
    rasters.sort(key=lambda raster: raster.offset)
    if not rasters or overlapping(rasters):
        return None
    return tuple(rasters)


def problem(raster: Raster, mode: str, width: int, height: int) -> str | None:
    """Why no writer wrote this raster for a ``width`` x ``height`` image of ``mode``, or None."""
    bits = RAW_MODES.get(mode, {}).get(raster.raw_mode) if isinstance(raster.raw_mode, str) else None
    if bits is None:
        return f"raw mode {raster.raw_mode!r} for a {mode!r} image"
    x0, y0, x1, y1 = raster.box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        return f"a raster box {raster.box} outside the image"
    unpadded = ((x1 - x0) * bits + 7) // 8
    if raster.row_step not in (1, -1) or raster.offset < 0 or \
            not (raster.stride == 0 or unpadded <= raster.stride <= unpadded + MAX_PADDING):
        return "a raster's offset, stride or row step"
    return None


def overlapping(rasters: list[Raster] | tuple[Raster, ...]) -> bool:
    """Whether rasters (in file order) overlap."""
    return any(later.offset < earlier.offset + earlier.length for earlier, later in zip(rasters, rasters[1:]))


def verbatim_bytes(handle: BinaryIO, size: int, rasters: tuple[Raster, ...]) -> bytes | None:
    """The file's bytes outside its rasters, in order, or None if the rasters do not fit in the
    file or the rest is larger than MAX_VERBATIM_BYTES."""
    if rasters[-1].offset + rasters[-1].length > size or size - sum(r.length for r in rasters) > MAX_VERBATIM_BYTES:
        return None
    pieces, position = [], 0
    for raster in rasters:
        handle.seek(position)
        pieces.append(handle.read(raster.offset - position))
        position = raster.offset + raster.length
    handle.seek(position)
    pieces.append(handle.read(size - position))
    return b"".join(pieces)


def write_file(picture: Image.Image, verbatim: bytes, rasters: tuple[Raster, ...], out) -> None:
    """The file: the verbatim bytes with each raster encoded from the picture in its place
    (validated rasters only: layout.impossible_images)."""
    position = used = 0
    for raster in rasters:
        gap = raster.offset - position
        out.write(verbatim[used:used + gap])
        used += gap
        for band in _bands(picture, raster):
            out.write(band)
        position = raster.offset + raster.length
    out.write(verbatim[used:])


def _bands(picture: Image.Image, raster: Raster) -> Iterator[bytes]:
    """The raster's bytes in about BAND_BYTES pieces, in file order (bottom band first when
    rows go bottom-up): Pillow's raw encoder never holds more than one band."""
    x0, y0, x1, y1 = raster.box
    rows = max(1, BAND_BYTES // max(1, raster.row_bytes))
    starts = range(y0, y1, rows)
    for top in (reversed(starts) if raster.row_step < 0 else starts):
        band = picture.crop((x0, top, x1, min(y1, top + rows)))
        yield band.tobytes("raw", (raster.raw_mode, raster.stride, raster.row_step))
        band.close()


def fits(verbatim: bytes, rasters: tuple[Raster, ...], mode: str, width: int, height: int) -> str | None:
    """Why a table entry's verbatim bytes and rasters are not what a writer writes, or None."""
    if not rasters:
        return "verbatim bytes without rasters"
    for raster in rasters:
        reason = problem(raster, mode, width, height)
        if reason:
            return reason
    if sum((r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in rasters) > width * height:
        return "rasters of more pixels than the image has"
    if overlapping(rasters) or any(b.offset < a.offset for a, b in zip(rasters, rasters[1:])):
        return "rasters out of order or overlapping"
    if len(verbatim) > MAX_VERBATIM_BYTES:
        return "more verbatim bytes than a writer keeps"
    gaps = rasters[0].offset + sum(
        b.offset - a.offset - a.length for a, b in zip(rasters, rasters[1:]))
    if gaps > len(verbatim):
        return "rasters beyond the verbatim bytes"
    return None
