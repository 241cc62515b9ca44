"""The golden archives of format 1.5's verbatim image fields, and the folder they were made from.

FROZEN, like the modules of earlier formats: these archives must decode to
build_source's folder in every later release (tests/test_golden.py).  Format 1.5
added three optional fields to an image table's entry: ``verbatim`` and ``rasters``
(a BMP, PPM/PGM or TIFF that Pillow does not write back byte for byte keeps the
file minus its raw rasters verbatim, and the rasters are re-encoded in place) and
``compression`` (an LZW TIFF that Pillow writes back LZW).  The folder is format
1.0's plus images/foreign/: such files as other tools write them, built here byte
by byte (struct), never by an image library's writer, so that the folder is the
same with every Pillow and libtiff; the LZW TIFF is the exception (the archive
holds no bytes of it, only its pixels and its compression).

    python tests/golden/format_1_5_verbatim.py   # writes the archives that do not exist yet, never rewrites one
"""
from __future__ import annotations

import io
import os
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import format_1_0  # noqa: E402

MTIME_NS = format_1_0.MTIME_NS
ARCHIVES = {  # file name -> (model, adaptation settings)
    "format-1.5-verbatim-idf-tiny-test.osoa": ("idf-tiny-test", {"tile_size": 16, "batch_size": 4,
                                                                 "learning_rate": 0.3, "segment_batches": 5}),
    "format-1.5-verbatim-vae-tiny-test.osoa": ("vae-tiny-test", {"tile_size": 8, "batch_size": 1,
                                                                 "batch_pixels": 0, "gray_batch_pixels": 128,
                                                                 "chain_batches": 3, "learning_rate": 2e-3}),
}
# name -> (format, mode) of what images/foreign holds; every one takes the model path
FOREIGN = {
    "odd_width.bmp": ("BMP", "RGB"), "top_down.bmp": ("BMP", "RGB"), "bgrx.bmp": ("BMP", "RGB"),
    "grey8.bmp": ("BMP", "L"), "palette8.bmp": ("BMP", "P"), "gimp.ppm": ("PPM", "RGB"),
    "trailer.pgm": ("PPM", "L"), "strips.tif": ("TIFF", "RGB"), "trailer.tif": ("TIFF", "L"),
    "lzw.tif": ("TIFF", "RGB"),
}


def _photo(width: int, height: int, mode: str = "RGB") -> np.ndarray:
    with Image.open(format_1_0.EXAMPLES / "0002.png") as image:
        crop = np.asarray(image.convert(mode).crop((3, 5, 3 + width, 5 + height)))
    return crop.reshape(height, width, -1)


def _bmp(pixels: np.ndarray, bits: int = 24, top_down: bool = False, palette: bytes = b"") -> bytes:
    """A BMP as many tools write it: 72 dpi, biSizeImage 0, rows padded to 4 bytes with zeros."""
    height, width = pixels.shape[:2]
    if bits >= 24:  # BGR, then a zero fourth byte for 32 bits
        fourth = np.zeros((height, width, bits // 8 - 3), np.uint8)
        rows = np.concatenate([pixels[:, :, ::-1], fourth], 2).reshape(height, -1)
    else:
        rows = pixels.reshape(height, width)
    rows = rows if top_down else rows[::-1]
    padded = np.zeros((height, (rows.shape[1] + 3) // 4 * 4), np.uint8)
    padded[:, :rows.shape[1]] = rows
    info = struct.pack("<IiiHHIIiiII", 40, width, -height if top_down else height, 1, bits, 0, 0, 2835, 2835,
                       len(palette) // 4, 0)
    offset = 14 + len(info) + len(palette)
    return (b"BM" + struct.pack("<IHHI", offset + padded.size, 0, 0, offset) + info + palette
            + padded.tobytes())


def _tiff(pixels: np.ndarray, rows_per_strip: int) -> bytes:
    """An uncompressed little-endian TIFF with its strips first and its tags after them, as
    libtiff lays it out (Pillow writes the tags first)."""
    height, width, channels = pixels.shape
    strips = [pixels[y:y + rows_per_strip].tobytes() for y in range(0, height, rows_per_strip)]
    offsets, position = [], 8
    for strip in strips:
        offsets.append(position)
        position += len(strip)
    arrays = position  # the strip offsets and counts, then the IFD
    tags = [(256, 3, [width]), (257, 3, [height]), (258, 3, [8] * channels), (259, 3, [1]),
            (262, 3, [2 if channels == 3 else 1]), (273, 4, offsets), (277, 3, [channels]),
            (278, 3, [rows_per_strip]), (279, 4, [len(strip) for strip in strips])]
    extra, entries = b"", []
    for tag, kind, values in tags:
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) <= 4:
            entries.append(struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\0"))
        else:
            entries.append(struct.pack("<HHII", tag, kind, len(values), arrays + len(extra)))
            extra += packed
    ifd = arrays + len(extra)
    return (b"II*\0" + struct.pack("<I", ifd) + b"".join(strips) + extra
            + struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0))


def _foreign_files() -> dict[str, bytes]:
    grey_palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    colours = b"".join(bytes([16 * i, 255 - 16 * i, 7 * i, 0]) for i in range(16))
    lzw = io.BytesIO()
    Image.fromarray(_photo(26, 18)).save(lzw, "TIFF", compression="tiff_lzw")
    return {
        "odd_width.bmp": _bmp(_photo(23, 17)),
        "top_down.bmp": _bmp(_photo(20, 13), top_down=True),
        "bgrx.bmp": _bmp(_photo(15, 11), bits=32),
        "grey8.bmp": _bmp(_photo(21, 14, "L"), bits=8, palette=grey_palette),
        "palette8.bmp": _bmp(_photo(21, 14, "L") % 16, bits=8, palette=colours),
        "gimp.ppm": b"P6\n# CREATOR: GIMP PNM Filter Version 1.1\n25 19\n255\n" + _photo(25, 19).tobytes(),
        "trailer.pgm": b"P5 27 15 255\n" + _photo(27, 15, "L").tobytes() + b"\ntrailing bytes\n",
        "strips.tif": _tiff(_photo(22, 21), rows_per_strip=4),
        "trailer.tif": _tiff(_photo(19, 16, "L"), rows_per_strip=16) + b"appended",
        "lzw.tif": lzw.getvalue(),
    }


def build_source(root: Path) -> Path:
    """Format 1.0's folder plus images/foreign (FOREIGN)."""
    format_1_0.build_source(root)
    foreign = root / "images" / "foreign"
    foreign.mkdir()
    for name, data in _foreign_files().items():
        (foreign / name).write_bytes(data)
    for path in (foreign, *foreign.iterdir(), foreign.parent):
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    return root


def write_missing_1_5(archives: dict) -> None:
    """format_1_0.write_missing from this module's folder, refused by a writer older than 1.5."""
    from osoa_zip.container.format import FORMAT_MINOR
    if FORMAT_MINOR < 5:
        raise SystemExit("this release writes format 1.%d, not 1.5" % FORMAT_MINOR)
    format_1_0.write_missing(archives, build_source)


if __name__ == "__main__":
    write_missing_1_5(ARCHIVES)
