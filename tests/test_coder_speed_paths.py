"""The encoder's fast paths code exactly what the row-by-row reference codes.

The encoders no longer build a probability row per latent: each symbol is coded
from its cumulative counts (``ans.quantized_intervals``, ``three_bin_rows``),
which the coders take from a few CDF edges.  The rows themselves still exist
(the decoder needs them: ``rows_for``, ``range_rows``, ``_WindowRows.counts``),
so every check here compares the fast path with those rows pushed whole by
``Encoder.push_categorical``, the way every earlier release encoded: the same
integers and the same bytes, on random parameters and at the extremes (scales at
both ends of the table, means far outside the range, logits past the exp table,
narrow ranges, values on the bounds, escapes).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from osoa_zip.coding import logistic_coder, mixture_coder, native
from osoa_zip.coding.ans import CorruptStream, Decoder, Encoder
from osoa_zip.coding.bitsback import StackCoder
from osoa_zip.coding.mixture_coder import BUCKETS, RANGE_SIZE, pop_mixture_factor, push_mixture_factors
from osoa_zip.exact.logistic import LOG_SCALE_MAX, LOG_SCALE_MIN, LogisticTables

TABLES = LogisticTables.from_tensors(LogisticTables.build(mixture=True))
SETTINGS = settings(max_examples=25, deadline=None)


def _cumulative(rows: np.ndarray, symbols: np.ndarray) -> tuple:
    """(before, through, total) of each row's symbol, summed from the row (exact integers)."""
    sums = np.concatenate([np.zeros((len(rows), 1)), np.cumsum(rows, axis=1)], axis=1)
    pick = np.arange(len(rows))
    return sums[pick, symbols], sums[pick, symbols + 1], sums[:, -1]


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(2, 300), st.integers(1, 40),
       st.sampled_from(["small", "wide", "one heavy bin", "zeros"]))
def test_intervals_code_the_bytes_of_whole_rows(seed, size, count, kind):
    rng = np.random.default_rng(seed)
    if kind == "small":
        rows = rng.integers(0, 2 ** 24, (count, size)).astype(np.float64)
    elif kind == "wide":
        rows = rng.integers(0, 2 ** 44, (count, size)).astype(np.float64)
    elif kind == "one heavy bin":
        rows = rng.integers(0, 3, (count, size)).astype(np.float64)
        rows[np.arange(count), rng.integers(0, size, count)] = 2.0 ** 44
    else:
        rows = np.zeros((count, size))
        rows[:, rng.integers(0, size)] = rng.integers(1, 2 ** 30, count)
    symbols = rng.integers(0, size, count)
    symbols[: count // 3] = size - 1  # the last symbol ends at 2**24
    symbols[count // 3: count // 2] = 0
    whole, fast = Encoder(), Encoder()
    whole.push_categorical(symbols, rows)
    fast.push_intervals(symbols, *_cumulative(rows, symbols), np.full(count, size))
    assert fast.finish() == whole.finish()


def test_two_symbol_rows_whose_last_symbol_starts_at_one():
    """[1, 2**24) is no three-bin row's interval: such symbols go as two-bin rows, in order."""
    rows = np.array([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [3.0, 4.0], [5.0, 0.0]])
    symbols = np.array([1, 1, 1, 0, 1])
    whole, fast = Encoder(), Encoder()
    whole.push_categorical(symbols, rows)
    fast.push_intervals(symbols, *_cumulative(rows, symbols), np.full(len(rows), 2))
    assert fast.finish() == whole.finish()


def test_a_row_of_zeros_is_refused_like_constriction_refuses_it():
    with pytest.raises(ValueError):
        Encoder().push_intervals(np.zeros(1, dtype=np.int64), np.zeros(1), np.zeros(1), np.zeros(1), np.full(1, 3))


def _mixture(seed: int, n: int, k: int, extreme: bool):
    """Random mixtures on the activation grid over [lower, lower + span] (each latent its own range)."""
    rng = np.random.default_rng(seed)
    lower = rng.integers(-300, 300, n).astype(np.float64)
    span = rng.choice([0, 1, 3, 40, 255], n) if extreme else np.full(n, 255)
    upper = lower + span
    centre = rng.uniform(-0.2, 1.2, (k, n)) * span + lower
    if extreme:
        centre[:, : n // 4] += rng.choice([-2000.0, -450.0, 450.0, 2000.0], (k, n // 4))
    means = np.round(centre * 256) / 256
    log_scales = np.round(rng.uniform(LOG_SCALE_MIN - 1, LOG_SCALE_MAX + 1, (k, n)) * 256) / 256
    if extreme:
        log_scales[:, : n // 3] = rng.choice([LOG_SCALE_MIN, LOG_SCALE_MAX], (k, n // 3))
    logits = np.round(rng.uniform(-20.0 if extreme else -6.0, 6.0, (k, n)) * 256) / 256
    draws = np.round(rng.normal(centre[0], np.exp(np.clip(log_scales[0], LOG_SCALE_MIN, LOG_SCALE_MAX)) * 3))
    values = np.clip(draws, lower, upper)
    values[: n // 8] = rng.integers(0, 256, n // 8) % (span[: n // 8] + 1) + lower[: n // 8]  # escapes
    values[n // 8: n // 6] = upper[n // 8: n // 6]
    values[n // 6: n // 5] = lower[n // 6: n // 5]
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    return (as_tensor(values), as_tensor(means), as_tensor(log_scales), as_tensor(logits), as_tensor(lower),
            as_tensor(upper))


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 400), st.integers(1, 4), st.booleans())
def test_mixture_window_and_range_intervals_are_the_rows_sums(seed, n, k, extreme):
    values, means, log_scales, logits, lower, upper = _mixture(seed, n, k, extreme)
    latents = mixture_coder._Latents(TABLES, means, log_scales, logits, lower, upper)
    values = values.numpy().astype(np.int64)
    everyone = np.arange(n)
    for size in (*BUCKETS, RANGE_SIZE):
        start = latents.window_start(everyone, size)
        offset = values - start
        escaped = (offset < 0) | (offset >= size)
        symbols = np.where(escaped, size, offset)
        rows = latents.rows_for(everyone, start, size)
        fast = latents.window_intervals(everyone, start, np.full(n, size), symbols)
        for got, want in zip(fast, _cumulative(rows, symbols)):
            np.testing.assert_array_equal(got, want)
        chosen = np.nonzero(escaped)[0]
        if chosen.size:
            sizes = np.full(chosen.size, size)
            ranges = latents.range_rows(chosen, start[chosen], sizes)
            fast = latents.range_intervals(chosen, start[chosen], sizes, values[chosen])
            for got, want in zip(fast, _cumulative(ranges, values[chosen] - latents.lower[chosen])):
                np.testing.assert_array_equal(got, want)


def _reference_push(encoder: Encoder, tables, factors) -> None:
    """Release 1.6's mixture encoder: every window row built and pushed whole, factor by factor."""
    for values, means, log_scales, logits, lower, upper in factors:
        latents = mixture_coder._Latents(tables, means, log_scales, logits, lower, upper)
        values = values.reshape(-1).numpy().astype(np.int64)
        groups = len(BUCKETS) + 1
        closing = mixture_coder._closing_buckets(np.bincount(latents.bucket, minlength=groups)[None, :])[0]
        group = closing[latents.bucket]
        escapes = []
        for b in range(groups):
            members = np.nonzero(group == b)[0]
            if not members.size:
                continue
            size = int(mixture_coder._SIZES[b])
            start = latents.window_start(members, size)
            offset = values[members] - start
            escaped = (offset < 0) | (offset >= size)
            encoder.push_categorical(np.where(escaped, size, offset), latents.rows_for(members, start, size))
            escapes.append((members[escaped], start[escaped], np.full(int(escaped.sum()), size)))
        out, starts, sizes = (np.concatenate(parts) for parts in zip(*escapes))
        if out.size:
            encoder.push_categorical(values[out] - latents.lower[out], latents.range_rows(out, starts, sizes))


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.lists(st.integers(1, 300), min_size=1, max_size=4), st.booleans())
def test_mixture_encoder_writes_the_reference_bytes_and_decodes(seed, sizes, extreme):
    factors = [_mixture(seed + i, n, 3, extreme) for i, n in enumerate(sizes)]
    fast, reference = Encoder(), Encoder()
    push_mixture_factors(fast, TABLES, factors)
    _reference_push(reference, TABLES, factors)
    data = fast.finish()
    assert data == reference.finish()
    decoder = Decoder(data)
    for values, *distribution in factors:
        assert torch.equal(pop_mixture_factor(decoder, TABLES, *distribution), values)
    decoder.check_finished()


def test_mixture_encoder_uses_every_window_size_and_escapes():
    """Enough latents per scale that no bucket merges: each window size, and escapes, occur."""
    n = 64 * (len(BUCKETS) + 2)
    values, means, log_scales, logits, lower, upper = _mixture(7, n, 2, extreme=False)
    log_scales = torch.linspace(LOG_SCALE_MIN, LOG_SCALE_MAX, n).repeat(2, 1)
    log_scales = torch.round(log_scales * 256) / 256
    latents = mixture_coder._Latents(TABLES, means, log_scales, logits, lower, upper)
    assert set(np.unique(latents.bucket)) == set(range(len(BUCKETS) + 1))
    factors = [(values, means, log_scales, logits, lower, upper)]
    fast, reference = Encoder(), Encoder()
    push_mixture_factors(fast, TABLES, factors)
    _reference_push(reference, TABLES, factors)
    assert fast.finish() == reference.finish()


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 500), st.booleans())
def test_logistic_window_rows_push_the_bytes_of_their_rows(seed, n, escape):
    rng = np.random.default_rng(seed)
    mean = torch.from_numpy(np.round(rng.uniform(-300, 300, n) * 256) / 256)
    log_scale = torch.from_numpy(np.round(rng.uniform(LOG_SCALE_MIN - 1, LOG_SCALE_MAX + 1, n) * 256) / 256)
    log_scale[: n // 4] = float(rng.choice([LOG_SCALE_MIN, LOG_SCALE_MAX]))
    for members, half_width, rows, _, _ in logistic_coder._plan(TABLES, [mean], [log_scale]):
        width = 2 * half_width + 1
        symbols = rng.integers(0, width + escape, members.numel())
        symbols[: len(symbols) // 4] = width - 1 + escape
        fast, whole = Encoder(), Encoder()
        rows.push(fast, symbols, escape)
        whole.push_categorical(symbols, rows.counts(escape))
        assert fast.finish() == whole.finish()


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 500))
def test_logistic_rows_with_edge_bins_push_the_bytes_of_their_rows(seed, n):
    """Bounds anywhere around the window (a single value, one side only, both), every symbol."""
    rng = np.random.default_rng(seed)
    mean = torch.from_numpy(np.round(rng.uniform(-300, 300, n) * 256) / 256)
    log_scale = torch.from_numpy(np.round(rng.uniform(LOG_SCALE_MIN - 1, LOG_SCALE_MAX + 1, n) * 256) / 256)
    lower = torch.round(mean + torch.from_numpy(rng.choice([-1000.0, -40.0, -3.0, 0.0, 2.0], n)))
    upper = lower + torch.from_numpy(rng.choice([0.0, 1.0, 5.0, 255.0, 3000.0], n))
    for members, half_width, rows, _, _ in logistic_coder._plan(TABLES, [mean], [log_scale], [(lower, upper)]):
        width = 2 * half_width + 1
        symbols = rng.integers(0, width + 1, members.numel())
        symbols[: len(symbols) // 4] = width
        fast, whole = Encoder(), Encoder()
        rows.push(fast, symbols)
        whole.push_categorical(symbols, rows.counts())
        assert fast.finish() == whole.finish()


# -- the decoder's compiled loop (coding/native.py): what constriction decodes from the rows --

# available() loads numba (lazily, on the first yes), so that the kernels below are its dispatchers.
needs_numba = pytest.mark.skipif(not native.available(), reason="numba (the fast extra) is not installed")


@contextlib.contextmanager
def _compiled(enabled: bool):
    """The compiled loops on or off (as without numba) inside the block."""
    saved, native.ENABLED = native.ENABLED, enabled
    try:
        yield
    finally:
        native.ENABLED = saved


def _pop_both_ways(data: bytes, factors) -> list:
    """Each factor popped by the compiled loop and by the rows (constriction), from the same
    bytes: (values or the error, the coder's position and state) per factor, both ways."""
    outcomes = []
    for enabled in (True, False):
        decoder, seen = Decoder(data), []
        with _compiled(enabled):
            for _, *distribution in factors:
                try:
                    seen.append((pop_mixture_factor(decoder, TABLES, *distribution).numpy().tobytes(),
                                 decoder._coder.pos()))
                except CorruptStream as error:
                    seen.append(str(error))
                    break
        outcomes.append(seen)
    return outcomes


@needs_numba
@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.lists(st.integers(1, 300), min_size=1, max_size=4), st.integers(1, 4),
       st.booleans())
def test_compiled_mixture_pop_decodes_what_the_rows_decode(seed, sizes, k, extreme):
    """Random and extreme mixtures (scales at both table ends, means far outside the range,
    logits past the exp table, ranges of 1 to 256 values, values on the bounds, escapes),
    coded by release 1.6's row-by-row encoder: the same values and the same coder state
    after every factor, and the stream ends where it should."""
    factors = [_mixture(seed + i, n, k, extreme) for i, n in enumerate(sizes)]
    reference = Encoder()
    _reference_push(reference, TABLES, factors)
    data = reference.finish()
    compiled, rows = _pop_both_ways(data, factors)
    assert compiled == rows
    for (values, _), factor in zip(compiled, factors):
        assert np.array_equal(np.frombuffer(values), factor[0].reshape(-1).numpy())
    assert compiled[-1][1] == (0, 0)  # every word used: check_finished holds


@needs_numba
def test_compiled_mixture_pop_uses_every_window_size_and_escapes():
    n = 64 * (len(BUCKETS) + 2)
    values, means, log_scales, logits, lower, upper = _mixture(11, n, 3, extreme=False)
    log_scales = torch.round(torch.linspace(LOG_SCALE_MIN, LOG_SCALE_MAX, n).repeat(3, 1) * 256) / 256
    factors = [(values, means, log_scales, logits, lower, upper)]
    encoder = Encoder()
    push_mixture_factors(encoder, TABLES, factors)
    compiled, rows = _pop_both_ways(encoder.finish(), factors)
    assert compiled == rows
    assert np.array_equal(np.frombuffer(compiled[0][0]), values.numpy())


@needs_numba
@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 2000))
def test_compiled_mixture_pop_of_damaged_data_fails_as_the_rows_do(seed, words):
    """Arbitrary words: the same values, the same state, or the same clean error."""
    rng = np.random.default_rng(seed)
    factors = [_mixture(seed + i, n, 3, extreme=True) for i, n in enumerate((300, 200))]
    data = rng.integers(0, 2 ** 32, words, dtype=np.uint64).astype("<u4").tobytes()
    compiled, rows = _pop_both_ways(data, factors)
    assert compiled == rows


@needs_numba
@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 4))
def test_compiled_mixture_pop_on_a_bits_back_stack(seed, k):
    """A stack that was pushed onto after it was read (bits-back): the loop reads the words
    the pushes laid down, not the ones the stack started with."""
    first, second = _mixture(seed, 150, k, True), _mixture(seed + 1, 150, k, True)
    below = Encoder()
    push_mixture_factors(below, TABLES, [first])
    data, outcomes = below.finish(), []
    for enabled in (True, False):
        with _compiled(enabled):
            stack = StackCoder(data)
            popped = pop_mixture_factor(stack, TABLES, *first[1:])
            group = Encoder()
            push_mixture_factors(group, TABLES, [second])
            stack.push(group)
            outcomes.append((popped.numpy().tobytes(),
                             pop_mixture_factor(stack, TABLES, *second[1:]).numpy().tobytes(), stack._coder.pos()))
    assert outcomes[0] == outcomes[1]
    assert np.array_equal(np.frombuffer(outcomes[0][0]), first[0].numpy())
    assert np.array_equal(np.frombuffer(outcomes[0][1]), second[0].numpy())


@needs_numba
@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 400), st.integers(1, 5), st.booleans())
def test_compiled_latent_lookups_are_numpys(seed, n, k, extreme):
    _, means, log_scales, logits, lower, upper = _mixture(seed, n, k, extreme)
    fields = ("weights", "row_start", "centre", "weight", "bucket", "middle", "lower", "upper")
    found = []
    for enabled in (True, False):
        with _compiled(enabled):
            latents = mixture_coder._Latents(TABLES, means, log_scales, logits, lower, upper)
        found.append([getattr(latents, field) for field in fields])
    for field, got, want in zip(fields, *found):
        assert got.dtype == want.dtype and np.array_equal(got, want), field


@needs_numba
@SETTINGS
@given(st.lists(st.integers(0, len(BUCKETS)), min_size=1, max_size=3000), st.integers(1, 3000))
def test_compiled_coding_order_is_the_rows_order(buckets, skew):
    bucket = np.array(buckets, dtype=np.int64)
    bucket[: skew % len(bucket)] = bucket[0]  # long runs of one bucket, so that some groups close early
    groups = len(BUCKETS) + 1
    group = mixture_coder._closing_buckets(np.bincount(bucket, minlength=groups)[None, :])[0][bucket]
    order, sizes = native.coding_order(bucket, mixture_coder._SIZES, mixture_coder.MERGE_BELOW)
    assert np.array_equal(order, np.argsort(group, kind="stable"))
    assert np.array_equal(sizes, mixture_coder._SIZES[group[order]])


@needs_numba
def test_every_kernel_is_compiled_once_the_loops_are_available():
    """The kernels are registered as Python functions and become numba's dispatchers on the
    first available() that says yes (a module imported after that compiles its own at once)."""
    import numba

    from osoa_zip.exact import conv_kernels, mixture_kernels
    kernels = {"native": (native, ["_step", "_mixture_edge", "_window_start", "pop_mixture", "coding_order",
                                   "_range_before", "mixture_latents", "pop_windows", "_quantized",
                                   "push_mixture", "three_bin_rows"]),
               "mixture_kernels": (mixture_kernels, ["_cdf_q24", "_component", "_weights", "mixture_forward",
                                                     "_sign", "mixture_backward", "fill_component_rows",
                                                     "_round_onto", "_zero", "_negated_sum"]),
               "conv_kernels": (conv_kernels, ["leaky_framed", "gradient_columns", "leaky_gradient"])}
    assert native.available()
    for module, names in kernels.values():
        for name in names:
            assert isinstance(getattr(module, name), numba.core.dispatcher.Dispatcher), (module.__name__, name)


def test_the_compiled_loops_can_be_switched_off():
    """OSOA_ZIP_NO_NUMBA=1: the rows, as without numba (numba is then not even imported)."""
    script = "import sys; from osoa_zip.coding import native; print(native.available(), 'numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OSOA_ZIP_NO_NUMBA": "1"},
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


@needs_numba
@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.lists(st.integers(1, 400), min_size=1, max_size=3), st.booleans())
def test_compiled_logistic_pop_decodes_what_the_rows_decode(seed, sizes, escape):
    """Single-logistic windows (every bucket: scales at both table ends), with escapes (values
    far outside the window, coded uniform) or without (a bits-back posterior's windows)."""
    rng = np.random.default_rng(seed)
    factors = []
    for n in sizes:
        mean = torch.from_numpy(np.round(rng.uniform(-300, 300, n) * 256) / 256)
        log_scale = torch.from_numpy(np.round(rng.uniform(LOG_SCALE_MIN - 1, LOG_SCALE_MAX + 1, n) * 256) / 256)
        log_scale[: n // 4] = float(rng.choice([LOG_SCALE_MIN, LOG_SCALE_MAX]))
        spread = np.exp(np.clip(log_scale.numpy(), LOG_SCALE_MIN, LOG_SCALE_MAX)) * 20
        if not escape:  # inside the window: the narrowest is 4 bins either side of the rounded mean
            spread = np.minimum(spread, 3.0)
        values = np.clip(np.round(mean.numpy() + rng.uniform(-1, 1, n) * spread), -2000, 2000)
        factors.append((torch.from_numpy(values), mean, log_scale))
    encoder = Encoder()
    for values, mean, log_scale in factors:
        logistic_coder.push_factor(encoder, TABLES, values, mean, log_scale, escape=escape)
    data, outcomes = encoder.finish(), []
    for enabled in (True, False):
        with _compiled(enabled):
            decoder, seen = Decoder(data), []
            for values, mean, log_scale in factors:
                decoded = logistic_coder.pop_factor(decoder, TABLES, mean, log_scale, escape=escape)
                assert torch.equal(decoded, values)
                seen.append(decoder._coder.pos())
            outcomes.append(seen)
    assert outcomes[0] == outcomes[1] and outcomes[0][-1] == (0, 0)
