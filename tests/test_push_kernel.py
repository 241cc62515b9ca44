"""The compiled mixture encoder (native.push_mixture) queues exactly what the numpy passes queue.

``push_mixture_factors`` takes the compiled loop when numba is there and the numpy
passes (``_Latents.window_intervals`` / ``range_intervals``, ``ans.quantized_intervals``)
otherwise; both must lay down the same three-bin rows in the same order, or an
archive would depend on whether numba was installed.  Checked symbol by symbol on the
encoder's queue, and on the bytes, for random and extreme mixtures (scales at both
table ends, means far outside the range, logits past the exp table, ranges of one to
256 values, values on the bounds, escapes, several factors whose buckets merge) and
on the factors of the shipped default model.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_coder_speed_paths import TABLES, _compiled, _mixture, needs_numba

from osoa_zip.coding import mixture_coder, native
from osoa_zip.coding.ans import Decoder, Encoder
from osoa_zip.coding.mixture_coder import BUCKETS, pop_mixture_factor, push_mixture_factors
from osoa_zip.exact.logistic import LOG_SCALE_MAX, LOG_SCALE_MIN


def _queued_both_ways(tables, factors) -> list:
    """(the encoder's queue as plain arrays, its bytes), compiled and then numpy."""
    outcomes = []
    for enabled in (True, False):
        encoder = Encoder()
        with _compiled(enabled):
            push_mixture_factors(encoder, tables, factors)
        queue = [(symbols.dtype.str, symbols.tobytes(), rows.dtype.str, rows.shape, rows.tobytes())
                 for symbols, _, rows in encoder._queue]
        outcomes.append((queue, encoder.finish()))
    return outcomes


def _assert_one_queue_that_decodes(factors) -> None:
    """The compiled push queues what the numpy passes queue, and its bytes decode to ``factors``."""
    compiled, numpy_passes = _queued_both_ways(TABLES, factors)
    assert compiled == numpy_passes
    decoder = Decoder(compiled[1])
    for values, *distribution in factors:
        assert torch.equal(pop_mixture_factor(decoder, TABLES, *distribution), values)
    decoder.check_finished()


@needs_numba
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.lists(st.integers(1, 400), min_size=1, max_size=5), st.integers(1, 5),
       st.booleans())
def test_compiled_push_queues_what_numpy_queues(seed, sizes, k, extreme):
    factors = [_mixture(seed + i, n, k, extreme) for i, n in enumerate(sizes)]
    _assert_one_queue_that_decodes(factors)


@needs_numba
def test_compiled_push_with_every_window_size_escapes_and_merged_buckets():
    """Factors with every bucket in use (no merging), then small ones whose buckets merge."""
    n = 64 * (len(BUCKETS) + 2)
    values, means, log_scales, logits, lower, upper = _mixture(5, n, 3, extreme=False)
    log_scales = torch.round(torch.linspace(LOG_SCALE_MIN, LOG_SCALE_MAX, n).repeat(3, 1) * 256) / 256
    latents = mixture_coder._Latents(TABLES, means, log_scales, logits, lower, upper)
    assert set(np.unique(latents.bucket)) == set(range(len(BUCKETS) + 1))
    factors = [(values, means, log_scales, logits, lower, upper), _mixture(6, 90, 3, True), _mixture(7, 3, 3, True)]
    compiled, numpy_passes = _queued_both_ways(TABLES, factors)
    assert compiled == numpy_passes
    coded = sum(len(symbols) // 4 for _, symbols, *_ in compiled[0])
    assert coded > sum(f[0].numel() for f in factors)  # escapes: a window symbol and a range symbol


@needs_numba
@pytest.mark.parametrize("channels", [1, 3])
def test_compiled_push_of_the_default_models_factors(channels):
    """The shipped default model's own factors on smooth and noisy images: the same queue."""
    from osoa_zip.models.registry import DEFAULT_MODEL, load_model
    network = load_model(DEFAULT_MODEL).network(channels)
    rng = np.random.default_rng(channels)
    ramp = np.add.outer(np.arange(32), np.arange(32)) * 4
    pixels = np.stack([(ramp + rng.integers(-spread, spread + 1, (channels, 32, 32))) % 256
                       for spread in (0, 3, 40, 128, 0, 7)])
    pixels[4] = 255  # saturated: edge bins
    with torch.no_grad():
        _, factors = network.analyse(torch.from_numpy(pixels).to(torch.float64), with_loss=False)
    compiled, numpy_passes = _queued_both_ways(network.tables, factors)
    assert compiled == numpy_passes


@needs_numba
def test_compiled_push_in_runs_of_factors_queues_what_one_numpy_pass_queues():
    """The compiled push codes runs of factors of at most _LATENTS_PER_BLOCK latents one after
    the other (a larger factor alone): across run boundaries the queue is one pass's."""
    block = mixture_coder._LATENTS_PER_BLOCK
    sizes = [block // 2 + 3, block // 2, 5, block + 100, 300, block - 300]
    factors = [_mixture(60 + i, n, 3, extreme=True) for i, n in enumerate(sizes)]
    _assert_one_queue_that_decodes(factors)
    values, *rest = factors[3]
    values = values.clone()
    values[-1] = rest[-2][-1] - 1  # below its lower bound, in the third run
    for enabled in (True, False):
        encoder = Encoder()
        with _compiled(enabled), pytest.raises(ValueError, match="outside its bounds"):
            push_mixture_factors(encoder, TABLES, [*factors[:3], (values, *rest), *factors[4:]])
        assert not encoder._queue


def _strided(flat: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``flat`` reshaped to ``shape`` (channels second), as a view with the channels last in
    memory (not contiguous unless H = W = 1), like the factors a model's pass hands the coder."""
    shaped = flat.reshape(shape)
    last = list(range(len(shape)))
    last.append(last.pop(-3))  # channels to the end
    kept = shaped.permute(*last).contiguous()
    back = list(range(len(shape) - 3)) + [len(shape) - 1, len(shape) - 3, len(shape) - 2]
    view = kept.permute(*back)
    assert torch.equal(view, shaped)
    return view


@pytest.mark.parametrize("enabled", [True, False])
def test_factors_laid_out_as_views_code_as_their_flat_copies(enabled):
    """A model's factors are K x B x C x H x W views, not contiguous, of several sizes: gathered
    as they are, they queue the bytes their contiguous (K, n) copies queue, and decode from
    such views to the same values."""
    if enabled and not native.ENABLED:
        pytest.skip("numba (the fast extra) is not installed")
    shapes = [(4, 2, 3, 5), (2, 2, 1, 1), (3, 4, 4, 4), (1, 3, 2, 2)]
    flat, views = [], []
    for seed, shape in enumerate(shapes):
        n = int(np.prod(shape))
        values, means, log_scales, logits, lower, upper = _mixture(40 + seed, n, 3, extreme=True)
        flat.append((values, means, log_scales, logits, lower, upper))
        views.append((_strided(values, shape), *(_strided(t, (3, *shape)) for t in (means, log_scales, logits)),
                      _strided(lower, shape), _strided(upper, shape)))
    assert sum(not tensor.is_contiguous() for factor in views for tensor in factor) >= 18
    coded = []
    for factors in (flat, views):
        encoder = Encoder()
        with _compiled(enabled):
            push_mixture_factors(encoder, TABLES, factors)
        coded.append(encoder.finish())
    assert coded[0] == coded[1]
    decoder = Decoder(coded[1])
    with _compiled(enabled):
        for values, *distribution in views:
            decoded = pop_mixture_factor(decoder, TABLES, *distribution)
            assert decoded.shape == values.shape and torch.equal(decoded, values)
    decoder.check_finished()


def _closing_reference(row: list[int]) -> list[int]:
    """The rule bucket by bucket: latents of buckets in use wait until the waiting ones reach
    MERGE_BELOW or no bucket in use follows; then all waiting take the last one's window."""
    closing, waiting, carried = [0] * len(row), [], 0
    for b, count in enumerate(row):
        if count:
            waiting.append(b)
            carried += count
            if carried >= mixture_coder.MERGE_BELOW or not any(row[b + 1:]):
                closing = [b if c in waiting else value for c, value in enumerate(closing)]
                waiting, carried = [], 0
    return closing


def test_closing_buckets_follow_the_rule_per_factor():
    rng = np.random.default_rng(3)
    counts = rng.choice([0, 0, 1, 5, 30, 63, 64, 200], (60, len(BUCKETS) + 1))
    counts[0] = 0
    closing = mixture_coder._closing_buckets(counts)
    assert closing.shape == counts.shape and closing.dtype == np.int64
    assert closing.tolist() == [_closing_reference(row) for row in counts.tolist()]
    assert mixture_coder._closing_buckets(np.array([[0, 3, 0, 70, 1, 0]])).tolist() == [[0, 3, 0, 3, 4, 0]]


def test_latents_outside_their_bounds_are_refused_both_ways():
    values, *rest = _mixture(3, 50, 2, extreme=True)
    values = values.clone()
    values[7] = rest[-1][7] + 1  # one above its upper bound
    for enabled in (True, False):
        with _compiled(enabled), pytest.raises(ValueError, match="outside its bounds"):
            push_mixture_factors(Encoder(), TABLES, [(values, *rest)])


@needs_numba
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 300))
def test_compiled_three_bin_rows_are_numpys(seed, n):
    """Intervals anywhere in [0, 2**24): at the start, at the end, one wide, nearly all of it."""
    from osoa_zip.coding.ans import _ONE, three_bin_rows
    rng = np.random.default_rng(seed)
    start = rng.integers(0, _ONE - 1, n)
    end = np.minimum(start + rng.choice([1, 2, 3, 1000, _ONE], n), _ONE)
    start[: n // 4] = 0
    end[n // 4: n // 2] = _ONE
    start[n // 4: n // 2] = np.maximum(start[n // 4: n // 2], 2)  # the lazy model's last symbol
    compiled, numpy_rows = native.three_bin_rows(start, end), three_bin_rows(start, end)
    for got, want in zip(compiled, numpy_rows):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@needs_numba
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.lists(st.integers(1, 300), min_size=2, max_size=6), st.integers(1, 4))
def test_intervals_worked_out_ahead_push_the_bytes_of_their_factors(seed, sizes, cut):
    """A batch's first factors pushed as their CodedIntervals (the worker's part), the rest as
    factors: the encoder's queue and bytes are those of all the factors pushed at once."""
    factors = [_mixture(seed + i, n, 3, True) for i, n in enumerate(sizes)]
    cut = min(cut, len(factors) - 1)
    whole, ahead = Encoder(), Encoder()
    with _compiled(True):
        push_mixture_factors(whole, TABLES, factors)
        push_mixture_factors(ahead, TABLES, [mixture_coder.coded_intervals(TABLES, factors[:cut])] + factors[cut:])
    queue = [[(s.tobytes(), r.tobytes()) for s, _, r in encoder._queue] for encoder in (whole, ahead)]
    assert queue[0] == queue[1]
    assert whole.finish() == ahead.finish()


@needs_numba
def test_intervals_worked_out_ahead_raise_what_one_pass_raises():
    """A value outside its bounds in the part worked out ahead is refused when it is pushed,
    before a row without mass of the rest, as one pass over all the factors refuses it; and
    without the compiled loops here, such a part is an error, not other bytes."""
    values, *rest = _mixture(3, 50, 2, extreme=True)
    values = values.clone()
    values[7] = rest[-1][7] + 1  # one above its upper bound
    outside = [(values, *rest)]
    with _compiled(True):
        ahead = mixture_coder.coded_intervals(TABLES, outside)
        assert ahead.outside
        massless = mixture_coder.CodedIntervals(np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64),
                                                massless=True)
        with pytest.raises(ValueError, match="outside its bounds"):
            push_mixture_factors(Encoder(), TABLES, [massless, ahead, _mixture(4, 20, 2, False)])
        with pytest.raises(ValueError, match="sums to zero"):
            push_mixture_factors(Encoder(), TABLES, [massless, _mixture(4, 20, 2, False)])
    with _compiled(False), pytest.raises(RuntimeError, match="compiled loops"):
        push_mixture_factors(Encoder(), TABLES, [mixture_coder.CodedIntervals(np.zeros(0), np.zeros(0))])
