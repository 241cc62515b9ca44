"""Compiled coding loops (numba, optional): a symbol's interval found from the CDF, not a row.

constriction decodes a symbol by finding which quantized interval of its row holds the
ANS state's quantile, so the Python decoder must build every bin of every row first
(``mixture_coder._Latents.rows_of``): that was most of its time.  The loop here runs
constriction's stack-ANS decoding step itself (32-bit words, a 64-bit state, 24-bit
probabilities, the lazy categorical model's quantization, ``ans.quantized_intervals``)
and finds the interval by walking from the heaviest component's centre over the row's
cumulative counts, each computed from K CDF table entries only where the walk goes: a
few table reads per symbol instead of K (S + 1), and no Python per symbol.

The encoder has one loop too (``push_mixture``): each latent's window and escape
intervals from a few table entries in one pass, where the numpy passes go over all
latents a dozen times (``_Latents.window_intervals``, ``range_intervals``,
``ans.quantized_intervals``, a sort into coding order); the same integers, so the same
bytes (tests/test_push_kernel.py).

It works on the coder's words from the position and state constriction reports
(``AnsCoder.pos``) and hands the new ones back (``AnsCoder.seek``), so every other
symbol stays constriction's.  The bytes are the format's, unchanged: the loop decodes
exactly what constriction decodes from the rows (tests/test_coder_speed_paths.py).

Without numba (``pip install osoa-zip[fast]``), or with OSOA_ZIP_NO_NUMBA=1 in the
environment, ``available()`` is False and the coders build rows as before.  numba is
imported, and the loops loaded from its cache, on the first ``available()`` that says
yes; commands with little to code say no (``expect_compress``, ``expect_decode``).
"""
from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np

PRECISION = 24
_ONE = 1 << PRECISION

# numba installed and not switched off.  Whether it is installed is asked of the import
# system, without importing it: numba costs ~0.15 CPU s to import and ~0.25 s more to
# set up its compiler on first use (its typing and lowering registries, its runtime),
# whatever it then loads from its cache; a command with little to code does not pay it
# (``expect_compress``, ``expect_decode``).
ENABLED = (os.environ.get("OSOA_ZIP_NO_NUMBA", "") in ("", "0")
           and importlib.util.find_spec("numba") is not None)

# Below these amounts of work a process codes faster without numba than with it (its
# fixed cost above against the loops' savings: docs/PERFORMANCE.md, "Start-up, release
# 1.10").  The loops give the same integers either way, so this only moves time.  Compress's
# loops save ~0.6 us a sub-pixel on RGB tiles, less on grey ones; `-T 1` breaks even near
# 350 KiB of files, the default -T (the torch passes in several threads) lower: 128 KiB.
COMPRESS_MIN_BYTES = 128 << 10    # of input files, for compress
DECODE_MIN_SUBPIXELS = 256 << 10  # model-coded, for decompress and test (~1.5 us a sub-pixel saved)

_kernels: list[tuple[dict, str, object]] = []  # (module globals, name, Python function), not yet compiled
_loaded = False  # every kernel so far is numba's dispatcher (later ones are compiled as they come)
_load_lock = threading.Lock()
_worth = True  # no command said how much it codes: a long-lived caller, numba pays off
_compress_bytes = 0
_decode_subpixels = 0


def available() -> bool:
    """Whether the compiled loops are used now: numba is installed and not switched off, and it
    is already loaded or the work announced so far pays for loading it (loaded here, then)."""
    if not ENABLED:
        return False
    if not _loaded:
        if not _worth:
            return False
        _load()
    return ENABLED


def expect_compress(input_bytes: int) -> None:
    """A compress is about to code files of ``input_bytes`` in all (the model codes at most
    those): the compiled loops are used if that is at least ``COMPRESS_MIN_BYTES``."""
    global _worth, _compress_bytes
    _compress_bytes += input_bytes
    _worth = _compress_bytes >= COMPRESS_MIN_BYTES or _decode_subpixels >= DECODE_MIN_SUBPIXELS


def expect_decode(subpixels: int) -> None:
    """A decoder is about to decode ``subpixels`` model-coded sub-pixels (one image group):
    the compiled loops are used once the groups so far reach ``DECODE_MIN_SUBPIXELS``."""
    global _worth, _decode_subpixels
    _decode_subpixels += subpixels
    _worth = _compress_bytes >= COMPRESS_MIN_BYTES or _decode_subpixels >= DECODE_MIN_SUBPIXELS


def _compiled(function):
    """numba's dispatcher of a kernel: compiled once per machine (numba's cache beside this
    file, or its user-wide cache), without a writable cache once per process.  ``nogil``:
    segments decode in threads."""
    import numba
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:  # no writable cache directory
        return numba.njit(nogil=True)(function)


def _load() -> None:
    """Import numba and make every registered kernel its dispatcher, in its module's globals:
    the kernels call each other by those names, and numba resolves them when it first
    compiles (or loads from its cache) a kernel that is called, after this."""
    global _loaded, ENABLED
    with _load_lock:
        if _loaded:
            return
        try:
            for namespace, name, function in _kernels:
                namespace[name] = _compiled(function)
        except ImportError:  # installed but broken: the torch passes, as without it
            ENABLED = False
            return
        _kernels.clear()
        _loaded = True


def _jit(function):
    """A compiled loop: registered here, and numba's dispatcher from the first ``available()``
    that says yes (at once, if that came before this module was imported).  Until then the
    name holds the Python function, which the callers do not call: they ask ``available()``
    first, and call the kernel as its module's attribute (``native.pop_windows``), never by a
    name imported from here, which would keep the Python function."""
    if not ENABLED:
        return function
    with _load_lock:
        if not _loaded:
            _kernels.append((function.__globals__, function.__name__, function))
            return function
    return _compiled(function)


@_jit
def _step(words, position, state, start, end):
    """One stack-ANS decoding step of a symbol whose quantized interval is [start, end) out of
    2**24, constriction's: the state keeps what the symbol did not use, and takes the next
    32-bit word from the top of the stack when it falls below 2**32."""
    quantile = state & np.uint64(_ONE - 1)
    state = (state >> np.uint64(PRECISION)) * np.uint64(end - start) + (quantile - np.uint64(start))
    if state < np.uint64(1 << 32) and position > 0:
        position -= 1
        state = (state << np.uint64(32)) | np.uint64(words[position])
    return position, state


@_jit
def _mixture_edge(flat, stretch, weights, i, j):
    """sum_k e_k CDF_k at bin edge j of latent i whose component stretches start at ``stretch``."""
    total = 0.0
    for k in range(stretch.shape[0]):
        total += weights[k, i] * flat[stretch[k] + j]
    return total


@_jit
def _window_start(flat, stretch, weights, i, j, sigma, base, w, last, beyond):
    """floor(C_j sigma) + j: where bin j of a window row starts (``window_intervals``' C_j:
    the mixture at edge j less the window's lower edge unless the lower bound's bin took it,
    plus j floors; past the upper bound's bin, all of the row but the escape)."""
    if j == 0:
        return 0
    if j <= last:
        before = _mixture_edge(flat, stretch, weights, i, j) - base + j * w
    else:
        before = beyond
    return np.int64(before * sigma) + j


@_jit
def pop_mixture(words, position, state, flat, bucket, window_sizes, merge_below, weights, row_start, centre, weight,
                lower, upper, middle, reach, cdf_one, range_size, values):
    """Decode one factor of ``mixture_coder``: its windows in coding order (``coding_order``),
    then the escaped latents' range rows in the same order.

    The arrays are ``_Latents``' (components first); ``values`` (natural order) receives
    each latent's value.  Every cumulative count is the one ``_Latents.window_intervals``
    and ``range_intervals`` give (the rows' sums: exact integers in float64), the interval
    [floor(C_s sigma) + s, floor(C_{s+1} sigma) + s + 1) of constriction's lazy categorical
    model, the last symbol ending at 2**24.  Returns the new (position, state), or position
    -1 when a value lies outside its range (corrupt data).
    """
    order, sizes = coding_order(bucket, window_sizes, merge_below)
    k_count = weights.shape[0]
    stretch = np.empty(k_count, dtype=np.int64)
    escaped = np.zeros(order.shape[0], dtype=np.bool_)
    for t in range(order.shape[0]):
        i = order[t]
        size = sizes[t]
        lo, up, w = lower[i], upper[i], weight[i]
        start = max(min(middle[i] - (size - 1) // 2, up - size + 1), lo)
        for k in range(k_count):
            stretch[k] = min(max(start - centre[k, i], -reach), reach) + row_start[k, i]
        past_upper = start + size > up
        last = up - start if past_upper else size
        base = 0.0 if start <= lo else _mixture_edge(flat, stretch, weights, i, 0)
        # The row's total is the mixture's mass plus one floor per range value and per bin past
        # it (the table entries cancel: the same integer as summing the row, read nowhere).
        total = w * cdf_one + ((last + 1 if past_upper else size) + (up - lo + 1)
                               - (min(start + size - 1, up) - start + 1)) * w
        sigma = (_ONE - (size + 1)) / total
        beyond = w * cdf_one - base + (last + 1) * w
        quantile = np.int64(state & np.uint64(_ONE - 1))
        # Walk from the heaviest component's centre: most symbols lie a few bins from it.
        symbol = min(max(middle[i] - start, 0), size)
        first = _window_start(flat, stretch, weights, i, symbol, sigma, base, w, last, beyond)
        if first <= quantile:
            end = _ONE
            while symbol < size:
                end = _window_start(flat, stretch, weights, i, symbol + 1, sigma, base, w, last, beyond)
                if end > quantile:
                    break
                symbol += 1
                first = end
            if symbol == size:
                end = _ONE
        else:
            end = first
            while True:
                symbol -= 1
                first = _window_start(flat, stretch, weights, i, symbol, sigma, base, w, last, beyond)
                if first <= quantile:
                    break
                end = first
        position, state = _step(words, position, state, first, end)
        escaped[t] = symbol == size
        values[i] = start + symbol
    for t in range(order.shape[0]):
        if not escaped[t]:
            continue
        i = order[t]
        size = sizes[t]
        lo, up, w = lower[i], upper[i], weight[i]
        start = max(min(middle[i] - (size - 1) // 2, up - size + 1), lo)
        for k in range(k_count):
            stretch[k] = min(max(lo - centre[k, i], -reach), reach) + row_start[k, i]
        last = up - lo  # the range row starts at the lower bound
        beyond = w * cdf_one + (last + 1) * w
        zero_from = start - lo
        zero_to = min(zero_from + size, range_size)
        window_from = 0.0 if zero_from == 0 else (
            (_mixture_edge(flat, stretch, weights, i, zero_from) + zero_from * w) if zero_from <= last else beyond)
        window_to = (_mixture_edge(flat, stretch, weights, i, zero_to) + zero_to * w) if zero_to <= last else beyond
        total = beyond - (window_to - window_from)
        sigma = (_ONE - range_size) / total
        quantile = np.int64(state & np.uint64(_ONE - 1))
        low, high = 0, range_size - 1
        first = 0
        while low < high:
            mid = (low + high + 1) >> 1
            before = _range_before(flat, stretch, weights, i, mid, w, last, beyond, zero_from, zero_to,
                                   window_from, window_to)
            mid_start = np.int64(before * sigma) + mid
            if mid_start <= quantile:
                low, first = mid, mid_start
            else:
                high = mid - 1
        if low == 0:
            first = 0
        elif first == 0:
            first = np.int64(_range_before(flat, stretch, weights, i, low, w, last, beyond, zero_from, zero_to,
                                           window_from, window_to) * sigma) + low
        if low == range_size - 1:
            end = _ONE
        else:
            end = np.int64(_range_before(flat, stretch, weights, i, low + 1, w, last, beyond, zero_from, zero_to,
                                         window_from, window_to) * sigma) + low + 1
        position, state = _step(words, position, state, first, end)
        values[i] = lo + low
    for i in range(values.shape[0]):
        if not lower[i] <= values[i] <= upper[i]:
            return -1, state
    return position, state


@_jit
def coding_order(bucket, window_sizes, merge_below):
    """(order, sizes): one factor's latents in coding order and their window sizes, as
    ``mixture_coder.pop_mixture_factor`` orders them: each bucket's latents take the window of
    the next bucket in use where the buckets so far reach ``merge_below`` latents, or of the
    last bucket in use (``_closing_buckets``); group by group, flat order inside a group."""
    groups = window_sizes.shape[0]
    counts = np.zeros(groups, dtype=np.int64)
    for i in range(bucket.shape[0]):
        counts[bucket[i]] += 1
    closing = np.zeros(groups, dtype=np.int64)
    carried, waiting_from, remaining = 0, 0, bucket.shape[0]
    for b in range(groups):
        if counts[b] == 0:
            continue
        carried += counts[b]
        remaining -= counts[b]
        if carried >= merge_below or remaining == 0:
            for waiting in range(waiting_from, b + 1):
                closing[waiting] = b
            carried, waiting_from = 0, b + 1
    next_at = np.zeros(groups, dtype=np.int64)
    for b in range(groups):
        next_at[closing[b]] += counts[b]
    at = 0
    for b in range(groups):
        at, next_at[b] = at + next_at[b], at
    order = np.empty(bucket.shape[0], dtype=np.int64)
    sizes = np.empty(bucket.shape[0], dtype=np.int64)
    for i in range(bucket.shape[0]):
        group = closing[bucket[i]]
        order[next_at[group]] = i
        sizes[next_at[group]] = window_sizes[group]
        next_at[group] += 1
    return order, sizes


@_jit
def _range_before(flat, stretch, weights, i, j, w, last, beyond, zero_from, zero_to, window_from, window_to):
    """Counts of a range row before bin j, the window's bins zeroed (``range_intervals``)."""
    if j <= zero_from:
        return 0.0 if j == 0 else ((_mixture_edge(flat, stretch, weights, i, j) + j * w) if j <= last else beyond)
    if j >= zero_to:
        at_j = (_mixture_edge(flat, stretch, weights, i, j) + j * w) if j <= last else beyond
        return at_j - (window_to - window_from)
    return window_from


@_jit
def mixture_latents(means, log_scales, logits, exp, log_scale_min, log_scale_max, exp_range, grid, scale_grid,
                    offset_steps, scale_rows, width, reach, bucket_of_scale_row,
                    weights, row, row_start, centre, weight, bucket, middle):
    """``mixture_coder._Latents``' per-latent lookups in one pass, by the same elementwise
    float64 operations in the same order (so the same integers): each component's integer
    weight e_k (``LogisticTables.mixture_weights``), CDF table row and its centre in the flat
    table, its centre; per latent the weights' sum, and the bucket and centre of its heaviest
    component (the first on ties).  Returns 0, or 1 when a mean or a logit is off the
    activation grid (a row or exp entry outside its table)."""
    k_count, n = means.shape
    status = 0
    for i in range(n):
        largest = logits[0, i]
        for k in range(1, k_count):
            largest = max(largest, logits[k, i])
        heaviest, top, top_scale, total = 0.0, 0, 0, 0.0
        for k in range(k_count):
            relative = min(max(logits[k, i] - largest, -exp_range), 0.0)
            relative += exp_range
            relative *= grid
            at = np.int64(relative)
            scale = min(max(log_scales[k, i], log_scale_min), log_scale_max)
            scale -= log_scale_min
            scale *= scale_grid
            scale_row = np.int64(scale)
            middle_k = np.floor(means[k, i] + 0.5)
            offset = means[k, i] - middle_k
            offset += 0.5
            offset *= offset_steps
            offset_row = np.int64(np.floor(offset))
            if not (0 <= offset_row < offset_steps and 0 <= at < exp.shape[0] and 0 <= scale_row < scale_rows):
                status = 1
                offset_row, at, scale_row = 0, 0, 0
            e = exp[at]
            row[k, i] = offset_row * scale_rows + scale_row
            row_start[k, i] = row[k, i] * width + reach
            centre[k, i] = np.int64(middle_k)
            weights[k, i] = e
            if k == 0 or e > heaviest:
                heaviest, top, top_scale = e, k, scale_row
            total += e
        weight[i] = total
        bucket[i] = bucket_of_scale_row[top_scale]
        middle[i] = centre[top, i]
    return status


@_jit
def pop_windows(words, position, state, cdf, which, escape, cdf_one, symbols):
    """Decode the symbols of ``logistic_coder`` window rows without edge bins: row t is the
    2W+1 bins between consecutive edges of ``cdf[which[t]]`` (the CDF at the window's bin
    edges), then with ``escape`` the mass outside the window.  The counts before bin j are
    CDF(j) - CDF(0) (the rows telescope), as ``_WindowRows.push`` codes them; the search
    walks from the window's centre.  ``symbols`` receives them; returns (position, state),
    or position -1 for a row without mass.
    """
    width = cdf.shape[1] - 1
    count = width + 1 if escape else width
    for t in range(which.shape[0]):
        row = which[t]
        at_zero = cdf[row, 0]
        total = cdf_one if escape else cdf[row, width] - at_zero
        if not total > 0:  # as constriction refuses such a row
            return -1, state
        sigma = (_ONE - count) / total
        quantile = np.int64(state & np.uint64(_ONE - 1))
        symbol = width // 2
        first = np.int64((cdf[row, symbol] - at_zero) * sigma) + symbol
        if first <= quantile:
            end = _ONE
            while symbol < count - 1:
                end = np.int64((cdf[row, symbol + 1] - at_zero) * sigma) + symbol + 1
                if end > quantile:
                    break
                symbol += 1
                first = end
            if symbol == count - 1:
                end = _ONE
        else:
            end = first
            while True:
                symbol -= 1
                first = 0 if symbol == 0 else np.int64((cdf[row, symbol] - at_zero) * sigma) + symbol
                if first <= quantile:
                    break
                end = first
        position, state = _step(words, position, state, first, end)
        symbols[t] = symbol
    return position, state


@_jit
def _quantized(before, through, total, size, symbol):
    """[start, end) of ``symbol`` out of 2**24 in constriction's lazy categorical model
    (``ans.quantized_intervals``: the same float64 operations, so the same integers)."""
    scale = (_ONE - size) / total
    start = np.int64(before * scale) + symbol
    end = _ONE if symbol == size - 1 else np.int64(through * scale) + symbol + 1
    return start, end


@_jit
def push_mixture(flat, weights, row_start, centre, weight, lower, upper, middle, values, factor, group,
                 window_sizes, groups, factors, reach, cdf_one, range_size):
    """The quantized intervals ``mixture_coder.push_mixture_factors`` codes, in coding order.

    Per latent, its window (bucket group ``group``, the window size ``window_sizes[group]``)
    and symbol, and the (before, through, total) ``_Latents.window_intervals`` gives, from
    the same table entries; for an escaped latent also ``range_intervals``' for its range
    row.  Every count is an exact integer in float64 (``_Latents.rows_of``), so summing in
    another order gives the same values, and the quantization is ``ans.quantized_intervals``'
    one division, product and truncation.  The order is the decoder's: per factor (latents of
    a factor are consecutive), its windows group by group in flat order, then its escapes
    likewise.  Returns (start, end, status); status 1: a row without mass (constriction
    refuses those), and start/end are then not to be used.
    """
    k_count, n = weights.shape
    stretch = np.empty(k_count, dtype=np.int64)
    window_start = np.empty(n, dtype=np.int64)
    win_start = np.empty(n, dtype=np.int64)
    win_end = np.empty(n, dtype=np.int64)
    escaped = np.zeros(n, dtype=np.bool_)
    keys = 2 * groups * factors
    counts = np.zeros(keys + 1, dtype=np.int64)
    status = 0
    for i in range(n):
        size = window_sizes[group[i]]
        lo, up, w = lower[i], upper[i], weight[i]
        start = max(min(middle[i] - (size - 1) // 2, up - size + 1), lo)
        window_start[i] = start
        offset = values[i] - start
        symbol = offset
        if offset < 0 or offset >= size:
            symbol = size
            escaped[i] = True
        for k in range(k_count):
            stretch[k] = min(max(start - centre[k, i], -reach), reach) + row_start[k, i]
        total_mass = w * cdf_one
        past_upper = start + size > up
        last = up - start if past_upper else size
        base = 0.0 if start <= lo else _mixture_edge(flat, stretch, weights, i, 0)
        beyond = total_mass - base + (last + 1) * w
        inside = min(start + size - 1, up) - start + 1
        # ``window_intervals``' total, whose table entries cancel (exact integers): the mixture's
        # mass plus one floor per bin of the row up to the bound and per range value outside it.
        total = total_mass + ((last + 1 if past_upper else size) + (up - lo + 1) - inside) * w
        if symbol == 0:
            before = 0.0
        elif symbol <= last:
            before = _mixture_edge(flat, stretch, weights, i, symbol) - base + symbol * w
        else:
            before = beyond
        if symbol == size:
            through = total
        elif symbol + 1 <= last:
            through = _mixture_edge(flat, stretch, weights, i, symbol + 1) - base + (symbol + 1) * w
        else:
            through = beyond
        if not total > 0:
            status = 1
            total = 1.0
        win_start[i], win_end[i] = _quantized(before, through, total, size + 1, symbol)
        key = factor[i] * 2 * groups + group[i]
        counts[key + 1] += 1
        if escaped[i]:
            counts[key + groups + 1] += 1
    for key in range(keys):
        counts[key + 1] += counts[key]
    out = counts[keys]
    start_of = np.empty(out, dtype=np.int64)
    end_of = np.empty(out, dtype=np.int64)
    for i in range(n):
        key = factor[i] * 2 * groups + group[i]
        at = counts[key]
        counts[key] += 1
        start_of[at], end_of[at] = win_start[i], win_end[i]
        if not escaped[i]:
            continue
        # The range row: from the lower bound, the window's bins zeroed (``range_intervals``).
        size = window_sizes[group[i]]
        lo, up, w = lower[i], upper[i], weight[i]
        for k in range(k_count):
            stretch[k] = min(max(lo - centre[k, i], -reach), reach) + row_start[k, i]
        last = up - lo
        beyond = w * cdf_one + (last + 1) * w
        zero_from = window_start[i] - lo
        zero_to = min(zero_from + size, range_size)
        window_from = 0.0 if zero_from == 0 else (
            (_mixture_edge(flat, stretch, weights, i, zero_from) + zero_from * w) if zero_from <= last else beyond)
        window_to = (_mixture_edge(flat, stretch, weights, i, zero_to) + zero_to * w) if zero_to <= last else beyond
        total = beyond - (window_to - window_from)
        position = values[i] - lo
        before = _range_before(flat, stretch, weights, i, position, w, last, beyond, zero_from, zero_to,
                               window_from, window_to)
        through = _range_before(flat, stretch, weights, i, position + 1, w, last, beyond, zero_from, zero_to,
                                window_from, window_to)
        if not total > 0:
            status = 1
            total = 1.0
        at = counts[key + groups]
        counts[key + groups] += 1
        start_of[at], end_of[at] = _quantized(before, through, total, range_size, position)
    return start_of, end_of, status


@_jit
def three_bin_rows(start, end):
    """``ans.three_bin_rows`` in one pass: the same symbols and rows."""
    n = start.shape[0]
    symbols = np.empty(n, dtype=np.int32)
    rows = np.empty((n, 3), dtype=np.float64)
    for i in range(n):
        width = end[i] - start[i]
        if start[i] == 0:
            symbol, first, middle = 0, width - 1, 0
        elif end[i] == _ONE:
            symbol, first, middle = 2, start[i] - 2, 0
        else:
            symbol, first, middle = 1, start[i] - 1, width - 1
        symbols[i] = symbol
        rows[i, 0] = first
        rows[i, 1] = middle
        rows[i, 2] = (_ONE - 3) - first - middle
    return symbols, rows
