"""Engine 2's elementwise integer passes compiled (numba, optional): the leaky ReLU into the next
conv's framed input, its gradient, and a gradient's rounding and split into two 7-bit limbs.

``intconv._leaky_framed`` takes a hidden conv's requantised sums through six
elementwise torch passes (narrowing, add, shift, max, clamp, the copy into the
frame, or a limb split); each pass reads and writes the whole activation, and
the frozen forward runs in every coding, triage and guard pass.  The loop here
does the same integer operations per element in one pass.  Integers: the
results are the same by construction; tests/test_engine2_conv.py checks them
against the torch passes (``test_compiled_leaky_framed_matches_torch``); ``gradient_columns``
and ``leaky_gradient`` likewise (tests/test_engine2_compiled.py).
Without numba (or with OSOA_ZIP_NO_NUMBA=1, or for a small job: coding/native.py) the torch passes run.
"""
from __future__ import annotations

import numpy as np

from ..coding import native

_jit = native._jit


def available() -> bool:
    return native.available()


@_jit
def leaky_framed(values, shift, clamped, low, high, framed, narrow):
    """values (B*H*W x C, rows in (b, h, w) order) -> max(v, (v + half) >> shift), clamped to
    [low, high] if ``clamped``, written into the interior of ``framed`` (limbs x B x (H+2) x
    (W+2) x C, its frame already zero): one limb as int8, two as balanced 8-bit limbs (the
    low limb in the first B images).  ``narrow`` (int16, same shape as values, or empty)
    receives the values themselves."""
    count, height, width, channels = framed.shape[0], framed.shape[1] - 2, framed.shape[2] - 2, framed.shape[3]
    half = 1 << (shift - 1)
    keep = narrow.shape[0] > 0
    batch = values.shape[0] // (height * width) if height * width > 0 else 0
    limbs = count // batch if batch > 0 else 1
    row = 0
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for c in range(channels):
                    v = np.int64(values[row, c])
                    if keep:
                        narrow[row, c] = v
                    t = (v + half) >> shift
                    if v > t:
                        t = v
                    if clamped:
                        if t < low:
                            t = low
                        elif t > high:
                            t = high
                    if limbs == 1:
                        framed[b, y + 1, x + 1, c] = t
                    else:
                        shifted = t + 128
                        framed[b, y + 1, x + 1, c] = (shifted & 255) - 128
                        framed[batch + b, y + 1, x + 1, c] = shifted >> 8
                row += 1


@_jit
def gradient_columns(ints, add, shift, columns):
    """``intconv._gradient_columns``' two 7-bit limbs in one pass: per entry of ``ints``
    (positions x C, int32 or int64), t = (g + add) >> shift (round half up onto the gradient's
    grid, plus the limb offset 64), the high limb t >> 7 into ``columns[:, C:]`` and the low one
    (t & 127) - 64 into ``columns[:, :C]`` (int8, positions x 2C): the torch passes' integers."""
    positions, channels = ints.shape
    for p in range(positions):
        for c in range(channels):
            t = (np.int64(ints[p, c]) + add) >> shift
            columns[p, channels + c] = t >> 7
            columns[p, c] = (t & 127) - 64


@_jit
def leaky_gradient(ints, values, clamped, low, high, factor):
    """In place, ``intconv._leaky_gradient``'s product: each entry of ``ints`` (positions x C)
    times ``factor`` (8) where the conv's output ``values`` is positive, 1 at or below zero, and
    0 where it was clamped (``clamped`` and outside [low, high]): the torch passes' integers."""
    positions, channels = ints.shape
    for p in range(positions):
        for c in range(channels):
            v = values[p, c]
            if clamped and (v < low or v > high):
                ints[p, c] = 0
            elif v > 0:
                ints[p, c] = ints[p, c] * factor
