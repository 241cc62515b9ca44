"""A classical bound that lets triage skip θ0's pass on images the model path clearly wins.

Triage (triage.py) runs the frozen model θ0 over samples of every image before it is
grouped; for a 32 x 32 image the sample is the whole image, so compressing a folder of
small photos paid for θ0's forward pass on each of them before coding them (0.4-0.8 s of
CPU per few hundred images, a quarter of a compress of data/eval/tiles32 after start-up).
A learned model codes natural images 20-40% below a classical predictor, so an image whose
classical cost is already well below its file's needs no θ0 pass to be sent to the model.

The classical cost: each colour channel predicted by MED (LOCO-I's median edge detector),
green first and red and blue as differences from green when there are three (a reversible
colour transform), and the residuals' empirical entropy, in bits with 16 fractional bits,
from integer arithmetic only (an integer log2 table: the same answer on every machine,
whatever the kernel, numpy or libm).  The model has a floor a classical entropy does not:
on flat and synthetic images it costs ~1-1.5 bits per sub-pixel where MED's residuals cost
almost nothing, so the bound is at least FLOOR_BITS_PER_SUBPIXEL.  An image is a clear
winner when it is small (judged whole), at least MIN_PIXELS, its file is already deflated
(zlib's fastest level cannot shrink it: its general-path cost is about its size, triage.py's
DEFLATED) and the bound, plus what the image keeps beside its pixels, is at most
CLEAR_SHARE of that cost.  Anything else goes through θ0 as before.

Measured on data/eval/{gray32,tiles32,tiles64,fashion_mnist} and the mixed folder
(benchmarks/mixed_folder.py --count 300), 1167 images: the rule clears 126/128, 227/256,
103/128, 460/512 and 46/143 of them; θ0's triage sends every one of those to the model
path too (no decision changes), and the loser closest to the line (random noise) has a
bound at 0.99 of its file's cost, against CLEAR_SHARE = 0.9.  A 16 x 16 gradient is the
reason for MIN_PIXELS: the model loses it to its 244-byte PNG.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from .imaging.io import COLOR_CHANNELS, ImageRecord

FRACTION_BITS = 16                 # the bound is in bits << FRACTION_BITS
FLOOR_BITS_PER_SUBPIXEL = (3, 2)   # 1.5 bits per sub-pixel at least, as a fraction
CLEAR_SHARE = (9, 10)              # of the file's cost: the bound must be at most this
MIN_PIXELS = 512                   # smaller images always take θ0's pass
TABLE_ENTRY_BYTES = 24  # an image's share of its group's xz'd table, roughly
# A PNG that zlib's fastest level keeps above this share of is taken to cost this share under
# xz: a fraction for the integer comparison here, a float for triage.py's estimates.
DEFLATED_SHARE = (98, 100)


def log2_fixed(values: np.ndarray) -> np.ndarray:
    """log2 of positive integers (below 2^32) with FRACTION_BITS fractional bits, at most one
    unit (and a hair: the squarings truncate) below the true value, by integer arithmetic
    alone: the exponent by comparisons, the fraction by repeated squaring of a Q30 mantissa."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and int(values.min()) < 1:
        raise ValueError("log2 of a value below 1")
    exponent = np.zeros_like(values)
    for shift in (16, 8, 4, 2, 1):
        higher = (values >> (exponent + shift)) > 0
        exponent += shift * higher
    one = np.int64(1) << 30
    mantissa = (values << 30) >> exponent  # in [2^30, 2^31)
    fraction = np.zeros_like(values)
    for _ in range(FRACTION_BITS):
        mantissa = (mantissa * mantissa) >> 30
        doubled = mantissa >= 2 * one
        fraction = 2 * fraction + doubled
        mantissa = np.where(doubled, mantissa >> 1, mantissa)
    return (exponent << FRACTION_BITS) + fraction


def _med_residuals(planes: np.ndarray) -> np.ndarray:
    """MED's prediction residuals of H x W x C int32 planes (each channel on its own), wrapped
    into [0, 256) (the first row is predicted from the left, the first column from above).
    MED's prediction is the median of left, up and left + up - corner."""
    left = np.empty_like(planes)
    up = np.empty_like(planes)
    corner = np.empty_like(planes)
    left[:, 1:], up[1:, :], corner[1:, 1:] = planes[:, :-1], planes[:-1, :], planes[:-1, :-1]
    left[0, 0] = up[0, 0] = corner[0, 0] = 0
    up[0, 1:] = corner[0, 1:] = left[0, 1:]  # the first row: from the left
    left[1:, 0] = corner[1:, 0] = up[1:, 0]  # the first column: from above
    prediction = np.maximum(np.minimum(left, up), np.minimum(np.maximum(left, up), left + up - corner))
    return (planes - prediction) & 255


_log2_table = log2_fixed(np.arange(1, 2))  # log2_fixed(n) at index n - 1, grown as needed


def _log2_table_to(total: int) -> np.ndarray:
    """log2_fixed of 1 ... total (at least), from a table (one vectorised pass per new size
    instead of one per image)."""
    global _log2_table
    if total > len(_log2_table):
        _log2_table = log2_fixed(np.arange(1, max(total, 2 * len(_log2_table)) + 1))
    return _log2_table


def _entropy_fixed(symbols: np.ndarray) -> int:
    """The empirical entropy of each channel of H x W x C symbols in [0, 256), summed, in bits
    << FRACTION_BITS: per channel, sum over symbols of count * log2(total / count)."""
    channels = symbols.shape[-1]
    counts = np.bincount((symbols + 256 * np.arange(channels)).ravel(), minlength=256 * channels)
    total = symbols.size // channels
    table = _log2_table_to(total)
    counts = counts[counts > 0]
    return int((counts * (table[total - 1] - table[counts - 1])).sum())


def classical_bits(colour: np.ndarray) -> int:
    """The bound on an H x W x C image's colour channels, in bits << FRACTION_BITS (C is 1
    or 3): their MED residuals' entropy, green first and red and blue less green, but at
    least FLOOR_BITS_PER_SUBPIXEL."""
    pixels = np.asarray(colour, dtype=np.int32)
    if pixels.shape[2] == 3:  # all planes at once: ~3 times fewer numpy calls for a small image
        planes = pixels[:, :, [1, 0, 2]]
        planes[:, :, 1:] -= planes[:, :, :1]
    else:
        planes = pixels
    bits = _entropy_fixed(_med_residuals(planes))
    numerator, denominator = FLOOR_BITS_PER_SUBPIXEL
    return max(bits, (numerator * pixels.size << FRACTION_BITS) // denominator)


def clearly_pays(colour: np.ndarray, side_bytes: int, path: Path, size: int, deflated: tuple[int, int]) -> bool:
    """Whether the model path clearly beats the file: ``colour`` (H x W x C) is the whole
    image's colour channels, ``side_bytes`` what it keeps beside them (its table entry
    included), ``deflated`` the share of its size (a fraction) that the general path is
    taken to cost when zlib's fastest level cannot shrink the file below it."""
    height, width = colour.shape[:2]
    if height * width < MIN_PIXELS:
        return False
    with open(path, "rb") as handle:
        data = handle.read(size + 1)
    share, whole = deflated
    if len(data) != size or len(zlib.compress(data, 1)) * whole <= share * size:
        return False  # changed since it was read, or xz may pack it well below its size
    clear, of = CLEAR_SHARE
    bound = classical_bits(colour) + (side_bytes * 8 << FRACTION_BITS)
    return bound * of * whole <= (clear * share * size * 8) << FRACTION_BITS


def record_clearly_pays(record: ImageRecord, path: Path, size: int) -> bool:
    """``clearly_pays`` for an image read into memory (colour channels), with what it keeps
    beside its pixels: triage asks it (``Triage.clearly_pays``) for the images it judges
    whole, and the process that reads small files ahead works it out there (read_process.py)."""
    side_bytes = len(record.verbatim) + len(record.png_before) + len(record.png_after) + TABLE_ENTRY_BYTES
    return clearly_pays(record.pixels[:, :, :COLOR_CHANNELS[record.mode]], side_bytes, path, size, DEFLATED_SHARE)
