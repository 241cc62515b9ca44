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

import weakref

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ..exact.fixed import ACT_FRAC_BITS
from ..exact.logistic import CDF_ONE, CDF_RANGE, EXP_RANGE, LOG_SCALE_MAX, LOG_SCALE_MIN, LogisticTables
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
        self.cdf = np.zeros((OFFSET_STEPS * self.scale_rows, self.WIDTH), dtype=np.float64)  # integers
        self.filled = np.zeros(OFFSET_STEPS * self.scale_rows, dtype=bool)
        self._stretches: dict[int, np.ndarray] = {}

    def stretches(self, width: int) -> np.ndarray:
        """Every ``width``-long stretch of the flat table: row i starts at flat position i (a view)."""
        if width not in self._stretches:
            self._stretches[width] = sliding_window_view(self.cdf.reshape(-1), width)
        return self._stretches[width]

    def ensure(self, rows: np.ndarray) -> None:
        missing = rows[~self.filled[rows]]
        if not missing.size:
            return
        missing = np.unique(missing)
        low_end, high_end = self.tables.cdf[0].item(), self.tables.cdf[-1].item()
        edges = np.arange(self.WIDTH, dtype=np.float64) - REACH - 0.5
        for scale_row in np.unique(missing % self.scale_rows):
            group = missing[missing % self.scale_rows == scale_row]
            inv_scale = self.inv_scale[scale_row]
            # Beyond +-CDF_RANGE the interpolation returns the table's end values, so only
            # the core of a row (a few scales wide) needs computing.
            reach = int(np.ceil(CDF_RANGE / inv_scale)) + 2
            first, last = max(0, REACH - reach), min(self.WIDTH, REACH + reach + 1)
            offset = ((group // self.scale_rows) + 0.5) / OFFSET_STEPS - 0.5
            u = (edges[None, first:last] - offset[:, None]) * inv_scale
            core = np.where(u <= -CDF_RANGE, low_end, np.where(u >= CDF_RANGE, high_end, 0.0))
            inner = np.abs(u) < CDF_RANGE
            core[inner] = self.tables.cdf_q24(torch.from_numpy(u[inner])).numpy()
            self.cdf[group, :first] = low_end
            self.cdf[group, first:last] = core
            self.cdf[group, last:] = high_end
        self.filled[missing] = True


_ROWS: "weakref.WeakKeyDictionary[LogisticTables, _ComponentRows]" = weakref.WeakKeyDictionary()


def _component_rows(tables: LogisticTables) -> _ComponentRows:
    if tables not in _ROWS:
        _ROWS[tables] = _ComponentRows(tables)
    return _ROWS[tables]


class _Latents:
    """Everything the rows of some latents need, as numpy arrays.

    Takes K x ... tensors (components first, as the models give them) and keeps each
    latent's components side by side (latents x K), so that picking latents is a row gather.
    """

    def __init__(self, tables: LogisticTables, means, log_scales, logits, lower, upper) -> None:
        k = means.shape[0]
        means = means.detach().reshape(k, -1).to(torch.float64).numpy()
        log_scales = log_scales.detach().reshape(k, -1).to(torch.float64).numpy()
        logits = logits.detach().reshape(k, -1).to(torch.float64).numpy()
        self.lower = lower.detach().reshape(-1).to(torch.float64).numpy().astype(np.int64)
        self.upper = upper.detach().reshape(-1).to(torch.float64).numpy().astype(np.int64)
        if (self.upper - self.lower >= RANGE_SIZE).any():
            raise ValueError(f"a latent's range is wider than {RANGE_SIZE} values")
        if tables.exp is None:
            raise ValueError("these tables have no exp table (the model has no mixtures)")
        # The exact core's lookups (LogisticTables.mixture_weights / scale_index), in numpy.
        relative = np.clip(logits - logits.max(axis=0, keepdims=True), -EXP_RANGE, 0.0)
        weights = tables.exp.numpy()[((relative + EXP_RANGE) * 2 ** ACT_FRAC_BITS).astype(np.int64)]
        scale_index = (np.clip(log_scales, LOG_SCALE_MIN, LOG_SCALE_MAX) - LOG_SCALE_MIN) * 2 ** ACT_FRAC_BITS
        rows = _component_rows(tables)
        scale_row = np.floor(scale_index / LOG_SCALE_STEP).astype(np.int64)
        centre = np.floor(means + 0.5)
        offset = np.floor((means - centre + 0.5) * OFFSET_STEPS).astype(np.int64)
        row = offset * rows.scale_rows + scale_row
        rows.ensure(row.reshape(-1))
        self.rows = rows
        # Per latent, its components side by side (rows_for picks latents): the weights, the
        # centres and where each component's CDF row sits in the flat table.
        self.weights = np.ascontiguousarray(weights.T)
        self.weight = self.weights.sum(axis=1)
        self.centre = np.ascontiguousarray(centre.T.astype(np.int64))
        self.row_start = np.ascontiguousarray((row * rows.WIDTH + REACH).T)
        # Stage 1's window: around the heaviest component (ties: the first), inside the range.
        top = np.argmax(weights, axis=0)[None, :]
        self.bucket = rows.bucket[np.take_along_axis(scale_row, top, 0)[0]]
        self.middle = np.take_along_axis(centre, top, 0)[0].astype(np.int64)

    def window_start(self, pick: np.ndarray, size: int) -> np.ndarray:
        """The first value of the ``size``-wide windows of latents ``pick`` (inside their range)."""
        return np.maximum(np.minimum(self.middle[pick] - (size - 1) // 2, self.upper[pick] - size + 1),
                          self.lower[pick])

    def rows_for(self, pick: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
        """Counts of ``size`` bins from ``start`` and then the escape, for latents ``pick``.

        float64 throughout: every value is an integer below 2**53 (weights < 2**17,
        CDFs < 2**25, at most 8 components), so every product and sum is exact."""
        if len(pick) * (size + 1) > _CELLS_PER_BLOCK and len(pick) > 1:
            half = len(pick) // 2
            return np.concatenate([self.rows_for(pick[:half], start[:half], size),
                                   self.rows_for(pick[half:], start[half:], size)])
        lower, upper, weight = self.lower[pick], self.upper[pick], self.weight[pick]
        first = self.row_start[pick] + np.clip(start[:, None] - self.centre[pick], -REACH, REACH)
        # sum_k e_k CDF_k at the bin edges; each component's stretch of CDF is contiguous in
        # the table, so it is one row of a sliding-window view (a copy, not a gather per bin).
        mixture = np.einsum("nk,nkj->nj", self.weights[pick], self.rows.stretches(size + 1)[first])
        total = weight * CDF_ONE
        counts = np.empty((len(pick), size + 1), dtype=np.float64)
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


def _buckets(latents: _Latents, index: np.ndarray) -> list:
    """[(window size, members in coding order)] for the latents ``index`` (one factor).

    A bucket with fewer than MERGE_BELOW members joins the next larger one in use
    (wider windows, fewer calls): a rule on counts both sides know.
    """
    bucket = latents.bucket[index]
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(len(BUCKETS) + 2))
    groups, carried = [], []
    for b in range(len(BUCKETS) + 1):
        members = order[bounds[b]:bounds[b + 1]]
        if not members.size:
            continue
        carried.append(members)
        if sum(part.size for part in carried) >= MERGE_BELOW or bounds[b + 1] == len(order):
            groups.append((BUCKETS[b] if b < len(BUCKETS) else RANGE_SIZE, index[np.sort(np.concatenate(carried))]))
            carried = []
    return groups


def push_mixture_factors(encoder: Encoder, tables: LogisticTables, factors: list) -> None:
    """Queue factors (latents, means, log_scales, logits, lower, upper), in order; means,
    log_scales and logits are shaped (K, *latents.shape), lower and upper like latents."""
    if not factors:
        return
    cat = lambda tensors: torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)  # noqa: E731
    latents = _Latents(tables, cat([f[1] for f in factors]), cat([f[2] for f in factors]),
                       cat([f[3] for f in factors]), torch.cat([f[4].reshape(-1) for f in factors]),
                       torch.cat([f[5].reshape(-1) for f in factors]))
    values = torch.cat([f[0].reshape(-1) for f in factors]).to(torch.float64).numpy().astype(np.int64)
    if ((values < latents.lower) | (values > latents.upper)).any():
        raise ValueError("latent outside its bounds")
    ends = np.cumsum([0] + [f[0].numel() for f in factors])
    plan = [_buckets(latents, np.arange(first, last)) for first, last in zip(ends[:-1], ends[1:])]
    # Every window row of one size, for all factors at once (rows_at: a latent's row there).
    size_of, start = np.empty(len(values), dtype=np.int64), np.empty(len(values), dtype=np.int64)
    for groups in plan:
        for size, members in groups:
            size_of[members] = size
    rows_by_size, rows_at = {}, np.empty(len(values), dtype=np.int64)
    for size in np.unique(size_of):
        members = np.nonzero(size_of == size)[0]
        start[members] = latents.window_start(members, int(size))
        rows_by_size[int(size)] = latents.rows_for(members, start[members], int(size))
        rows_at[members] = np.arange(members.size)
    offset = values - start
    escaped = (offset < 0) | (offset >= size_of)
    chosen = np.nonzero(escaped)[0]
    range_rows = latents.range_rows(chosen, start[chosen], size_of[chosen])
    range_at = np.empty(len(values), dtype=np.int64)
    range_at[chosen] = np.arange(chosen.size)
    for groups in plan:  # the decoder's order: a factor's windows bucket by bucket, then its escapes
        for size, members in groups:
            encoder.push_categorical(np.where(escaped[members], size, offset[members]),
                                     rows_by_size[size][rows_at[members]])
        out = np.concatenate([members[escaped[members]] for _, members in groups])
        if out.size:
            encoder.push_categorical(values[out] - latents.lower[out], range_rows[range_at[out]])


def pop_mixture_factor(decoder: Decoder, tables: LogisticTables, means, log_scales, logits, lower,
                       upper) -> torch.Tensor:
    """Decode one factor coded by ``push_mixture_factors``; shaped like ``lower``."""
    latents = _Latents(tables, means, log_scales, logits, lower, upper)
    values = np.empty(lower.numel(), dtype=np.int64)
    escaped_members, escaped_starts, escaped_sizes = [], [], []
    for size, members in _buckets(latents, np.arange(lower.numel())):
        start = latents.window_start(members, size)
        symbols = decoder.pop_categorical(latents.rows_for(members, start, size)).astype(np.int64)
        if symbols.size != members.size:
            raise CorruptStream("coded data ended early")
        escaped = symbols == size
        values[members] = start + symbols
        escaped_members.append(members[escaped])
        escaped_starts.append(start[escaped])
        escaped_sizes.append(np.full(int(escaped.sum()), size))
    out = np.concatenate(escaped_members)
    if out.size:
        rows = latents.range_rows(out, np.concatenate(escaped_starts), np.concatenate(escaped_sizes))
        positions = decoder.pop_categorical(rows).astype(np.int64)
        if positions.size != out.size:
            raise CorruptStream("coded data ended early")
        values[out] = latents.lower[out] + positions
    if ((values < latents.lower) | (values > latents.upper)).any():
        raise CorruptStream("a decoded value lies outside its known range")
    return torch.from_numpy(values.astype(np.float64)).reshape(lower.shape)
