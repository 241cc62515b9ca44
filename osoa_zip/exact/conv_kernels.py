"""Engine 2's elementwise integer passes compiled (numba, optional): the leaky ReLU into the next
conv's framed input, its gradient, a gradient's rounding and split into two 7-bit limbs (with its
column sums, the bias gradient), a conv's prepared integers from its float64 weights
(``prepare_weights``), a stack's incoming float gradient onto its integer grid
(``grid_gradient_nhwc``) and a stack's output onto the activation grid (``scaled_output``).

``intconv._leaky_framed`` takes a hidden conv's requantised sums through six
elementwise torch passes (narrowing, add, shift, max, clamp, the copy into the
frame, or a limb split); each pass reads and writes the whole activation, and
the frozen forward runs in every coding, triage and guard pass.  The loop here
does the same integer operations per element in one pass.  Integers: the
results are the same by construction; tests/test_engine2_conv.py checks them
against the torch passes (``test_compiled_leaky_framed_matches_torch``); ``gradient_columns``
and ``leaky_gradient`` likewise, and the later kernels (tests/test_engine2_compiled.py).
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
def gradient_columns(ints, add, shift, columns, sums):
    """``intconv._gradient_columns``' two 7-bit limbs in one pass: per entry of ``ints``
    (positions x C, int32 or int64), t = (g + add) >> shift (round half up onto the gradient's
    grid, plus the limb offset 64), the high limb t >> 7 into ``columns[:, C:]`` and the low one
    (t & 127) - 64 into ``columns[:, :C]`` (int8, positions x 2C): the torch passes' integers.
    ``sums`` (int64, C, zeros) receives each column's sum of the rounded gradient, t - 64 (low
    limb + high limb * 2**7): the bias gradient, which is the product of a row of ones with the limbs."""
    positions, channels = ints.shape
    for p in range(positions):
        for c in range(channels):
            t = (np.int64(ints[p, c]) + add) >> shift
            columns[p, channels + c] = t >> 7
            columns[p, c] = (t & 127) - 64
            sums[c] += t - 64


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


@_jit
def prepare_weights(weight, weight_scale, low, high, bias, bias_scale, coarse_half, coarse_shift, left_shift, half,
                    limbs, weights, columns, rows, offset):
    """``IntConv3x3._prepare``'s integers in one pass over a float64 Co x Ci x 3 x 3 kernel.

    Per weight: floor(w * 2**-e_c + 1/2) clamped to [low, high] into ``weights`` (int32, the
    same shape); its 7-bit limbs (``split_limbs``' rule) into ``columns`` ((ky, kx, ci) x
    limbs*Co, limb i in columns i*Co..) and, coarsened ((w + coarse_half[c]) >> coarse_shift[c])
    and rotated by 180 degrees, into ``rows`` ((ky, kx, co) x limbs*Ci).  Per channel:
    ``offset`` = (floor(b * bias_scale + 1/2) << left_shift) + half (int64).  The same IEEE
    operations as the torch passes (a product by a power of two, an add, a floor).
    Returns (finite: every weight and bias is a finite float whose integer fits int64 -- else
    the caller takes the torch passes --, the largest column sum of |rows| over the coarsened
    weights, the largest |offset|)."""
    out_channels, in_channels = weight.shape[0], weight.shape[1]
    column_sums = np.zeros(in_channels, dtype=np.int64)
    for co in range(out_channels):
        scale = weight_scale[co]
        for ci in range(in_channels):
            for ky in range(3):
                for kx in range(3):
                    scaled = np.floor(weight[co, ci, ky, kx] * scale + 0.5)
                    if not np.isfinite(scaled):
                        return False, 0, 0
                    if scaled < low:
                        scaled = low
                    elif scaled > high:
                        scaled = high
                    w = np.int64(scaled)
                    weights[co, ci, ky, kx] = w
                    coarse = (w + coarse_half[co]) >> coarse_shift[co]
                    column_sums[ci] += abs(coarse)
                    row = ((2 - ky) * 3 + (2 - kx)) * out_channels + co
                    column = (ky * 3 + kx) * in_channels + ci
                    if limbs == 1:
                        columns[column, co] = w
                        rows[row, ci] = coarse
                    else:
                        for limb in range(limbs - 1):
                            shifted = w + 64
                            columns[column, limb * out_channels + co] = (shifted & 127) - 64
                            w = shifted >> 7
                            shifted = coarse + 64
                            rows[row, limb * in_channels + ci] = (shifted & 127) - 64
                            coarse = shifted >> 7
                        columns[column, (limbs - 1) * out_channels + co] = w
                        rows[row, (limbs - 1) * in_channels + ci] = coarse
    largest_offset = 0
    for co in range(out_channels):
        value = np.floor(bias[co] * bias_scale[co] + 0.5)
        if not (abs(value) < 2.0 ** 62):
            return False, 0, 0
        shifted = (np.int64(value) << left_shift[co]) + half[co]
        offset[co] = shifted
        if abs(shifted) > largest_offset:
            largest_offset = abs(shifted)
    largest_sum = 0
    for ci in range(in_channels):
        if column_sums[ci] > largest_sum:
            largest_sum = column_sums[ci]
    return True, largest_sum, largest_offset


@_jit
def grid_gradient_nhwc(grad, scale, halve, out):
    """``intlayers.grid_gradient_to_fixed``'s integers in one pass, from a B x C x H x W float64
    gradient (any strides) into ``out`` (int32, B x H x W x C): k = g * scale (scale = 2**-e, so
    the product is the torch pass's g / 2**e, exactly), rounded half to even (torch's round_),
    then with ``halve`` floor(k * 0.5 + 0.5).  The caller checked that every |k| fits int32."""
    batch, channels, height, width = grad.shape
    for b in range(batch):
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    rounded = np.rint(grad[b, c, y, x] * scale)  # IEEE's default rounding: half to even
                    if halve:
                        rounded = np.floor(rounded * 0.5 + 0.5)
                    out[b, y, x, c] = np.int32(rounded)


@_jit
def scaled_output(ints, shift, scale, out):
    """float64(ints >> shift) * scale into ``out`` (the same shape as ``ints``, any integer type):
    ``_IntegerStackFunction``'s three passes over a stack's output (the shift onto the activation
    grid, the conversion, the product by a power of two) in one; exact, so the same floats."""
    flat, result = ints.reshape(-1), out.reshape(-1)
    for i in range(flat.shape[0]):
        result[i] = np.float64(np.int64(flat[i]) >> shift) * scale
