"""Entropy coding of integer latents under a discretized logistic.

Each latent gets a window of 2W+1 integers around its rounded mean plus one
escape symbol; escaped values follow under a uniform model.  W is picked per
latent from a few fixed sizes so that the window spans WINDOW_SCALES logistic
scales, and latents are coded bucket by bucket (bucket order, then flat index
order) so every probability table is a dense 2-D array.  All counts are
integers computed with the exact interpolation of ``LogisticTables``.

With ``escape=False`` the window is the whole support (no escape symbol).
Bits-back needs this for the posterior: popping a latent must be undone
exactly by pushing it, and an escape would pop values that a push codes
differently.  Values outside the window are then refused.
"""
from __future__ import annotations

import numpy as np
import torch

from ..exact.logistic import CDF_ONE, LogisticTables
from .ans import CorruptStream, Decoder, Encoder

WINDOW_HALF_WIDTHS = (4, 8, 16, 32, 64, 128, 256)
WINDOW_SCALES = 9.0  # mass beyond +-9 scales is 2.5e-4: escapes are rare
OFFSET_STEPS = 16
LOG_SCALE_STEP = 8  # in steps of the log-scale grid (2**-8): 1/32 in log-scale
ESCAPE_SIZE = 4096
ESCAPE_OFFSET = ESCAPE_SIZE // 2


def _plan(tables: LogisticTables, mean: torch.Tensor, log_scale: torch.Tensor, escape: bool = True):
    """Yield (members, half_width, counts) per window bucket, in bucket order.

    The coded distribution snaps the mean's offset from the window centre to
    1/OFFSET_STEPS of a pixel and the log-scale to LOG_SCALE_STEP: the loss
    is far below a thousandth of a bit, and latents then share a few hundred
    distinct tables, each computed once.
    """
    mean = mean.reshape(-1).to(torch.float64)
    scale_index = tables.scale_index(log_scale.reshape(-1).to(torch.float64))
    scale_index = torch.floor(scale_index / LOG_SCALE_STEP) * LOG_SCALE_STEP + LOG_SCALE_STEP // 2
    scale_index = torch.clamp(scale_index, max=tables.inv_scale.numel() - 1)
    inv_scale = tables.inv_scale[scale_index.long()]
    offset_index = torch.floor((mean - torch.floor(mean + 0.5) + 0.5) * OFFSET_STEPS)
    offset = (offset_index + 0.5) / OFFSET_STEPS - 0.5
    needed = WINDOW_SCALES / inv_scale
    widths = torch.tensor(WINDOW_HALF_WIDTHS, dtype=torch.float64)
    bucket = torch.clamp((needed[:, None] > widths[None, :]).sum(dim=1), max=len(WINDOW_HALF_WIDTHS) - 1)
    key = offset_index * tables.inv_scale.numel() + scale_index
    for index, half_width in enumerate(WINDOW_HALF_WIDTHS):
        members = torch.nonzero(bucket == index).reshape(-1)
        if members.numel():
            distinct, which = torch.unique(key[members], return_inverse=True)
            first = _representatives(which, members, distinct.numel())
            counts = _counts(tables, offset[first], inv_scale[first], half_width, escape)
            yield members, half_width, counts[which.numpy()]


def _representatives(which: torch.Tensor, members: torch.Tensor, n: int) -> torch.Tensor:
    """One member per distinct key (which one does not matter: they share the key)."""
    chosen = torch.empty(n, dtype=torch.long)
    chosen[which] = members
    return chosen


def _counts(tables, offset, inv_scale, half_width, escape: bool = True) -> np.ndarray:
    """Integer masses of the 2W+1 window bins, then the escape mass (if any), per row."""
    bins = torch.arange(2 * half_width + 2, dtype=torch.float64) - (half_width + 0.5)
    cdf = tables.cdf_q24((bins[None, :] - offset[:, None]) * inv_scale[:, None])
    inside = cdf[:, 1:] - cdf[:, :-1]
    if not escape:
        return inside.numpy()
    escape = cdf[:, :1] + (CDF_ONE - cdf[:, -1:])
    return torch.cat([inside, escape], dim=1).numpy()


def push_factor(encoder: Encoder, tables: LogisticTables, values: torch.Tensor,
                mean: torch.Tensor, log_scale: torch.Tensor, escape: bool = True) -> None:
    flat = values.reshape(-1).to(torch.float64)
    for members, half_width, counts in _plan(tables, mean, log_scale, escape):
        low = torch.floor(mean.reshape(-1).to(torch.float64)[members] + 0.5) - half_width
        offset = (flat[members] - low).numpy().astype(np.int64)
        escaped = (offset < 0) | (offset > 2 * half_width)
        if not escape:
            if escaped.any():
                raise CorruptStream("latent outside its window (a window without escape)")
            encoder.push_categorical(offset, counts)
            continue
        symbols = np.where(escaped, 2 * half_width + 1, offset)
        encoder.push_categorical(symbols, counts)
        raw = flat[members].numpy()[escaped].astype(np.int64) + ESCAPE_OFFSET
        if raw.size and (raw.min() < 0 or raw.max() >= ESCAPE_SIZE):
            raise ValueError("latent outside the escape range")
        encoder.push_uniform(raw, ESCAPE_SIZE)


def pop_factor(decoder: Decoder, tables: LogisticTables, mean: torch.Tensor,
               log_scale: torch.Tensor, escape: bool = True) -> torch.Tensor:
    flat = torch.empty(mean.numel(), dtype=torch.float64)
    for members, half_width, counts in _plan(tables, mean, log_scale, escape):
        low = torch.floor(mean.reshape(-1).to(torch.float64)[members] + 0.5) - half_width
        symbols = decoder.pop_categorical(counts).astype(np.int64)
        if symbols.size != members.numel():
            raise CorruptStream("coded data ended early")
        escaped = symbols == 2 * half_width + 1
        values = low + torch.from_numpy(symbols).to(torch.float64)
        raw = decoder.pop_uniform(int(escaped.sum()), ESCAPE_SIZE).astype(np.int64) - ESCAPE_OFFSET
        values[torch.from_numpy(escaped)] = torch.from_numpy(raw).to(torch.float64)
        flat[members] = values
    return flat.reshape(mean.shape)
