"""Decide which files the model may code, and write them back.

A file takes the model path only when Pillow reads it as a single 8-bit L or
RGB frame in a lossless format and writing the decoded pixels back loses
nothing but the pixel encoding:

* PNG: every chunk besides IHDR/IDAT/IEND (text, ICC profile, gamma, DPI,
  EXIF, transparency, private chunks) is kept verbatim and spliced back
  around Pillow's IDAT on restore, so metadata survive byte for byte;
* BMP, PPM/PGM, TIFF: only when Pillow re-writes the file byte for byte.

LA and RGBA images qualify too: the model codes the colour channels and the
archive keeps the alpha plane beside them.  Palette (P) PNGs keep their
palette and code their index plane beside the model (xz): on 48
64-colour tiles, 3.21 bits per index against 8.39 for the model on the
expanded RGB; alpha planes likewise (xz 1.77 against 2.95 for the model
as gray; benchmarks/palette_path.py).  Everything else (JPEG, 16-bit,
multi-frame, corrupt files) is an ordinary file for the general path: never
an error.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LOSSLESS_FORMATS = ("PNG", "BMP", "PPM", "TIFF")
MODEL_MODES = {"L": 1, "RGB": 3, "LA": 2, "RGBA": 4, "P": 1}  # channels in the file
COLOR_CHANNELS = {"L": 1, "RGB": 3, "LA": 1, "RGBA": 3, "P": 0}  # channels the model codes; any rest is side data
# Pillow's own bomb limit is a warning up to 2x; we refuse anything above it.
MAX_IMAGE_PIXELS = 178_956_970
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Files that may be model-path images start with one of these (PNG, BMP, PPM/PGM, TIFF).
IMAGE_SIGNATURES = (PNG_SIGNATURE, b"BM", b"P5", b"P6", b"II*\x00", b"MM\x00*")
# The largest image file read for the model path: 179 MP x 4 channels is ~716 MB raw.
MAX_IMAGE_FILE_BYTES = 1 << 30


@dataclass
class ImageRecord:
    pixels: np.ndarray  # H x W x C, uint8
    mode: str
    format: str
    png_before: bytes = b""  # PNG chunks between IHDR and the first IDAT, verbatim
    png_after: bytes = b""   # PNG chunks between the last IDAT and IEND, verbatim
    sha256: str = ""         # of the original file, when its exact bytes are promised
    palette: bytes = b""     # P images: the palette as Pillow reports it (RGB triples)


def _encode(pixels: np.ndarray, mode: str, image_format: str, palette: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels[:, :, 0] if mode in ("L", "P") else pixels, mode)
    if mode == "P":
        image.putpalette(palette)  # its size sets the bit depth Pillow writes
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """(type, whole chunk bytes) in order, or None unless the file is exactly a chunk list."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    chunks, position = [], len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        end = position + 12 + length
        chunks.append((data[position + 4:position + 8], data[position:end]))
        position = end
    if position != len(data) or not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        return None
    return chunks


def _split_png(data: bytes) -> tuple[bytes, bytes] | None:
    """The ancillary chunks before and after the image data, or None if IDATs are not contiguous."""
    chunks = png_chunks(data)
    if chunks is None:
        return None
    types = [kind for kind, _ in chunks]
    if b"IDAT" not in types:
        return None
    first = types.index(b"IDAT")
    last = len(types) - 1 - types[::-1].index(b"IDAT")
    if any(kind != b"IDAT" for kind in types[first:last + 1]) or b"IHDR" in types[1:] or b"IEND" in types[:-1]:
        return None
    return (b"".join(raw for _, raw in chunks[1:first]), b"".join(raw for _, raw in chunks[last + 1:-1]))


def encode_image(record: ImageRecord) -> bytes:
    """The file bytes to restore: Pillow's encoding, with PNG metadata spliced back."""
    data = _encode(record.pixels, record.mode, record.format, record.palette)
    if record.format != "PNG" or not (record.png_before or record.png_after):
        return data
    chunks = png_chunks(data)
    image_data = b"".join(raw for kind, raw in chunks if kind == b"IDAT")
    return PNG_SIGNATURE + chunks[0][1] + record.png_before + image_data + record.png_after + chunks[-1][1]


def _open_pixels(source) -> tuple[np.ndarray, str, str, dict, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Our limit, not Pillow's default (89 MP warns): up to MAX_IMAGE_PIXELS takes the model path.
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        with Image.open(source) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError("image too large")
            image.load()
            pixels = np.asarray(image)
            palette = bytes(image.getpalette() or b"") if image.mode == "P" else b""
            return pixels, image.mode, image.format, dict(image.info), getattr(image, "n_frames", 1), palette


def read_image(path: Path, byte_exact: bool = False) -> ImageRecord | None:
    """The pixels of a model-path image, or None for the general path.

    With byte_exact, only images whose restored file would be byte-identical
    qualify, and the record carries the original's SHA-256 for the decoder to check.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            size = os.fstat(handle.fileno()).st_size
            if not head.startswith(IMAGE_SIGNATURES) or size > MAX_IMAGE_FILE_BYTES:
                return None  # never read a non-image (or a huge file) whole just to ask Pillow
            original = head + handle.read()
        pixels, mode, image_format, info, frames, palette = _open_pixels(io.BytesIO(original))
        if image_format not in LOSSLESS_FORMATS or mode not in MODEL_MODES or frames != 1:
            return None
        if mode == "P" and image_format != "PNG":
            return None
        record = ImageRecord(pixels=np.ascontiguousarray(pixels.reshape(pixels.shape[0], pixels.shape[1],
                                                                          MODEL_MODES[mode])),
                             mode=mode, format=image_format, palette=palette)
        if image_format == "PNG":
            ancillary = _split_png(original)
            if ancillary is None:
                return None
            record.png_before, record.png_after = ancillary
        restored = encode_image(record)
        if image_format != "PNG" or byte_exact:
            if restored != original:
                return None
        again, mode2, format2, info2, _, palette2 = _open_pixels(io.BytesIO(restored))
        if (mode2, format2, info2, palette2) != (mode, image_format, info, palette) or not np.array_equal(
                again.reshape(record.pixels.shape), record.pixels):
            return None
        if byte_exact:
            record.sha256 = hashlib.sha256(original).hexdigest()
        return record
    except Exception:  # noqa: BLE001 — any unreadable image is just a file
        return None


class CannotReproduce(Exception):
    """A --byte-exact image whose original bytes this machine's encoder does not give back."""


def checked_image_bytes(record: ImageRecord) -> bytes:
    """The bytes to restore; with --byte-exact, only if they are the original's."""
    data = encode_image(record)
    if record.sha256 and hashlib.sha256(data).hexdigest() != record.sha256:
        raise CannotReproduce("the image encoder here does not reproduce its exact bytes (the pixels are intact)")
    return data


def write_image(path: Path, record: ImageRecord) -> None:
    path.write_bytes(checked_image_bytes(record))
