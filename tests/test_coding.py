"""Entropy coding of integer latents under the discretized logistic.

The decoder must pop exactly what the encoder pushed, for any latent value
the flow can produce (including outliers that leave the window and take the
escape path), any mean on the activation grid and any log-scale, even outside
the tabulated range.  And the code must be about as long as the model says.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from osoa_zip.coding.ans import CorruptStream, Decoder, Encoder
from osoa_zip.coding.logistic_coder import ESCAPE_OFFSET, ESCAPE_SIZE, pop_factor, push_factor
from osoa_zip.exact.fixed import ACT_FRAC_BITS
from osoa_zip.exact.logistic import LOG_SCALE_MAX, LOG_SCALE_MIN, LogisticTables, nll_bits

TABLES = LogisticTables.from_tensors(LogisticTables.build())
GRID = 2 ** ACT_FRAC_BITS  # means and log-scales live on the 2**-8 grid

values_st = st.integers(-1279, 1279)
means_st = st.integers(-300 * GRID, 300 * GRID).map(lambda k: k / GRID)
# Across and beyond the tabulated [-2, 5]: the coder clamps, and must do so identically on both sides.
log_scales_st = st.integers(int((LOG_SCALE_MIN - 2) * GRID), int((LOG_SCALE_MAX + 2) * GRID)).map(lambda k: k / GRID)


@st.composite
def factors(draw, max_size=40):
    """(values, means, log_scales) of one factor; values are near the mean or far outliers."""
    n = draw(st.integers(1, max_size))
    means = draw(st.lists(means_st, min_size=n, max_size=n))
    log_scales = draw(st.lists(log_scales_st, min_size=n, max_size=n))
    values = []
    for mean in means:
        if draw(st.booleans()):
            values.append(int(np.clip(round(mean) + draw(st.integers(-20, 20)), -1279, 1279)))
        else:
            values.append(draw(values_st))
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    return as_tensor(values), as_tensor(means), as_tensor(log_scales)


def encode(*factor_list) -> bytes:
    encoder = Encoder()
    for values, mean, log_scale in factor_list:
        push_factor(encoder, TABLES, values, mean, log_scale)
    return encoder.finish()


@settings(max_examples=150, deadline=None)
@given(factors())
def test_push_pop_round_trip(factor):
    """Every value comes back exactly, and nothing is left over."""
    values, mean, log_scale = factor
    decoder = Decoder(encode(factor))
    decoded = pop_factor(decoder, TABLES, mean, log_scale)
    decoder.check_finished()
    assert decoded.dtype == torch.float64 and decoded.shape == mean.shape
    assert torch.equal(decoded, values)


@settings(max_examples=40, deadline=None)
@given(st.lists(factors(max_size=12), min_size=2, max_size=5))
def test_several_factors_pop_in_push_order(factor_list):
    """The encoder replays its queue backwards, so the decoder meets factors in push order."""
    decoder = Decoder(encode(*factor_list))
    for values, mean, log_scale in factor_list:
        assert torch.equal(pop_factor(decoder, TABLES, mean, log_scale), values)
    decoder.check_finished()


@settings(max_examples=25, deadline=None)
@given(factors(max_size=30), st.sampled_from([(30,), (2, 15), (3, 2, 5), (1, 1, 6, 5)]))
def test_round_trip_keeps_shape(factor, shape):
    """Latents come in B x C x H x W tensors; the flat order must not scramble them."""
    values, mean, log_scale = factor
    size = int(np.prod(shape))
    values, mean, log_scale = (x.repeat(size)[:size].reshape(shape) for x in (values, mean, log_scale))
    decoder = Decoder(encode((values, mean, log_scale)))
    assert torch.equal(pop_factor(decoder, TABLES, mean, log_scale), values)
    decoder.check_finished()


def test_window_edges_and_escape_range_boundaries():
    """Values exactly at the window edges, just outside, and at both ends of the escape range."""
    mean = torch.tensor([0.0, 0.5, -0.5, 0.25, 299.99609375, -300.0] * 4, dtype=torch.float64)
    log_scale = torch.tensor([LOG_SCALE_MIN] * 6 + [0.0] * 6 + [LOG_SCALE_MAX] * 6 + [9.0] * 6,
                             dtype=torch.float64)
    for offset in (-257, -256, -129, -128, -5, -4, 4, 5, 128, 129, 256, 257):
        values = torch.floor(mean + 0.5) + offset
        decoder = Decoder(encode((values, mean, log_scale)))
        assert torch.equal(pop_factor(decoder, TABLES, mean, log_scale), values), offset
        decoder.check_finished()
    extremes = torch.tensor([-ESCAPE_OFFSET, ESCAPE_SIZE - ESCAPE_OFFSET - 1], dtype=torch.float64)
    zeros = torch.zeros(2, dtype=torch.float64)
    decoder = Decoder(encode((extremes, zeros, zeros)))
    assert torch.equal(pop_factor(decoder, TABLES, zeros, zeros), extremes)


@pytest.mark.parametrize("value", [-ESCAPE_OFFSET - 1, ESCAPE_SIZE - ESCAPE_OFFSET, 10 ** 6])
def test_values_beyond_the_escape_range_are_refused(value):
    """A latent the escape code cannot hold must raise, not wrap around silently."""
    with pytest.raises(ValueError, match="escape range"):
        encode((torch.tensor([float(value)], dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                torch.zeros(1, dtype=torch.float64)))


def test_empty_factor():
    empty = torch.zeros(0, dtype=torch.float64)
    decoder = Decoder(encode((empty, empty, empty)))
    assert pop_factor(decoder, TABLES, empty, empty).numel() == 0
    decoder.check_finished()


@settings(max_examples=30, deadline=None)
@given(factors(max_size=20), factors(max_size=20))
def test_check_finished_raises_on_leftover_data(first, second):
    """Popping fewer symbols than were pushed must be noticed, not ignored."""
    decoder = Decoder(encode(first, second))
    pop_factor(decoder, TABLES, first[1], first[2])
    with pytest.raises(CorruptStream):
        decoder.check_finished()


def test_decoder_refuses_partial_words():
    data = encode((torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
                   torch.zeros(5, dtype=torch.float64)))
    for cut in (1, 2, 3):
        with pytest.raises(CorruptStream):
            Decoder(data[:-cut] if len(data) > cut else data + b"\x00" * cut)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.integers(200, 2000), means_st,
       st.integers(int(LOG_SCALE_MIN * GRID), int(LOG_SCALE_MAX * GRID)).map(lambda k: k / GRID))
def test_code_length_matches_model_nll(seed, n, centre, log_scale_centre):
    """In-window values cost what the model says (sum of -log2 p), within a few percent plus a constant.

    A coder that quantizes probabilities badly, or tables that disagree with
    the NLL the adaptation optimises, would show up here.
    """
    rng = np.random.default_rng(seed)
    mean = torch.from_numpy(np.round((centre + rng.uniform(-3, 3, n)) * GRID) / GRID)
    log_scale = torch.from_numpy(np.clip(np.round((log_scale_centre + rng.uniform(-0.5, 0.5, n)) * GRID) / GRID,
                                         LOG_SCALE_MIN, LOG_SCALE_MAX))
    scale = torch.exp(log_scale).numpy()
    sample = mean.numpy() + scale * rng.logistic(size=n)
    # Stay inside the smallest window (half-width 4), so no value escapes.
    rounded = np.floor(mean.numpy() + 0.5)
    values = torch.from_numpy(np.clip(np.round(sample), rounded - 4, rounded + 4))
    bits = 8 * len(encode((values, mean, log_scale)))
    model_bits = float(nll_bits(values, mean, log_scale, TABLES).sum())
    assume(model_bits > 0)
    assert bits <= 1.03 * model_bits + 96
    assert bits >= 0.97 * model_bits - 96


def test_code_length_of_escapes_is_bounded():
    """An escaped value costs the escape symbol plus log2(ESCAPE_SIZE) = 12 bits, not more."""
    n = 500
    values = torch.full((n,), 1000.0, dtype=torch.float64)
    zeros = torch.zeros(n, dtype=torch.float64)
    bits = 8 * len(encode((values, zeros, zeros)))
    # escape mass is at least 4/2**24 at scale 1 far out: at most 22 bits + 12 bits raw each.
    assert bits <= n * (22 + 12) + 96
    assert bits >= n * 12
