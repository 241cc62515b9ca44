"""v4's edge bins: the logistic's tails beyond the pixel range [0, 255] go to the bins at 0 and 255.

Checked on untrained tiny networks and on v3's trained weights with the flag on:
exact round trips (saturated images included, where every pixel sits on a bound),
the coder's folded rows against the NLL they stand for, the exact NLL's
gradient against the float path's, and the bits written against the NLL.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, assert_damage_stays_in_range, model_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.coding.ans import Decoder, Encoder
from osoa_zip.coding.logistic_coder import pop_factor, push_factors
from osoa_zip.exact.logistic import CDF_ONE, LogisticTables, bin_probability_q24, nll_bits
from osoa_zip.models.registry import FlowBundle, build_networks, load_model

TINY_V4 = {"hidden": 8, "depth": 2, "levels": 2, "channel_coupling": True, "mean_remainder": True,
           "deep_levels": True, "edge_bins": True}
TABLES = LogisticTables.from_tensors(LogisticTables.build())



def _networks(config: dict = TINY_V4) -> dict:
    torch.manual_seed(0)
    networks = build_networks(config)
    with torch.no_grad():
        for network in networks.values():
            for level in network.levels:
                for net in (level.edges, level.centres):
                    net.convs[-1].weight.mul_(0.05)
            network.to(torch.float64)
            network.tables = TABLES
    return networks


def _saturated(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Mostly 0 and 255 (where the edge bins matter), some mid-grey noise."""
    rng = np.random.default_rng(seed)
    choice = rng.choice([0, 255, -1], size=(batch, channels, height, width), p=[0.45, 0.35, 0.2])
    noise = rng.integers(0, 256, choice.shape)
    return torch.from_numpy(np.where(choice < 0, noise, choice)).to(torch.float64)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (28, 28), (13, 30)])
@pytest.mark.parametrize("channels", [1, 3])
def test_edge_bins_round_trip_exactly(shape, channels):
    model_round_trip(_networks()[channels], _saturated(3, channels, *shape))


def test_trained_means_far_outside_the_range_still_code_the_bound():
    """A mean far below 0 (as a model trained with edge bins predicts for black
    backgrounds) is clamped into the coding window: the bound costs ~nothing."""
    values = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    for mean_value in (-3.0, -40.0, -300.0):
        mean = torch.full_like(values, mean_value)
        log_scale = torch.full_like(values, -2.0)
        bounds = (torch.zeros_like(values), torch.full_like(values, 255.0))
        encoder = Encoder()
        push_factors(encoder, TABLES, [(values, mean, log_scale, *bounds)])
        data = encoder.finish()
        assert len(data) <= 8, (mean_value, len(data))  # 4096 pixels in at most two words
        decoded = pop_factor(Decoder(data), TABLES, mean, log_scale, bounds=bounds)
        assert torch.equal(decoded, values)


@settings(max_examples=80, deadline=None)
@given(st.floats(-300, 300), st.floats(-2.0, 5.0), st.integers(-255, 0), st.integers(0, 255))
def test_folded_rows_give_the_nll_of_the_edge_bins(mean, log_scale, lower, value_offset):
    """Coded size of one value (many copies) against the exact NLL with the same bounds."""
    lower_t = torch.full((256,), float(lower), dtype=torch.float64)
    upper_t = lower_t + 255.0
    value = torch.full_like(lower_t, float(lower + value_offset))
    mean_t = torch.full_like(lower_t, round(mean * 256) / 256)
    log_scale_t = torch.full_like(lower_t, round(log_scale * 256) / 256)
    encoder = Encoder()
    push_factors(encoder, TABLES, [(value, mean_t, log_scale_t, lower_t, upper_t)])
    data = encoder.finish()
    decoded = pop_factor(Decoder(data), TABLES, mean_t, log_scale_t, bounds=(lower_t, upper_t))
    assert torch.equal(decoded, value)
    with torch.no_grad():
        nll = float(nll_bits(value, mean_t, log_scale_t, TABLES, lower_t, upper_t).sum())
    coded = 8 * len(data)
    # The coder snaps means and scales; far-out means are clamped (<1e-3 bit each).  Values
    # outside the window (more than 9 scales from the mean, or beyond the widest window,
    # W = 256) escape at 12 bits more than the NLL: rare by construction.
    outside = abs(lower + value_offset - mean) > 9 * np.exp(log_scale) or log_scale > np.log(256 / 9)
    assert coded <= 1.02 * nll + 256 * 0.05 + 64 or outside, (coded, nll)


def test_edge_bin_masses_cover_the_tails_and_sum_to_one():
    values = torch.arange(0, 256, dtype=torch.float64)
    for mean, log_scale in ((0.3, -2.0), (-10.0, 1.0), (250.0, 3.0), (128.0, 5.0)):
        mass = bin_probability_q24(TABLES, values, torch.full_like(values, mean),
                                   TABLES.inverse_scale(torch.full_like(values, log_scale)),
                                   torch.zeros_like(values), torch.full_like(values, 255.0))[0]
        # Telescoping CDF differences: exactly 2**24, up to the floor of 1 for empty bins.
        empty = int((mass == 1.0).sum())
        assert CDF_ONE <= float(mass.sum()) <= CDF_ONE + empty


def test_exact_gradient_follows_the_float_path():
    """The replayable backward (integer tables) points where the smooth float one does."""
    rng = np.random.default_rng(3)
    n = 4000
    value = torch.from_numpy(rng.choice([0.0, 255.0, 7.0, 250.0], n))
    mean = torch.from_numpy(rng.uniform(-20, 275, n)).requires_grad_()
    log_scale = torch.from_numpy(np.round(rng.uniform(-2, 4, n) * 256) / 256).requires_grad_()
    lower, upper = torch.zeros(n, dtype=torch.float64), torch.full((n,), 255.0, dtype=torch.float64)
    nll_bits(value, mean, log_scale, TABLES, lower, upper).sum().backward()
    exact = torch.cat([mean.grad, log_scale.grad])
    mean32 = mean.detach().float().requires_grad_()
    log_scale32 = log_scale.detach().float().requires_grad_()
    nll_bits(value.float(), mean32, log_scale32, TABLES, lower.float(), upper.float()).sum().backward()
    smooth = torch.cat([mean32.grad, log_scale32.grad]).double() * np.log(2.0)  # float path is in bits
    cosine = float(torch.dot(exact, smooth) / (exact.norm() * smooth.norm()))
    assert cosine > 0.99, cosine


def test_a_value_outside_its_range_is_refused():
    values = torch.tensor([[300.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="bounds"):
        push_factors(Encoder(), TABLES, [(values, values, torch.zeros_like(values),
                                          torch.zeros_like(values), torch.full_like(values, 255.0))])


def test_adaptation_replays_exactly_with_edge_bins():
    bundle = FlowBundle(name="tiny-v4-untrained", sha256="", config=TINY_V4, networks=_networks())
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=2e-3)
    encoder, decoder = OnlineAdapter(bundle, config), OnlineAdapter(bundle, config)
    batches = [_saturated(4, c, 14, 10, seed).to(torch.uint8).numpy() for seed, c in enumerate((3, 1, 3, 1))]
    coded = [encoder.encode(batch)[0] for batch in batches]
    for data, batch in zip(coded, batches):
        assert np.array_equal(decoder.decode(data, batch.shape), batch)


def test_edge_bins_save_bits_and_code_within_one_percent_of_the_nll():
    """v3's trained weights with the flag switched on, on real crops and a saturated version."""
    pixels = np.asarray(Image.open(EXAMPLES / "0000.png").convert("RGB"))[:56, :56]
    tiles = pixels.reshape(2, 28, 2, 28, 3).transpose(0, 2, 4, 1, 3).reshape(4, 3, 28, 28)
    real = torch.from_numpy(np.ascontiguousarray(tiles)).to(torch.float64)
    harsh = torch.clamp((real - 96.0) * 3.0, 0, 255)  # a third of the pixels on a bound
    for batch in (real, harsh):
        without = load_model("idf-sublattice-v3").network(3)
        with_edges = copy.deepcopy(without)
        with_edges.edge_bins = True
        coded_bits = 8 * len(model_round_trip(with_edges, batch))
        with torch.no_grad():
            nll, nll_without = float(with_edges.nll(batch)), float(without.nll(batch))
        assert coded_bits <= 1.01 * nll + 64, (coded_bits, nll)
        if batch is real:
            # (Not on the harsh batch: the symbols ANS writes last, here a run of bins at a
            # bound whose folded rows start at 0, are free while its state is still empty.)
            assert coded_bits >= 0.99 * nll - 64, (coded_bits, nll)
        assert nll <= nll_without
    assert nll < 0.9 * nll_without  # the saturated batch: edge bins are worth much there


def test_corrupt_data_never_decodes_outside_the_range():
    assert_damage_stays_in_range(_networks()[1], _saturated(2, 1, 12, 12))


@pytest.mark.parametrize("channels", [1, 3])
def test_the_shipped_v4_codes_within_one_percent_of_its_nll(channels):
    pixels = np.asarray(Image.open(EXAMPLES / "0003.png").convert("RGB" if channels == 3 else "L"))[:64, :64]
    pixels = pixels.reshape(64, 64, channels)
    tiles = pixels.reshape(2, 32, 2, 32, channels).transpose(0, 2, 4, 1, 3).reshape(4, channels, 32, 32)
    batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(torch.float64)
    network = load_model("idf-sublattice-v4").network(channels)
    assert network.edge_bins
    coded_bits = 8 * len(model_round_trip(network, batch))
    with torch.no_grad():
        nll = float(network.nll(batch))
    assert abs(coded_bits - nll) <= 0.01 * nll + 64, (coded_bits, nll)
