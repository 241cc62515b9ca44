"""Decide which files the model may code, and write them back.

A file takes the model path only when Pillow reads it as a single 8-bit L or
RGB frame in a lossless format *and* writing the decoded pixels back in that
format and reading them again gives the same pixels, mode and metadata, with
nothing else in the file that Pillow would drop (see _is_reproducible).
Everything else (JPEG, 16-bit, palettes, metadata we cannot reproduce,
corrupt files) is an ordinary file for the general path: never an error.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LOSSLESS_FORMATS = ("PNG", "BMP", "PPM", "TIFF")
MODEL_MODES = {"L": 1, "RGB": 3}
# Pillow's own bomb limit is a warning up to 2x; we refuse anything above it.
MAX_IMAGE_PIXELS = 178_956_970


@dataclass
class ImageRecord:
    pixels: np.ndarray  # H x W x C, uint8
    mode: str
    format: str


def _encode(pixels: np.ndarray, mode: str, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode).save(buffer, format=image_format)
    return buffer.getvalue()


def _open_pixels(source) -> tuple[np.ndarray, str, str, dict, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError("image too large")
            image.load()
            pixels = np.asarray(image)
            return pixels, image.mode, image.format, dict(image.info), getattr(image, "n_frames", 1)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PLAIN_CHUNKS = {b"IHDR", b"IDAT", b"IEND"}


def png_chunk_types(data: bytes) -> set[bytes] | None:
    """The chunk types of a PNG file, or None if its structure is broken."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    types, position = set(), len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        types.add(data[position + 4:position + 8])
        position += 12 + length
    return types if position == len(data) else None


def _is_reproducible(original: bytes, rewritten: bytes, image_format: str) -> bool:
    """Would writing the pixels back lose anything besides the pixel encoding?

    PNG: only if the file has no chunk besides IHDR/IDAT/IEND (ancillary
    chunks such as text, gamma or private data are not all visible through
    Pillow).  Other formats: only if the re-written file is byte-identical
    (TIFF tags, PPM comments and BMP headers then survive by construction).
    """
    if image_format == "PNG":
        return png_chunk_types(original) == PNG_PLAIN_CHUNKS
    return original == rewritten


def read_image(path: Path) -> ImageRecord | None:
    """The pixels of a model-path image, or None for the general path."""
    try:
        original = Path(path).read_bytes()
        pixels, mode, image_format, info, frames = _open_pixels(io.BytesIO(original))
        if image_format not in LOSSLESS_FORMATS or mode not in MODEL_MODES or frames != 1:
            return None
        pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], MODEL_MODES[mode])
        rewritten = _encode(pixels, mode, image_format)
        again, mode2, format2, info2, _ = _open_pixels(io.BytesIO(rewritten))
        if (mode2, format2, info2) != (mode, image_format, info) or not np.array_equal(
                again.reshape(pixels.shape), pixels):
            return None
        if not _is_reproducible(original, rewritten, image_format):
            return None
        return ImageRecord(pixels=np.ascontiguousarray(pixels), mode=mode, format=image_format)
    except Exception:  # noqa: BLE001 — any unreadable image is just a file
        return None


def write_image(path: Path, record: ImageRecord) -> None:
    path.write_bytes(_encode(record.pixels, record.mode, record.format))
