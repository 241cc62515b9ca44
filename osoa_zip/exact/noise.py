"""Replayable noise: a counter-based integer hash, and logistic samples from the CDF table.

Why: a VAE's training loss needs a sample z ~ q(z|x).  The decoder replays
that loss on every adaptation step, so the noise must be the same bits on
every machine and must not come from torch's or numpy's generators (their
streams change between versions) nor from libm's log (not correctly rounded).
Here uniform i is the top 24 bits of splitmix64's mix of
seed + i * 0x9E3779B97F4A7C15 (wrapping uint64 arithmetic), and the logistic
quantile logit(u) is found in the integer CDF table by exact comparison and
one linear interpolation (single IEEE operations).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .logistic import CDF_ONE, CDF_RANGE, CDF_STEP_BITS, LogisticTables

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def seed_of(values: torch.Tensor) -> int:
    """A seed from integer-valued data (e.g. a batch's pixels): the same on every machine."""
    data = values.detach().to(torch.int64).numpy().astype("<i8").tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def uniform_q24(seed: int, count: int) -> torch.Tensor:
    """count values k + 1/2, k in [0, 2**24): uniforms scaled to the CDF's 2**24."""
    with np.errstate(over="ignore"):
        x = np.arange(count, dtype=np.uint64) * _GOLDEN + np.uint64(seed % (1 << 64))
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        x = x ^ (x >> np.uint64(31))
    return torch.from_numpy((x >> np.uint64(40)).astype(np.float64) + 0.5)


def logistic_quantile(tables: LogisticTables, target_q24: torch.Tensor) -> torch.Tensor:
    """u with 2**24 * sigmoid(u) = target, by inverting the CDF table (exact ops only)."""
    cdf = tables.cdf
    index = torch.clamp(torch.searchsorted(cdf, target_q24, right=True) - 1, 0, cdf.numel() - 2)
    lower, upper = cdf[index], cdf[index + 1]
    fraction = torch.clamp((target_q24 - lower) / (upper - lower), 0.0, 1.0)
    return (index.to(torch.float64) + fraction) * 2.0 ** -CDF_STEP_BITS - CDF_RANGE


def logistic_noise(tables: LogisticTables, seed: int, shape) -> torch.Tensor:
    """Standard logistic samples, reproducible from (seed, flat index)."""
    count = int(np.prod(shape))
    return logistic_quantile(tables, uniform_q24(seed, count)).reshape(shape)


__all__ = ["seed_of", "uniform_q24", "logistic_quantile", "logistic_noise", "CDF_ONE"]
