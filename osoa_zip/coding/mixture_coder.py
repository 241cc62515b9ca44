"""Entropy coding of bounded integer latents under a mixture of discretized logistics.

A mixture's shape changes continuously with its weights, so its rows cannot
be shared the way the single logistic's are (logistic_coder._Windows): each
latent gets its own row.  Every latent here has a known range [lower, upper]
of at most RANGE_SIZE values (a pixel's), whose tails go to the bins at its
bounds (edge bins).

Two stages keep the rows short without giving up any probability:

1. a window of BUCKETS sizes around the mean of the heaviest component,
   WINDOW_SCALES of its scales either side (inside the range), plus one escape
   symbol whose count is all of the mixture's mass outside the window;
2. only after an escape: a row over the whole range with the window's bins
   set to zero.

Counts are exact integers.  As in the single logistic's coder, each
component's log-scale is snapped to 1/32 and its mean's offset from the
nearest integer to 1/16 (far below a thousandth of a bit), so its CDF at the
bin edges is a stretch of one of a fixed set of integer rows
(``_ComponentRows``, filled as they are first needed).  A bin's count is then
sum_k e_k * (mass_k + 1) with the integer weights e_k of the model's exp table:
the +1 keeps every value codable whatever the CDF table's resolution in far
tails, and caps a value's cost near the NLL's 24 bits.  Sums of integers below
2**53 do not depend on their order, so encoder and decoder build the same rows
on every machine.

Latents are coded factor by factor: bucket by bucket (bucket order, then flat
index order; a bucket with few latents joins the next wider one), then the
escaped latents of the factor in the same order.
The encoder knows every factor at once and builds all rows of a bucket size in
one pass; the decoder must go factor by factor.

FROZEN: the constants below, the snapping steps and the order of the symbols
define the bytes of every archive coded with a mixture model (v6,
vae-conv-v2; golden archives in tests/golden).  Another coding needs a new
model name (or a format version) that selects it.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ..exact import mixture_kernels
from ..exact.fixed import ACT_FRAC_BITS
from ..exact.logistic import CDF_ONE, CDF_RANGE, EXP_RANGE, LOG_SCALE_MAX, LOG_SCALE_MIN, LogisticTables
from . import native
from .ans import CorruptStream, Decoder, Encoder
from .logistic_coder import LOG_SCALE_STEP, OFFSET_STEPS

BUCKETS = (5, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193)
WINDOW_SCALES = 5.0  # the heaviest component's mass beyond 5 scales either side is 1.3%
RANGE_SIZE = 256
# A component's centre is taken at most REACH bins from a window's start: further out
# (a mean far outside the pixel range), it sits at that distance instead.
REACH = 384
_CELLS_PER_BLOCK = 1 << 20  # rows are built in blocks of about this many bins (memory)
MERGE_BELOW = 64  # a window bucket with fewer latents joins the next wider one
_SIZES = np.array(BUCKETS + (RANGE_SIZE,))  # the window of each bucket; the last: none fits
_LATENTS_PER_BLOCK = 16384  # the encoder's temporaries per block stay in the CPU's cache
_ROWS_PER_FILL = 256  # CDF rows computed together (their temporaries: a few MB)


class _ComponentRows:
    """CDF rows (2**24 * CDF at integer-spaced bin edges) per snapped (offset, log-scale).

    Row (o, r) holds the CDF at the edges j - REACH - 1/2 - offset_o, j = 0 ..
    2 * REACH + RANGE_SIZE, for the scale of log-scale row r.  Rows are computed
    when first needed (most models use a small part of the 16 x 225 rows),
    each by the same elementwise operations whenever it is computed.
    """

    WIDTH = 2 * REACH + RANGE_SIZE + 1

    def __init__(self, tables: LogisticTables) -> None:
        self.tables = tables
        n_scale = tables.inv_scale.numel()
        self.scale_rows = (n_scale + LOG_SCALE_STEP - 1) // LOG_SCALE_STEP
        middle = np.minimum(np.arange(self.scale_rows) * LOG_SCALE_STEP + LOG_SCALE_STEP // 2, n_scale - 1)
        self.inv_scale = tables.inv_scale.numpy()[middle]
        # A latent's stage-1 window: the first of BUCKETS at least 2 * reach + 1 wide, where
        # reach is WINDOW_SCALES scales of its heaviest component (BUCKETS' length: none is).
        reach = np.ceil(WINDOW_SCALES / self.inv_scale)
        self.bucket = np.searchsorted(BUCKETS, 2 * reach + 1, side="left")
        # Integers in [0, 2**24]: int32 halves the cache lines a decoder's table reads touch
        # (every product with a weight is taken in float64, exactly).
        self.cdf = np.zeros((OFFSET_STEPS * self.scale_rows, self.WIDTH), dtype=np.int32)
        self.filled = np.zeros(OFFSET_STEPS * self.scale_rows, dtype=bool)
        self._stretches: dict[int, np.ndarray] = {}
        self.flat = self.cdf.reshape(-1)  # a view

    def stretches(self, width: int) -> np.ndarray:
        """Every ``width``-long stretch of the flat table: row i starts at flat position i (a view)."""
        if width not in self._stretches:
            self._stretches[width] = sliding_window_view(self.cdf.reshape(-1), width)
        return self._stretches[width]

    def ensure(self, rows: np.ndarray) -> None:
        """Compute the rows not computed yet (their values as _fill gives them)."""
        missing = rows[~self.filled[rows]]
        if not missing.size:
            return
        # The distinct rows, ascending (np.unique's answer; a scatter, not a sort of every latent's row).
        wanted = np.zeros(self.filled.size, dtype=bool)
        wanted[missing] = True
        missing = np.flatnonzero(wanted)
        if mixture_kernels.available():
            mixture_kernels.fill_component_rows(self.tables.cdf.numpy(), self.inv_scale, missing, self.scale_rows,
                                                OFFSET_STEPS, REACH, self.cdf)
        else:
            for start in range(0, missing.size, _ROWS_PER_FILL):
                self._fill(missing[start:start + _ROWS_PER_FILL])
        self.filled[missing] = True

    def _fill(self, rows: np.ndarray) -> None:
        """Rows, all in one pass: a row is the table's low end left of its core, the high end
        right of it, and in the core (a few scales either side of the centre; beyond
        +-CDF_RANGE the interpolation returns the table's end values) the CDF at each edge.
        Every value is the same elementwise expression whichever rows are filled together."""
        low_end, high_end = self.tables.cdf[0].item(), self.tables.cdf[-1].item()
        inv_scale = self.inv_scale[rows % self.scale_rows]
        reach = np.ceil(CDF_RANGE / inv_scale).astype(np.int64) + 2
        first, last = np.maximum(0, REACH - reach), np.minimum(self.WIDTH, REACH + reach + 1)
        offset = ((rows // self.scale_rows) + 0.5) / OFFSET_STEPS - 0.5
        self.cdf[rows] = np.where(np.arange(self.WIDTH) < first[:, None], low_end, high_end)
        widths = last - first
        owner = np.repeat(np.arange(rows.size), widths)
        column = np.arange(owner.size) - np.repeat(np.cumsum(widths) - widths, widths) + first[owner]
        u = (column - REACH - 0.5 - offset[owner]) * inv_scale[owner]
        core = np.where(u <= -CDF_RANGE, low_end, np.where(u >= CDF_RANGE, high_end, 0.0))
        inner = np.abs(u) < CDF_RANGE
        core[inner] = self.tables.cdf_q24(torch.from_numpy(u[inner])).numpy()
        self.cdf[rows[owner], column] = core


_ROWS: "weakref.WeakKeyDictionary[LogisticTables, _ComponentRows]" = weakref.WeakKeyDictionary()
# Rows by the content of the tables they come from: every load of a model (each archive
# a library caller codes, each segment's worker) brings its own tables object, whose rows
# are the same integers.  The last few contents are kept (a table: 3600 x 1025 int32,
# touched only where rows were filled).
_ROWS_BY_CONTENT: dict[bytes, _ComponentRows] = {}
_CONTENTS_KEPT = 2
_rows_lock = threading.Lock()


def _component_rows(tables: LogisticTables) -> _ComponentRows:
    rows = _ROWS.get(tables)
    if rows is not None:
        return rows
    # The rows depend on the CDF and scale tables alone (exact float64 integers and steps).
    key = hashlib.sha256(tables.cdf.numpy().tobytes() + tables.inv_scale.numpy().tobytes()).digest()
    with _rows_lock:
        rows = _ROWS_BY_CONTENT.pop(key, None) or _ComponentRows(tables)
        _ROWS_BY_CONTENT[key] = rows  # the newest last
        while len(_ROWS_BY_CONTENT) > _CONTENTS_KEPT:
            del _ROWS_BY_CONTENT[next(iter(_ROWS_BY_CONTENT))]
        _ROWS[tables] = rows
    return rows


class _Latents:
    """Everything the rows of some latents need, as numpy arrays, components first (K x n).

    Computed in blocks of _LATENTS_PER_BLOCK latents so that the temporaries stay in
    the CPU's cache; every value is what one elementwise pass over all latents gives.
    """

    def __init__(self, tables: LogisticTables, means, log_scales, logits, lower, upper) -> None:
        """``means``, ``log_scales``, ``logits``: K x ... tensors or arrays; ``lower``, ``upper``: one
        value per latent.  Taken as numpy arrays (a factor is a few dozen latents on the decoder's
        deepest levels, where torch's per-call cost was most of the work), C-ordered, so that the
        compiled loop sees one layout."""
        k = means.shape[0]
        means, log_scales, logits = (_float64(values).reshape(k, -1) for values in (means, log_scales, logits))
        means, log_scales, logits = (np.ascontiguousarray(values) for values in (means, log_scales, logits))
        self.lower = _float64(lower).reshape(-1).astype(np.int64)
        self.upper = _float64(upper).reshape(-1).astype(np.int64)
        if (self.upper - self.lower >= RANGE_SIZE).any():
            raise ValueError(f"a latent's range is wider than {RANGE_SIZE} values")
        if tables.exp is None:
            raise ValueError("these tables have no exp table (the model has no mixtures)")
        self.rows = rows = _component_rows(tables)
        n = self.lower.size
        # Per component: its integer weight e_k, where its CDF row's centre sits in the flat
        # table, and its centre; per latent: the weights' sum, and stage 1's bucket and
        # middle from the heaviest component (ties: the first).
        self.weights = np.empty((k, n))
        self.row_start = np.empty((k, n), dtype=np.int64)
        self.centre = np.empty((k, n), dtype=np.int64)
        self.weight = np.empty(n)
        self.bucket = np.empty(n, dtype=np.int64)
        self.middle = np.empty(n, dtype=np.int64)
        exp = tables.exp.numpy()
        if native.available():
            row = np.empty((k, n), dtype=np.int64)
            if native.mixture_latents(means, log_scales, logits, exp, LOG_SCALE_MIN, LOG_SCALE_MAX, float(EXP_RANGE),
                                      float(2 ** ACT_FRAC_BITS), 2 ** ACT_FRAC_BITS / LOG_SCALE_STEP,
                                      float(OFFSET_STEPS), rows.scale_rows, rows.WIDTH, REACH, rows.bucket,
                                      self.weights, row, self.row_start, self.centre, self.weight, self.bucket,
                                      self.middle):
                raise ValueError("a mixture mean is not on the activation grid")
            rows.ensure(row.reshape(-1))
            return
        for first in range(0, n, _LATENTS_PER_BLOCK):
            part = slice(first, first + _LATENTS_PER_BLOCK)
            # The exact core's lookups (LogisticTables.mixture_weights / scale_index), in numpy;
            # (x * 2**8) / 8 is x * 32 exactly, and a non-negative value's floor is its truncation.
            largest = logits[0, part].copy()
            for component in range(1, k):
                np.maximum(largest, logits[component, part], out=largest)
            relative = logits[:, part] - largest
            np.clip(relative, -EXP_RANGE, 0.0, out=relative)
            relative += EXP_RANGE
            relative *= 2 ** ACT_FRAC_BITS
            weights = exp[relative.astype(np.int64)]
            scale_row = np.clip(log_scales[:, part], LOG_SCALE_MIN, LOG_SCALE_MAX)
            scale_row -= LOG_SCALE_MIN
            scale_row *= 2 ** ACT_FRAC_BITS / LOG_SCALE_STEP
            scale_row = scale_row.astype(np.int64)
            centre = np.floor(means[:, part] + 0.5)
            offset = means[:, part] - centre
            offset += 0.5
            offset *= OFFSET_STEPS
            row = np.floor(offset).astype(np.int64)
            if row.size and (row.min() < 0 or row.max() >= OFFSET_STEPS):  # only off the activation grid
                raise ValueError("a mixture mean is not on the activation grid")
            row *= rows.scale_rows
            row += scale_row
            rows.ensure(row.reshape(-1))
            row *= rows.WIDTH
            row += REACH
            self.row_start[:, part] = row
            self.centre[:, part] = centre
            self.weights[:, part] = weights
            top = np.zeros(weights.shape[1], dtype=np.int64)
            heaviest = weights[0].copy()
            total = weights[0].copy()
            for component in range(1, k):
                heavier = weights[component] > heaviest
                top[heavier] = component
                np.maximum(heaviest, weights[component], out=heaviest)
                total += weights[component]
            self.weight[part] = total
            at_top = top * weights.shape[1] + np.arange(weights.shape[1])
            self.bucket[part] = rows.bucket[scale_row.reshape(-1)[at_top]]
            self.middle[part] = self.centre[:, part].reshape(-1)[at_top]

    def window_start(self, pick, size) -> np.ndarray:
        """The first value of the ``size``-wide windows of latents ``pick`` (inside their range;
        ``size`` one for all or one per latent)."""
        return np.maximum(np.minimum(self.middle[pick] - (size - 1) // 2, self.upper[pick] - size + 1),
                          self.lower[pick])

    def rows_for(self, pick: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
        """Counts of ``size`` bins from ``start`` and then the escape, for latents ``pick``."""
        return self.rows_of(self.arrays_for(pick, start), size)

    def arrays_for(self, pick, start: np.ndarray) -> tuple:
        """What ``rows_of`` needs of latents ``pick`` whose windows start at ``start``."""
        return (self.stretch_starts(pick, start), self.weights[:, pick], start, self.lower[pick], self.upper[pick],
                self.weight[pick])

    def rows_of(self, arrays: tuple, size: int) -> np.ndarray:
        """Counts of ``size`` bins and then the escape, for latents given by ``arrays_for``.

        float64 throughout: every value is an integer below 2**53 (weights < 2**17,
        CDFs < 2**25, at most 8 components), so every product and sum is exact."""
        first, weights, start, lower, upper, weight = arrays
        n = len(start)
        if n * (size + 1) > _CELLS_PER_BLOCK and n > 1:
            half = n // 2
            return np.concatenate([self.rows_of(tuple(a[..., :half] for a in arrays), size),
                                   self.rows_of(tuple(a[..., half:] for a in arrays), size)])
        # sum_k e_k CDF_k at the bin edges; each component's stretch of CDF is contiguous in
        # the table, so it is one row of a sliding-window view (a copy, not a gather per bin).
        stretches = self.rows.stretches(size + 1)
        mixture = stretches[first[0]] * weights[0][:, None]
        for component in range(1, len(first)):
            mixture += stretches[first[component]] * weights[component][:, None]
        total = weight * CDF_ONE
        counts = np.empty((n, size + 1), dtype=np.float64)
        np.subtract(mixture[:, 1:], mixture[:, :-1], out=counts[:, :size])
        counts[:, :size] += weight[:, None]
        below, above = mixture[:, 0].copy(), total - mixture[:, size]  # the mass outside the window
        # Edge bins: the CDF is 0 at the lower bound's lower edge and 1 from the upper bound's
        # upper edge on, so a bound's bin takes the mass beyond it and bins past the upper
        # bound get none.  Only rows that touch a bound need it.
        at_lower = np.nonzero(start <= lower)[0]
        if at_lower.size:
            counts[at_lower, 0] += below[at_lower]
            below[at_lower] = 0.0
        past_upper = np.nonzero(start + size > upper)[0]
        if past_upper.size:
            last = (upper - start)[past_upper]
            counts[past_upper, last] += total[past_upper] - mixture[past_upper, last + 1]
            counts[past_upper, :size] *= np.arange(size) <= last[:, None]
            above[past_upper] = 0.0
        # The escape carries the floors of the range's bins outside the window too, so that
        # after an escape the range row (window bins zeroed) costs what the NLL says.
        inside = np.minimum(start + size - 1, upper) - start + 1
        counts[:, size] = below + above + weight * ((upper - lower + 1) - inside)
        return counts

    def range_rows(self, pick: np.ndarray, window_start: np.ndarray, window_size: np.ndarray) -> np.ndarray:
        """Rows over [lower, lower + RANGE_SIZE) for escaped latents, their windows' bins zeroed."""
        if not pick.size:
            return np.zeros((0, RANGE_SIZE))
        rows = self.rows_for(pick, self.lower[pick], RANGE_SIZE)[:, :RANGE_SIZE]
        first = (window_start - self.lower[pick])[:, None]
        position = np.arange(RANGE_SIZE)[None, :]
        rows[(position >= first) & (position < first + window_size[:, None])] = 0.0
        return np.ascontiguousarray(rows)

    # -- the encoder's path: a symbol's cumulative counts from a few edges, not its row --

    def stretch_starts(self, pick, start: np.ndarray) -> np.ndarray:
        """Where each component's CDF stretch for windows starting at ``start`` begins in the
        flat table (K x n; a component's centre at most REACH bins away, as ``rows_for``)."""
        first = start - self.centre[:, pick]
        np.clip(first, -REACH, REACH, out=first)
        first += self.row_start[:, pick]
        return first

    def mixture_at(self, pick, first: np.ndarray, edge) -> np.ndarray:
        """sum_k e_k CDF_k at bin edge ``edge`` of latents ``pick`` whose stretches start at
        ``first`` (``stretch_starts``): the value ``rows_for`` holds in that column, without
        the rest of the row."""
        values = self.rows.flat.take(first + edge) * self.weights[:, pick]
        return values.sum(axis=0)

    def window_intervals(self, pick, start: np.ndarray, size: np.ndarray,
                         symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(before, through, total) of ``symbols`` in the rows ``rows_for(pick, start, size)``
        builds (``size`` per latent; the escape is symbol ``size``), from four edges per latent.

        The sum of a row's counts before bin j telescopes: sum_k e_k CDF_k at edge j, less
        the CDF at the window's lower edge unless that went to the first bin (lower
        bound), plus j floors of ``weight``; beyond the upper bound's bin it stays at its
        value there.  The same integers as summing the row (all exact in float64).
        """
        lower, upper, weight = self.lower[pick], self.upper[pick], self.weight[pick]
        first = self.stretch_starts(pick, start)
        total_mass = weight * CDF_ONE
        past_upper = start + size > upper
        last = np.where(past_upper, upper - start, size)
        at_lower_edge = self.mixture_at(pick, first, 0)
        at_upper_edge = self.mixture_at(pick, first, size)
        base = np.where(start <= lower, 0.0, at_lower_edge)
        beyond = total_mass - base + (last + 1) * weight

        def before_edge(j, at_j):
            return np.where(j == 0, 0.0, np.where(j <= last, at_j - base + j * weight, beyond))

        inside = np.minimum(start + size - 1, upper) - start + 1
        above = np.where(past_upper, 0.0, total_mass - at_upper_edge)
        total = before_edge(size, at_upper_edge) + base + above + weight * ((upper - lower + 1) - inside)
        before = before_edge(symbols, self.mixture_at(pick, first, symbols))
        through = np.where(symbols == size, total,
                           before_edge(symbols + 1, self.mixture_at(pick, first, np.minimum(symbols + 1, size))))
        return before, through, total

    def range_intervals(self, pick: np.ndarray, window_start: np.ndarray, window_size: np.ndarray,
                        values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(before, through, total) of ``values`` in the rows ``range_rows`` builds (RANGE_SIZE bins)."""
        lower, upper, weight = self.lower[pick], self.upper[pick], self.weight[pick]
        last = upper - lower  # the range row starts at the lower bound and ends past the upper one
        beyond = weight * CDF_ONE + (last + 1) * weight

        first = self.stretch_starts(pick, lower)

        def before_edge(j):  # the counts of the row before zeroing, before bin j
            return np.where(j == 0, 0.0, np.where(j <= last, self.mixture_at(pick, first, j) + j * weight, beyond))

        zero_from = window_start - lower
        zero_to = np.minimum(zero_from + window_size, RANGE_SIZE)
        window_from, window_to = before_edge(zero_from), before_edge(zero_to)

        def zeroed_before(j):  # minus the zeroed bins before bin j
            at_j = before_edge(j)
            return at_j - (np.where(j <= zero_from, window_from, np.where(j >= zero_to, window_to, at_j)) - window_from)

        position = values - lower
        return zeroed_before(position), zeroed_before(position + 1), beyond - (window_to - window_from)


def _closing_buckets(counts: np.ndarray) -> np.ndarray:
    """Per factor (row of ``counts``: its latents per bucket, the range last), the bucket whose
    window each bucket's latents use: their own, or the next one in use where a group reaches
    MERGE_BELOW latents or the factor's last bucket in use."""
    closing = []
    for row in counts.tolist():
        closed = [0] * len(row)
        carried, waiting, remaining = 0, [], sum(row)
        for b, count in enumerate(row):
            if not count:
                continue
            carried += count
            remaining -= count
            waiting.append(b)
            if carried >= MERGE_BELOW or not remaining:
                for member in waiting:
                    closed[member] = b
                carried, waiting = 0, []
        closing.append(closed)
    return np.array(closing, dtype=np.int64).reshape(counts.shape)


def _float64(values) -> np.ndarray:
    """A tensor's (or an array's) values as a float64 numpy array, a view where they are one."""
    if isinstance(values, torch.Tensor):
        values = values.detach()
        values = (values if values.dtype == torch.float64 else values.to(torch.float64)).numpy()
    return np.asarray(values, dtype=np.float64)


def _gathered(tensors: list, rows: int, total: int) -> np.ndarray:
    """Factors' tensors (each ``rows`` x its latents) side by side in one float64 array:
    ``torch.cat`` of their reshapes, without a torch call per tensor."""
    out = np.empty((rows, total))
    start = 0
    for tensor in tensors:
        values = _float64(tensor).reshape(rows, -1)
        out[:, start:start + values.shape[1]] = values
        start += values.shape[1]
    return out


def _factor_arrays(tables: LogisticTables, factors: list) -> tuple:
    """What both pushes start from, for factors coded one after another: (their latents' ``_Latents``,
    the values (int64), each latent's factor index, the window group it is coded in, whether every
    value lies inside its bounds)."""
    sizes = [f[0].numel() for f in factors]
    n, k, groups = sum(sizes), factors[0][1].shape[0], len(BUCKETS) + 1
    latents = _Latents(tables, *(_gathered([f[i] for f in factors], k, n) for i in (1, 2, 3)),
                       *(_gathered([f[i] for f in factors], 1, n) for i in (4, 5)))
    values = _gathered([f[0] for f in factors], 1, n).reshape(-1).astype(np.int64)
    inside = not ((values < latents.lower) | (values > latents.upper)).any()
    factor = np.repeat(np.arange(len(factors)), sizes)
    closing = _closing_buckets(np.bincount(factor * groups + latents.bucket, minlength=len(factors) * groups)
                               .reshape(len(factors), groups))
    return latents, values, factor, closing[factor, latents.bucket], inside


def push_mixture_factors(encoder: Encoder, tables: LogisticTables, factors: list) -> None:
    """Queue factors (latents, means, log_scales, logits, lower, upper), in order; means,
    log_scales and logits are shaped (K, *latents.shape), lower and upper like latents."""
    if not factors:
        return
    if native.available():
        _push_natively(encoder, tables, factors)
        return
    if any(isinstance(factor, CodedIntervals) for factor in factors):
        raise RuntimeError("intervals worked out ahead need the compiled loops here too")
    latents, values, factor, group, inside = _factor_arrays(tables, factors)
    if not inside:
        raise ValueError("latent outside its bounds")
    n, groups = len(values), len(BUCKETS) + 1
    size = _SIZES[group]
    before, through, total = np.empty(n), np.empty(n), np.empty(n)
    symbols, escaped = np.empty(n, dtype=np.int64), np.empty(n, dtype=bool)
    for first in range(0, n, _LATENTS_PER_BLOCK):
        part = slice(first, first + _LATENTS_PER_BLOCK)
        start = latents.window_start(part, size[part])
        offset = values[part] - start
        escaped[part] = (offset < 0) | (offset >= size[part])
        symbols[part] = np.where(escaped[part], size[part], offset)
        before[part], through[part], total[part] = latents.window_intervals(part, start, size[part], symbols[part])
    chosen = np.nonzero(escaped)[0]
    start = latents.window_start(chosen, size[chosen])
    range_coded = latents.range_intervals(chosen, start, size[chosen], values[chosen])
    # The decoder's order: per factor, its windows group by group (latents in flat order),
    # then its escapes in the same order; a stable sort of windows then escapes by
    # (factor, escape or not, group) gives it.
    key = np.concatenate([factor * 2 * groups + group, (factor * 2 * groups + groups + group)[chosen]])
    order = np.argsort(key.astype(np.int16) if key.max() < 2 ** 15 else key, kind="stable")
    encoder.push_intervals(np.concatenate([symbols, values[chosen] - latents.lower[chosen]])[order],
                           np.concatenate([before, range_coded[0]])[order],
                           np.concatenate([through, range_coded[1]])[order],
                           np.concatenate([total, range_coded[2]])[order],
                           np.concatenate([size + 1, np.full(chosen.size, RANGE_SIZE)])[order])


@dataclass(frozen=True)
class CodedIntervals:
    """Consecutive factors' quantized intervals in coding order, worked out ahead: what
    ``push_mixture_factors`` lays on the stack for them, and whether a value lay outside its
    bounds or a row had no mass (raised when they are pushed, in the order one pass over all
    the factors raises them).  The worker of adapt/parts.py sends these for its part of a
    batch instead of the factors: an eighth of the bytes, and the compiled loops run there."""

    start: np.ndarray
    end: np.ndarray
    outside: bool = False
    massless: bool = False


def coded_intervals(tables: LogisticTables, factors: list) -> CodedIntervals:
    """The intervals ``push_mixture_factors`` codes for ``factors`` (with the compiled loops)."""
    return _joined(_intervals_by_run(tables, factors))


def _joined(parts: list[CodedIntervals]) -> CodedIntervals:
    """Consecutive parts' intervals as one, in order (any part's outside or massless flag kept)."""
    if not parts:
        return CodedIntervals(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    return CodedIntervals(np.concatenate([part.start for part in parts]), np.concatenate([part.end for part in parts]),
                          any(part.outside for part in parts), any(part.massless for part in parts))


def _intervals_by_run(tables: LogisticTables, factors: list) -> list[CodedIntervals]:
    """Factors' intervals run by run of consecutive factors of at most _LATENTS_PER_BLOCK
    latents (a larger factor alone), so that each run's arrays stay in the CPU's cache between
    the two loops: a batch's whole arrays (~50 000 RGB latents, K = 3) took ~1.5 times as long
    in ``mixture_latents``.  The coding order is factor by factor, so the runs' intervals, one
    after the other, are the whole batch's.  A parameter off its table raises at once."""
    runs, run, held = [], [], 0
    for factor in factors:
        count = factor[0].numel()
        if run and held + count > _LATENTS_PER_BLOCK:
            runs.append(run)
            run, held = [], 0
        run.append(factor)
        held += count
    runs.append(run)
    parts = []
    for run in runs:
        latents, values, factor, group, inside = _factor_arrays(tables, run)
        if not inside:
            parts.append(CodedIntervals(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), outside=True))
            continue
        start, end, status = native.push_mixture(latents.rows.flat, latents.weights, latents.row_start,
                                                 latents.centre, latents.weight, latents.lower, latents.upper,
                                                 latents.middle, values, factor, group, _SIZES, len(BUCKETS) + 1,
                                                 len(run), REACH, CDF_ONE, RANGE_SIZE)
        parts.append(CodedIntervals(start, end, massless=bool(status)))
    return parts


def _push_natively(encoder: Encoder, tables: LogisticTables, factors: list) -> None:
    """``push_mixture_factors`` by the compiled loops (native.py).  ``factors`` may hold
    ``CodedIntervals`` of factors worked out ahead, in their place.  The same errors as one
    pass over all: a latent's parameters at once, then its bounds, then a row without mass."""
    parts, pending = [], []
    for item in factors:
        if not isinstance(item, CodedIntervals):
            pending.append(item)
            continue
        if pending:
            parts += _intervals_by_run(tables, pending)
            pending = []
        parts.append(item)
    if pending:
        parts += _intervals_by_run(tables, pending)
    whole = _joined(parts)
    if whole.outside:
        raise ValueError("latent outside its bounds")
    if whole.massless:
        raise ValueError("a probability row sums to zero")
    encoder.push_quantized(whole.start, whole.end)


def pop_mixture_factor(decoder: Decoder, tables: LogisticTables, means, log_scales, logits, lower,
                       upper) -> torch.Tensor:
    """Decode one factor coded by ``push_mixture_factors``; shaped like ``lower``."""
    latents = _Latents(tables, means, log_scales, logits, lower, upper)
    if native.available():
        values = np.empty(lower.numel(), dtype=np.int64)
        if decoder.run(native.pop_mixture, latents.rows.flat, latents.bucket, _SIZES, MERGE_BELOW, latents.weights,
                       latents.row_start, latents.centre, latents.weight, latents.lower, latents.upper,
                       latents.middle, REACH, CDF_ONE, RANGE_SIZE, values) < 0:
            raise CorruptStream("a decoded value lies outside its known range")
        return torch.from_numpy(values).to(torch.float64).reshape(lower.shape)
    groups = len(BUCKETS) + 1
    group = _closing_buckets(np.bincount(latents.bucket, minlength=groups)[None, :])[0][latents.bucket]
    # Every window in coding order at once (group by group, flat order inside a group), so
    # that each group's arrays are slices.
    order = np.argsort(group.astype(np.int16), kind="stable")
    bounds = np.searchsorted(group[order], np.arange(groups + 1))
    size = _SIZES[group[order]]
    start = latents.window_start(order, size)
    arrays = latents.arrays_for(order, start)
    values = np.empty(lower.numel(), dtype=np.int64)
    escaped = np.zeros(len(order), dtype=bool)
    for b in range(groups):
        part = slice(bounds[b], bounds[b + 1])
        if part.start == part.stop:
            continue
        window_size = int(_SIZES[b])
        symbols = decoder.pop_categorical(latents.rows_of(tuple(a[..., part] for a in arrays), window_size))
        if symbols.size != part.stop - part.start:
            raise CorruptStream("coded data ended early")
        escaped[part] = symbols == window_size
        values[order[part]] = start[part] + symbols
    if escaped.any():
        out = order[escaped]
        rows = latents.range_rows(out, start[escaped], size[escaped])
        positions = decoder.pop_categorical(rows).astype(np.int64)
        if positions.size != out.size:
            raise CorruptStream("coded data ended early")
        values[out] = latents.lower[out] + positions
    return _checked(latents, values, lower.shape)


def _checked(latents: _Latents, values: np.ndarray, shape) -> torch.Tensor:
    if ((values < latents.lower) | (values > latents.upper)).any():
        raise CorruptStream("a decoded value lies outside its known range")
    return torch.from_numpy(values.astype(np.float64)).reshape(shape)
