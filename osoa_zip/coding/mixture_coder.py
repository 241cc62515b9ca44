"""Entropy coding of bounded integer latents under a mixture of discretized logistics.

A mixture's shape changes continuously with its weights, so its tables cannot
be shared the way the single logistic's are (logistic_coder._Windows): each
latent gets its own row, computed on demand with exact integer arithmetic.
Every latent here has a known range [lower, upper] of at most RANGE_SIZE
values (a pixel's), and the range's tails go to the bins at its bounds.

Two stages keep the rows short without giving up any probability:

1. a window of BUCKETS sizes around the mean of the heaviest component,
   WINDOW_SCALES of its scales either side (clipped to the range), plus one
   escape symbol whose count is the mixture's whole mass outside the window;
2. only after an escape: a row over the whole range with the window's bins
   set to zero.

A bin's count is sum_k e_k * (mass_k + 1) (every value stays codable, whatever
the tables' resolution in far tails, and none costs more than the NLL's 24
bits), with the integer weights e_k and CDFs of ``LogisticTables``.  All counts are integers below 2**53 computed
elementwise, so encoder and decoder build the same rows on every machine.
Latents are coded bucket by bucket (bucket order, then flat index order; the
escaped ones of a bucket after all of its window symbols), so each bucket's
rows form one dense 2-D array.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from ..exact.logistic import CDF_ONE, LogisticTables
from .ans import CorruptStream, Decoder, Encoder
from .logistic_coder import LOG_SCALE_STEP, OFFSET_STEPS

BUCKETS = (5, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193)
WINDOW_SCALES = 5.0  # the heaviest component's mass beyond 5 scales either side is 1.3%
RANGE_SIZE = 256
_CELLS_PER_BLOCK = 1 << 20  # rows are built in blocks of about this many bins (memory)


def _windows(means, inv_scale, weights, lower, upper):
    """Per latent: (window start, bucket index; len(BUCKETS) means the whole range)."""
    top = torch.argmax(weights, dim=0, keepdim=True)  # ties: the first, on every machine
    mean = torch.gather(means, 0, top)[0]
    reach = torch.ceil(WINDOW_SCALES / torch.gather(inv_scale, 0, top)[0])
    sizes = torch.tensor(BUCKETS, dtype=torch.float64)
    bucket = (2 * reach[:, None] + 1 > sizes[None, :]).sum(dim=1)
    size = torch.cat([sizes, torch.tensor([float(RANGE_SIZE)], dtype=torch.float64)])[bucket]
    centre = torch.floor(mean + 0.5)
    start = torch.maximum(torch.minimum(centre - (size - 1) // 2, upper - size + 1), lower)
    start = torch.where(bucket == len(BUCKETS), lower, start)
    return start, bucket


class _ComponentTables:
    """Every component CDF the coder can use under one LogisticTables, computed once.

    As in logistic_coder._Windows, a component's log-scale is snapped to
    1/32 (LOG_SCALE_STEP grid steps) and its mean's offset from the nearest
    integer to 1/OFFSET_STEPS, which costs far below a thousandth of a bit;
    then its CDF at the bin edges around its centre is one of a fixed set of
    rows, tabulated here out to REACH bins either side (beyond, the CDF is
    taken as the row's end value).  A latent's row is then a weighted sum of
    K gathers instead of K interpolations per bin.
    """

    REACH = 2 * RANGE_SIZE

    def __init__(self, tables: LogisticTables) -> None:
        n_scale = tables.inv_scale.numel()
        self.scale_rows = (n_scale + LOG_SCALE_STEP - 1) // LOG_SCALE_STEP
        rows = torch.arange(self.scale_rows, dtype=torch.float64)
        inv_scale = tables.inv_scale[torch.clamp(rows * LOG_SCALE_STEP + LOG_SCALE_STEP // 2, max=n_scale - 1).long()]
        offset = (torch.arange(OFFSET_STEPS, dtype=torch.float64) + 0.5) / OFFSET_STEPS - 0.5
        edges = torch.arange(2 * self.REACH + 2, dtype=torch.float64) - self.REACH - 0.5
        self.width = edges.numel()
        cdf = tables.cdf_q24((edges[None, None, :] - offset[:, None, None]) * inv_scale[None, :, None])
        self.cdf = cdf.reshape(-1).numpy().astype(np.int64)  # [offset, scale row, edge]

    def keys(self, tables: LogisticTables, means, log_scales):
        """Per component and latent: (the row's first index in ``cdf``, the centre)."""
        row = torch.floor(tables.scale_index(log_scales) / LOG_SCALE_STEP).long()
        centre = torch.floor(means + 0.5)
        offset = torch.floor((means - centre + 0.5) * OFFSET_STEPS).long()
        return ((offset * self.scale_rows + row) * self.width).numpy(), centre.numpy().astype(np.int64)


_TABLES: "weakref.WeakKeyDictionary[LogisticTables, _ComponentTables]" = weakref.WeakKeyDictionary()


def _component_tables(tables: LogisticTables) -> _ComponentTables:
    if tables not in _TABLES:
        _TABLES[tables] = _ComponentTables(tables)
    return _TABLES[tables]


def _rows(table: _ComponentTables, start, size: int, keys, centres, weights, lower, upper) -> np.ndarray:
    """Counts of the ``size`` window bins and then the escape, per latent (n, size + 1).

    All arguments are int64 numpy arrays (components first for keys, centres, weights)."""
    position = np.arange(size + 1)[None, :]
    mixture = np.zeros((len(start), size + 1), dtype=np.int64)  # sum_k e_k CDF_k at the bin edges
    for k in range(keys.shape[0]):
        index = np.clip((start - centres[k] + table.REACH)[:, None] + position, 0, table.width - 1)
        mixture += weights[k][:, None] * table.cdf[keys[k][:, None] + index]
    weight = weights.sum(axis=0)
    total = weight * int(CDF_ONE)
    # Edge bins: the CDF is 0 at the lower bound's lower edge and 1 from the upper bound's upper edge on.
    mixture[:, 0] = np.where(start <= lower, 0, mixture[:, 0])
    mixture = np.where(start[:, None] + position >= upper[:, None] + 1, total[:, None], mixture)
    floor = weight[:, None]  # a bin's mass is at least 2**-24, as the NLL's is
    valid = start[:, None] + position[:, :-1] <= upper[:, None]
    inside = np.where(valid, np.diff(mixture, axis=1) + floor, 0)
    # The escape carries the floors of the range's bins outside the window too, so that
    # after an escape the range row (window bins zeroed) costs what the NLL says.
    outside_bins = (upper - lower + 1) - valid.sum(axis=1)
    escape = mixture[:, 0] + (total - mixture[:, -1]) + weight * outside_bins
    return np.concatenate([inside, escape[:, None]], axis=1).astype(np.float64)


def _plan(tables: LogisticTables, means, log_scales, logits, lower, upper):
    """Yield a ``_Bucket`` per window size in use, in coding order."""
    k = means.shape[0]
    means = means.reshape(k, -1).to(torch.float64)
    log_scales = log_scales.reshape(k, -1).to(torch.float64)
    weights = tables.mixture_weights(logits.reshape(k, -1).to(torch.float64))
    lower = lower.reshape(-1).to(torch.float64)
    upper = upper.reshape(-1).to(torch.float64)
    if bool(((upper - lower) >= RANGE_SIZE).any()):
        raise ValueError(f"a latent's range is wider than {RANGE_SIZE} values")
    inv_scale = tables.inverse_scale(log_scales)
    start, bucket = _windows(means, inv_scale, weights, lower, upper)
    table = _component_tables(tables)
    keys, centres = table.keys(tables, means, log_scales)
    weights = weights.numpy().astype(np.int64)
    order = torch.argsort(bucket, stable=True)
    offset = 0
    for index, count in enumerate(torch.bincount(bucket, minlength=len(BUCKETS) + 1).tolist()):
        if count:
            members = order[offset:offset + count]
            offset += count
            size = BUCKETS[index] if index < len(BUCKETS) else RANGE_SIZE
            picked = members.numpy()
            yield _Bucket(table, members, size, start[members], keys[:, picked], centres[:, picked],
                          weights[:, picked], lower[members], upper[members])


class _Bucket:
    """The latents of one window size: their window rows, and the range rows after an escape."""

    def __init__(self, table, members, size, start, keys, centres, weights, lower, upper):
        self.table, self.members, self.size = table, members, size
        self.start, self.lower, self.upper = start, lower, upper  # float64 tensors
        self.keys, self.centres, self.weights = keys, centres, weights  # int64 arrays, components first

    def _build(self, pick: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
        step = max(1, _CELLS_PER_BLOCK // (size + 1))
        lower = self.lower.numpy().astype(np.int64)[pick]
        upper = self.upper.numpy().astype(np.int64)[pick]
        return np.concatenate([
            _rows(self.table, start[part], size, self.keys[:, pick[part]], self.centres[:, pick[part]],
                  self.weights[:, pick[part]], lower[part], upper[part])
            for part in np.array_split(np.arange(len(pick)), max(1, -(-len(pick) // step)))])

    def window_rows(self) -> np.ndarray:
        return self._build(np.arange(len(self.start)), self.start.numpy().astype(np.int64), self.size)

    def range_rows(self, escaped: np.ndarray) -> np.ndarray:
        """Rows over [lower, lower + RANGE_SIZE) for the escaped latents, window bins zeroed."""
        pick = np.nonzero(escaped)[0]
        lower = self.lower.numpy().astype(np.int64)[pick]
        rows = self._build(pick, lower, RANGE_SIZE)[:, :RANGE_SIZE]
        first = self.start.numpy().astype(np.int64)[pick] - lower
        position = np.arange(RANGE_SIZE)[None, :]
        rows[(position >= first[:, None]) & (position < first[:, None] + self.size)] = 0.0
        return np.ascontiguousarray(rows)


def push_mixture_factors(encoder: Encoder, tables: LogisticTables, factors: list) -> None:
    """Queue factors (latents, means, log_scales, logits, lower, upper), in order; means,
    log_scales and logits are shaped (K, *latents.shape), lower and upper like latents."""
    for latents, means, log_scales, logits, lower, upper in factors:
        flat = latents.reshape(-1).to(torch.float64)
        if bool(((flat < lower.reshape(-1)) | (flat > upper.reshape(-1))).any()):
            raise ValueError("latent outside its bounds")
        for bucket in _plan(tables, means, log_scales, logits, lower, upper):
            values = flat[bucket.members]
            offset = (values - bucket.start).numpy().astype(np.int64)
            escaped = (offset < 0) | (offset >= bucket.size)
            encoder.push_categorical(np.where(escaped, bucket.size, offset), bucket.window_rows())
            if escaped.any():
                encoder.push_categorical((values - bucket.lower).numpy()[escaped].astype(np.int64),
                                         bucket.range_rows(escaped))


def pop_mixture_factor(decoder: Decoder, tables: LogisticTables, means, log_scales, logits, lower,
                       upper) -> torch.Tensor:
    """Decode one factor coded by ``push_mixture_factors``; shaped like ``lower``."""
    flat = torch.empty(lower.numel(), dtype=torch.float64)
    for bucket in _plan(tables, means, log_scales, logits, lower, upper):
        symbols = decoder.pop_categorical(bucket.window_rows()).astype(np.int64)
        if symbols.size != bucket.members.numel():
            raise CorruptStream("coded data ended early")
        escaped = symbols == bucket.size
        values = bucket.start + torch.from_numpy(symbols).to(torch.float64)
        if escaped.any():
            positions = decoder.pop_categorical(bucket.range_rows(escaped)).astype(np.int64)
            if positions.size != int(escaped.sum()):
                raise CorruptStream("coded data ended early")
            chosen = torch.from_numpy(escaped)
            values[chosen] = bucket.lower[chosen] + torch.from_numpy(positions).to(torch.float64)
        if bool(((values < bucket.lower) | (values > bucket.upper)).any()):
            raise CorruptStream("a decoded value lies outside its known range")
        flat[bucket.members] = values
    return flat.reshape(lower.shape)
