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

Factors may carry bounds (lower, upper) per latent (a flow's edge bins,
exact/logistic.py): then the mass outside [lower, upper] inside the window,
and the escape mass on that side, goes to the bin at the bound, as the NLL
says.  So that the bound is always inside the window, the mean is first
clamped to [lower - W, upper + W]: a mean further out puts all but 1e-4 of the
mass on the bound either way.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from ..exact.logistic import CDF_ONE, LogisticTables
from . import native
from .ans import CorruptStream, Decoder, Encoder

WINDOW_HALF_WIDTHS = (4, 8, 16, 32, 64, 128, 256)
WINDOW_SCALES = 9.0  # mass beyond +-9 scales is 2.5e-4: escapes are rare
OFFSET_STEPS = 16
LOG_SCALE_STEP = 8  # in steps of the log-scale grid (2**-8): 1/32 in log-scale
ESCAPE_SIZE = 4096
ESCAPE_OFFSET = ESCAPE_SIZE // 2


def _counts(tables, offset, inv_scale, half_width) -> tuple[np.ndarray, np.ndarray]:
    """Integer masses of the 2W+1 window bins, then the escape mass, per row; and the
    CDF at the window's 2W+2 bin edges (for edge bins)."""
    bins = torch.arange(2 * half_width + 2, dtype=torch.float64) - (half_width + 0.5)
    cdf = tables.cdf_q24((bins[None, :] - offset[:, None]) * inv_scale[:, None])
    inside = cdf[:, 1:] - cdf[:, :-1]
    escape = cdf[:, :1] + (CDF_ONE - cdf[:, -1:])
    return torch.cat([inside, escape], dim=1).numpy(), cdf.numpy()


def _fold(counts: np.ndarray, cdf: np.ndarray, which: np.ndarray, first: np.ndarray,
          last: np.ndarray) -> np.ndarray:
    """Rows (changed in place) with the mass outside window positions [first, last] moved onto
    them (edge bins).

    counts: (n, 2W+2) window rows, escape last; cdf[which]: their bin-edge CDFs;
    first/last: the bounds' window positions (first <= 2W, last >= 0 by the mean's clamp;
    first < 0 or last > 2W when a bound lies outside the window).  The mass up to a bin's
    upper edge is the CDF there (the rows telescope), so each fold is one lookup; all
    integer-valued float64, so exact.
    """
    width = counts.shape[1] - 1
    position = np.arange(width)[None, :]
    counts[:, :width] *= (position >= first[:, None]) & (position <= last[:, None])
    low = np.nonzero(first >= 0)[0]
    counts[low, first[low]] = cdf[which[low], first[low] + 1]
    counts[low, width] -= cdf[which[low], 0]
    high = np.nonzero(last < width)[0]
    counts[high, last[high]] = CDF_ONE - cdf[which[high], last[high]]
    counts[high, width] -= CDF_ONE - cdf[which[high], width]
    return counts


class _Windows:
    """Every table the coder can use under one LogisticTables, computed once.

    A coded distribution depends only on the snapped log-scale (its row
    ``k`` = floor(scale_index / LOG_SCALE_STEP), which also fixes the window
    bucket) and the snapped mean offset (``OFFSET_STEPS`` values), so the
    tables form a small fixed set (225 x 16 rows).  Each row is computed by
    exactly the elementwise operations ``_counts`` applies to one member of
    that key, so a row looked up here is bit for bit the row computed on
    demand: the coded bytes do not change.
    """

    def __init__(self, tables: LogisticTables) -> None:
        n_scale = tables.inv_scale.numel()
        rows = torch.arange(0, n_scale + LOG_SCALE_STEP - 1, LOG_SCALE_STEP, dtype=torch.float64) // LOG_SCALE_STEP
        scale_index = torch.clamp(rows * LOG_SCALE_STEP + LOG_SCALE_STEP // 2, max=n_scale - 1)
        inv_scale = tables.inv_scale[scale_index.long()]
        needed = WINDOW_SCALES / inv_scale
        widths = torch.tensor(WINDOW_HALF_WIDTHS, dtype=torch.float64)
        self.bucket_of_row = torch.clamp((needed[:, None] > widths[None, :]).sum(dim=1),
                                         max=len(WINDOW_HALF_WIDTHS) - 1)
        offset = (torch.arange(OFFSET_STEPS, dtype=torch.float64) + 0.5) / OFFSET_STEPS - 0.5
        # Per bucket: (first row, number of rows, counts indexed by offset_index * rows + row - first,
        # the CDF at the bin edges, indexed alike).
        self.buckets: list[tuple[int, int, np.ndarray, np.ndarray] | None] = []
        for index, half_width in enumerate(WINDOW_HALF_WIDTHS):
            members = torch.nonzero(self.bucket_of_row == index).reshape(-1)
            if not members.numel():
                self.buckets.append(None)
                continue
            first, count = int(members[0]), members.numel()  # buckets grow with the scale: contiguous
            pairs_offset = offset.repeat_interleave(count)
            pairs_inv_scale = inv_scale[first:first + count].repeat(OFFSET_STEPS)
            self.buckets.append((first, count, *_counts(tables, pairs_offset, pairs_inv_scale, half_width)))


_WINDOWS: "weakref.WeakKeyDictionary[LogisticTables, _Windows]" = weakref.WeakKeyDictionary()


def _windows(tables: LogisticTables) -> _Windows:
    if tables not in _WINDOWS:
        _WINDOWS[tables] = _Windows(tables)
    return _WINDOWS[tables]


class _WindowRows:
    """The window rows of one bucket's members, looked up only when needed.

    ``counts`` and ``cdf`` are the bucket's tables (``_Windows``), ``which`` the
    members' rows in them, ``fold`` None or the bounds' window positions (first,
    last) for edge bins (``_fold``).  The decoder needs the rows; the encoder needs
    only each symbol's cumulative counts, two CDF edges of its row (``push``).
    """

    def __init__(self, counts: np.ndarray, cdf: np.ndarray, which: np.ndarray, fold: tuple | None = None) -> None:
        self.table, self.cdf, self.which, self.fold = counts, cdf, which, fold

    def pop(self, decoder: Decoder, escape: bool = True) -> np.ndarray:
        """Decode the members' symbols under their rows (``counts``): by the compiled loop
        where there is one (rows without edge bins), else through the rows."""
        if self.fold is None and native.available():
            symbols = np.empty(len(self.which), dtype=np.int64)
            if decoder.run(native.pop_windows, self.cdf, self.which, escape, CDF_ONE, symbols) < 0:
                raise ValueError("a probability row sums to zero")
            return symbols
        return decoder.pop_categorical(self.counts(escape)).astype(np.int64)

    def counts(self, escape: bool = True) -> np.ndarray:
        """The members' rows: 2W+1 window bins, then (``escape``) the escape."""
        rows = self.table[self.which]
        if self.fold is not None:
            rows = _fold(rows, self.cdf, self.which, *self.fold)
        return rows if escape else np.ascontiguousarray(rows[:, :-1])

    def push(self, encoder: Encoder, symbols: np.ndarray, escape: bool = True) -> None:
        """Queue the members' symbols under their rows: the same bytes as
        ``encoder.push_categorical(symbols, self.counts(escape))``.

        A row's bins telescope: the counts before window bin s sum to CDF(s) - CDF(0)
        (the CDF at the bins' edges), the escape is what the window leaves of CDF_ONE.
        """
        if self.fold is not None:
            self._push_folded(encoder, symbols)
            return
        width = self.cdf.shape[1] - 1  # window bins
        at_zero = self.cdf[self.which, 0]
        before = self.cdf[self.which, symbols] - at_zero
        through = self.cdf[self.which, np.minimum(symbols + 1, width)] - at_zero
        if escape:
            total = np.full(len(symbols), CDF_ONE)
            through = np.where(symbols == width, total, through)
        else:
            total = self.cdf[self.which, width] - at_zero
        encoder.push_intervals(symbols, before, through, total, np.full(len(symbols), width + escape))

    def _push_folded(self, encoder: Encoder, symbols: np.ndarray) -> None:
        """``push`` for rows with edge bins (``_fold``), escape included.

        Bins outside [lo, hi] (the bounds' positions inside the window) are empty; the
        lower bound's bin starts at CDF 0 (sums from there are CDF(s), not CDF(s) - CDF(0));
        the upper bound's bin ends at CDF_ONE, so every sum past it is CDF_ONE less what
        lies before its first bin (all of the bin's mass when it is also the lower bound's,
        which gives it CDF_ONE - CDF(upper) as ``_fold`` does).
        """
        first, last = self.fold
        width = self.cdf.shape[1] - 1
        cdf = lambda position: self.cdf[self.which, np.clip(position, 0, width)]  # noqa: E731
        lo, hi = np.maximum(first, 0), np.minimum(last, width - 1)
        high = last < width
        base = np.where(first >= 0, 0.0, cdf(0))
        after = np.where(high, np.where(last > lo, CDF_ONE - base, CDF_ONE - cdf(last)), cdf(width) - base)

        def before_bin(position):
            return np.where(position <= lo, 0.0, np.where(position <= hi, cdf(position) - base, after))

        total = before_bin(width) + base + np.where(high, 0.0, CDF_ONE - cdf(width))
        through = np.where(symbols == width, total, before_bin(symbols + 1))
        encoder.push_intervals(symbols, before_bin(symbols), through, total, np.full(len(symbols), width + 1))


def _plan(tables: LogisticTables, means: list[torch.Tensor], log_scales: list[torch.Tensor],
          bounds: list[tuple] | None = None):
    """Yield (members, half_width, rows, low, in_range) per factor and window bucket, in coding order.

    Factors in list order, each bucket by bucket, members in flat order;
    ``members`` index the factors' latents flattened and concatenated, and
    ``low`` is each member's window start.  The coded distribution snaps the
    mean's offset from the window centre to 1/OFFSET_STEPS of a pixel and the
    log-scale to LOG_SCALE_STEP: the loss is far below a thousandth of a bit,
    and latents then share a few hundred distinct tables (``_Windows``), each
    computed once per model; ``rows`` (``_WindowRows``) gives the members' rows or
    codes their symbols from the tables.  All factors' keys are computed in one pass
    (elementwise, so each value is what a pass over one factor would give).

    ``bounds``: per factor, () or (lower, upper) tensors shaped like its mean
    (edge bins; module docstring).  ``in_range(values)`` tells whether all of
    the members' values lie within their bounds (None without bounds).
    """
    windows = _windows(tables)
    buckets = len(WINDOW_HALF_WIDTHS)
    sizes = [m.numel() for m in means]
    mean = torch.cat([m.reshape(-1) for m in means]).to(torch.float64)
    log_scale = torch.cat([s.reshape(-1) for s in log_scales]).to(torch.float64)
    row = torch.floor(tables.scale_index(log_scale) / LOG_SCALE_STEP).long()
    bucket = windows.bucket_of_row[row]
    lower = upper = None
    if bounds and any(bounds):
        if not all(bounds):
            raise ValueError("either every factor of a batch has bounds or none has")
        lower = torch.cat([b[0].reshape(-1) for b in bounds]).to(torch.float64)
        upper = torch.cat([b[1].reshape(-1) for b in bounds]).to(torch.float64)
        half_width = torch.tensor(WINDOW_HALF_WIDTHS, dtype=torch.float64)[bucket]
        mean = torch.minimum(torch.maximum(mean, lower - half_width), upper + half_width)
    centre = torch.floor(mean + 0.5)
    offset_index = torch.floor((mean - centre + 0.5) * OFFSET_STEPS).long()
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long)) * buckets + bucket
    order = torch.argsort(group, stable=True)  # by factor, then bucket, then flat index
    start = 0
    for index, size in enumerate(torch.bincount(group, minlength=len(sizes) * buckets).tolist()):
        if size:
            members = order[start:start + size]
            start += size
            first, count, counts, cdf = windows.buckets[index % buckets]
            half_width = WINDOW_HALF_WIDTHS[index % buckets]
            which = (offset_index[members] * count + (row[members] - first)).numpy()
            low = centre[members] - half_width
            if lower is None:
                yield members, half_width, _WindowRows(counts, cdf, which), low, None
                continue
            low_bound, high_bound = lower[members].numpy(), upper[members].numpy()
            start_at = low.numpy()
            rows = _WindowRows(counts, cdf, which, ((low_bound - start_at).astype(np.int64),
                                                    (high_bound - start_at).astype(np.int64)))
            yield (members, half_width, rows, low,
                   lambda values, lo=low_bound, hi=high_bound: bool(((values >= lo) & (values <= hi)).all()))


def push_factors(encoder: Encoder, tables: LogisticTables, factors: list) -> None:
    """Queue factors given as (latents, mean, log_scale) or (latents, mean, log_scale,
    lower, upper), in order."""
    if not factors:
        return
    flat = torch.cat([f[0].reshape(-1) for f in factors]).to(torch.float64)
    for members, half_width, rows, low, in_range in _plan(tables, [f[1] for f in factors],
                                                          [f[2] for f in factors], [f[3:] for f in factors]):
        if in_range is not None and not in_range(flat[members].numpy()):
            raise ValueError("latent outside its bounds")
        offset = (flat[members] - low).numpy().astype(np.int64)
        escaped = (offset < 0) | (offset > 2 * half_width)
        symbols = np.where(escaped, 2 * half_width + 1, offset)
        rows.push(encoder, symbols)
        raw = flat[members].numpy()[escaped].astype(np.int64) + ESCAPE_OFFSET
        if raw.size and (raw.min() < 0 or raw.max() >= ESCAPE_SIZE):
            raise ValueError("latent outside the escape range")
        encoder.push_uniform(raw, ESCAPE_SIZE)


def push_factor(encoder: Encoder, tables: LogisticTables, values: torch.Tensor,
                mean: torch.Tensor, log_scale: torch.Tensor, escape: bool = True) -> None:
    if escape:
        push_factors(encoder, tables, [(values, mean, log_scale)])
        return
    flat = values.reshape(-1).to(torch.float64)
    for members, half_width, rows, low, _ in _plan(tables, [mean], [log_scale]):
        offset = (flat[members] - low).numpy().astype(np.int64)
        if ((offset < 0) | (offset > 2 * half_width)).any():
            raise CorruptStream("latent outside its window (a window without escape)")
        rows.push(encoder, offset, escape=False)


def pop_factor(decoder: Decoder, tables: LogisticTables, mean: torch.Tensor,
               log_scale: torch.Tensor, escape: bool = True, bounds: tuple = ()) -> torch.Tensor:
    """Decode one factor; ``bounds`` = (lower, upper) for edge bins (only with escape)."""
    flat = torch.empty(mean.numel(), dtype=torch.float64)
    for members, half_width, rows, low, in_range in _plan(tables, [mean], [log_scale], [bounds]):
        if not escape:  # the window's bins alone: the same masses, no escape column
            symbols = rows.pop(decoder, escape=False)
            if symbols.size != members.numel():
                raise CorruptStream("coded data ended early")
            flat[members] = low + torch.from_numpy(symbols).to(torch.float64)
            continue
        symbols = rows.pop(decoder)
        if symbols.size != members.numel():
            raise CorruptStream("coded data ended early")
        escaped = symbols == 2 * half_width + 1
        values = low + torch.from_numpy(symbols).to(torch.float64)
        raw = decoder.pop_uniform(int(escaped.sum()), ESCAPE_SIZE).astype(np.int64) - ESCAPE_OFFSET
        values[torch.from_numpy(escaped)] = torch.from_numpy(raw).to(torch.float64)
        if in_range is not None and not in_range(values.numpy()):
            raise CorruptStream("a decoded value lies outside its known range")
        flat[members] = values
    return flat.reshape(mean.shape)
