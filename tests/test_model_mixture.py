"""v6's logistic mixtures: each sub-lattice factor is a mixture of K discretized logistics.

Checked on untrained tiny networks whose extra components are made to differ:
exact round trips (saturated images, odd shapes, both channel counts), the
mixture coder's bits against the exact NLL on random mixtures (escapes
included), the exact NLL's gradient against the float path's, a
single-logistic checkpoint warm-starting the mixture at its own likelihood,
and adaptation replayed by a decoder.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_damage_stays_in_range, model_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model_edge_bins import _saturated  # mostly 0 and 255, where edge bins and tails matter

from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.coding.ans import Decoder, Encoder
from osoa_zip.coding.mixture_coder import pop_mixture_factor, push_mixture_factors
from osoa_zip.exact.logistic import LogisticTables, mixture_nll_bits
from osoa_zip.models.registry import FlowBundle, build_networks
from osoa_zip.models.training import spread_mixture, warm_start

TINY_V4 = {"hidden": 8, "depth": 2, "levels": 2, "channel_coupling": True, "mean_remainder": True,
           "deep_levels": True, "edge_bins": True}
TINY_V6 = {**TINY_V4, "mixture_components": 3}
TABLES = LogisticTables.from_tensors(LogisticTables.build(mixture=True))



def _networks(config: dict = TINY_V6, seed: int = 0) -> dict:
    """Untrained networks with small outputs and, for mixtures, components that differ."""
    torch.manual_seed(seed)
    networks = build_networks(config)
    with torch.no_grad():
        for network in networks.values():
            for level in network.levels:
                for net in (level.edges, level.centres):
                    net.convs[-1].weight.mul_(0.05)
                    net.convs[-1].bias.uniform_(-1.0, 1.0)
            network.to(torch.float64)
            network.tables = TABLES
    return networks


def _warm_started(ancestor, config: dict, channels: int):
    """A mixture network of ``config`` warm-started from a single-logistic ``ancestor``; (it, widened keys)."""
    mixture = build_networks(config)[channels]
    widened = warm_start(mixture, ancestor.state_dict())
    mixture.to(torch.float64)
    mixture.tables = TABLES
    return mixture, widened


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (28, 28), (13, 30)])
@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_flow_round_trips_exactly(shape, channels):
    model_round_trip(_networks()[channels], _saturated(3, channels, *shape))


def test_a_mixture_needs_edge_bins():
    with pytest.raises(ValueError, match="edge_bins"):
        build_networks({**TINY_V6, "edge_bins": False})


def _random_mixture(rng, n: int, k: int, lower: float):
    means = torch.from_numpy(np.round(rng.uniform(lower - 40, lower + 295, (k, n)) * 256) / 256)
    log_scales = torch.from_numpy(np.round(rng.uniform(-2.0, 5.0, (k, n)) * 256) / 256)
    logits = torch.from_numpy(np.round(rng.uniform(-6.0, 6.0, (k, n)) * 256) / 256)
    bounds = torch.full((n,), lower, dtype=torch.float64), torch.full((n,), lower + 255.0, dtype=torch.float64)
    return means, log_scales, logits, bounds


def _samples(rng, means, log_scales, logits, lower: float, uniform: int) -> torch.Tensor:
    """Values drawn from the mixtures, clipped to the range; the first ``uniform`` drawn uniformly."""
    k, n = means.shape
    weights = torch.softmax(logits, dim=0).numpy()
    pick = (rng.uniform(size=n)[None, :] > np.cumsum(weights, axis=0)).sum(axis=0).clip(max=k - 1)
    centre = means.numpy()[pick, np.arange(n)]
    scale = np.exp(log_scales.numpy()[pick, np.arange(n)])
    u = rng.uniform(1e-6, 1 - 1e-6, n)
    values = np.clip(np.round(centre + scale * np.log(u / (1 - u))), lower, lower + 255)
    values[:uniform] = rng.integers(lower, lower + 256, uniform)
    return torch.from_numpy(values)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 4), st.integers(-255, 0))
def test_mixture_coder_round_trips_and_codes_within_one_percent_of_the_nll(seed, components, lower):
    """Values drawn from the mixtures themselves, and some uniform ones (escapes, edges)."""
    rng = np.random.default_rng(seed)
    n = 3000
    means, log_scales, logits, (low, high) = _random_mixture(rng, n, components, float(lower))
    values = _samples(rng, means, log_scales, logits, lower, uniform=100)
    encoder = Encoder()
    push_mixture_factors(encoder, TABLES, [(values, means, log_scales, logits, low, high)])
    data = encoder.finish()
    decoder = Decoder(data)
    assert torch.equal(pop_mixture_factor(decoder, TABLES, means, log_scales, logits, low, high), values)
    decoder.check_finished()
    with torch.no_grad():
        nll = float(mixture_nll_bits(values, means, log_scales, logits, TABLES, low, high).sum())
    coded = 8 * len(data)
    # Snapped means and scales (<1e-3 bit each), the floor of every count, 32 bits of ANS state.
    assert abs(coded - nll) <= 0.01 * nll + 64, (coded, nll)


def test_a_value_outside_its_range_is_refused():
    rng = np.random.default_rng(0)
    means, log_scales, logits, (low, high) = _random_mixture(rng, 4, 2, 0.0)
    with pytest.raises(ValueError, match="bounds"):
        push_mixture_factors(Encoder(), TABLES, [(torch.tensor([0.0, 1.0, 2.0, 256.0], dtype=torch.float64),
                                                  means, log_scales, logits, low, high)])


def test_exact_mixture_gradient_follows_the_float_path():
    rng = np.random.default_rng(5)
    n = 4000
    means, log_scales, logits, (low, high) = _random_mixture(rng, n, 3, 0.0)
    value = _samples(rng, means, log_scales, logits, 0, uniform=n // 10)
    leaves = [t.clone().requires_grad_() for t in (means, log_scales, logits)]
    mixture_nll_bits(value, *leaves, TABLES, low, high).sum().backward()
    floats = [t.detach().float().requires_grad_() for t in (means, log_scales, logits)]
    mixture_nll_bits(value.float(), *floats, TABLES, low.float(), high.float()).sum().backward()
    for exact, smooth in zip(leaves, floats):
        a, b = exact.grad.reshape(-1), smooth.grad.double().reshape(-1) * np.log(2.0)  # float path: bits
        cosine = float(torch.dot(a, b) / (a.norm() * b.norm()))
        assert cosine > 0.99, cosine


def test_one_component_mixture_is_the_single_logistic():
    """Same NLL bits and the same gradient as nll_bits when K = 1."""
    from osoa_zip.exact.logistic import nll_bits
    rng = np.random.default_rng(2)
    n = 2000
    means, log_scales, logits, (low, high) = _random_mixture(rng, n, 1, -40.0)
    value = torch.from_numpy(rng.integers(-40, 216, n).astype(np.float64))
    single = [t.clone().requires_grad_() for t in (means[0], log_scales[0])]
    mixed = [t.clone().requires_grad_() for t in (means, log_scales)]
    a = nll_bits(value, *single, TABLES, low, high)
    b = mixture_nll_bits(value, *mixed, logits * 0, TABLES, low, high)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(single[0].grad, mixed[0].grad[0]) and torch.equal(single[1].grad, mixed[1].grad[0])


@pytest.mark.parametrize("channels", [1, 3])
def test_a_single_logistic_checkpoint_warm_starts_the_mixture_at_its_likelihood(channels):
    ancestor = _networks(TINY_V4)[channels]
    mixture, widened = _warm_started(ancestor, TINY_V6, channels)
    pixels = _saturated(2, channels, 16, 12, seed=4)
    with torch.no_grad():
        assert float(mixture.nll(pixels)) == pytest.approx(float(ancestor.nll(pixels)), abs=1e-6)
        assert spread_mixture(mixture, widened) == 2 * len(mixture.levels)
        assert float(mixture.nll(pixels)) != pytest.approx(float(ancestor.nll(pixels)), abs=1e-3)
    model_round_trip(mixture, pixels)


def _replayed(bundle, batches) -> OnlineAdapter:
    """Encode the batches adapting (2 steps each), decode them with a second adapter: the same
    pixels and, after the last batch, bit for bit the same weights.  Returns the encoder."""
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=2e-3, steps_per_batch=2)
    encoder, decoder = OnlineAdapter(bundle, config), OnlineAdapter(bundle, config)
    batches = [batch.to(torch.uint8).numpy() for batch in batches]
    coded = [encoder.encode(batch)[0] for batch in batches]
    for data, batch in zip(coded, batches):
        assert np.array_equal(decoder.decode(data, batch.shape), batch)
    for channels in (1, 3):
        ours, theirs = encoder.adapted_network(channels).state_dict(), decoder.adapted_network(channels).state_dict()
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    return encoder


def test_adaptation_replays_exactly_with_mixtures():
    bundle = FlowBundle(name="tiny-v6-untrained", sha256="", config=TINY_V6, networks=_networks())
    encoder = _replayed(bundle, [_saturated(4, c, 14, 10, seed) for seed, c in enumerate((3, 1, 3, 1))])
    for channels in (1, 3):
        ours, start = encoder.adapted_network(channels).state_dict(), bundle.network(channels).state_dict()
        assert any(not torch.equal(ours[name], start[name]) for name in ours)  # and they did adapt


def test_corrupt_data_never_decodes_outside_the_range():
    assert_damage_stays_in_range(_networks()[1], _saturated(2, 1, 12, 12))


# -- the VAE's mixture likelihood ---------------------------------------------------------

TINY_VAE = {"family": "vae", "hidden": 8, "latent_channels": 4}
TINY_VAE_MIXTURE = {**TINY_VAE, "mixture_components": 3}


def _vaes(config: dict = TINY_VAE_MIXTURE) -> dict:
    torch.manual_seed(1)
    networks = build_networks(config)
    with torch.no_grad():
        for network in networks.values():
            network.generative[-1].bias[3 * network.channels:].uniform_(-1.0, 1.0)
            network.to(torch.float64)
            network.tables = TABLES
    return networks


def test_vae_with_a_mixture_likelihood_round_trips_and_adapts_exactly():
    bundle = FlowBundle(name="tiny-vae-mixture-untrained", sha256="", config=TINY_VAE_MIXTURE, networks=_vaes())
    _replayed(bundle, [_saturated(4, c, h, w, seed)
                       for seed, (c, h, w) in enumerate(((3, 16, 16), (1, 14, 10), (3, 6, 10), (1, 2, 2)))])


@pytest.mark.parametrize("channels", [1, 3])
def test_a_single_logistic_vae_warm_starts_the_mixture_and_edge_bins_help(channels):
    """With zero extra rows the mixture VAE is the single one plus edge bins: never more bits."""
    ancestor = _vaes(TINY_VAE)[channels]
    mixture, widened = _warm_started(ancestor, TINY_VAE_MIXTURE, channels)
    pixels = _saturated(4, channels, 16, 16, seed=7)
    with torch.no_grad():
        single, mixed = float(ancestor.nll(pixels)), float(mixture.nll(pixels))
    assert mixed < single  # the saturated pixels' tails now go to the edge bins
    assert spread_mixture(mixture, widened) == 1


# -- the shipped mixture models ------------------------------------------------------------

def _example_tiles(channels: int, side: int = 32, images: int = 1) -> torch.Tensor:
    """side x side tiles of the first 64 x 64 of examples 0003.png, 0004.png, ... (RGB or grey)."""
    from conftest import EXAMPLES
    from PIL import Image
    count, tiles = 64 // side, []
    for index in range(3, 3 + images):
        pixels = np.asarray(Image.open(EXAMPLES / f"000{index}.png").convert("RGB" if channels == 3 else "L"))
        pixels = pixels[:64, :64].reshape(64, 64, channels)
        cut = pixels.reshape(count, side, count, side, channels).transpose(0, 2, 4, 1, 3)
        tiles.append(cut.reshape(count * count, channels, side, side))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(tiles))).to(torch.float64)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_shipped_v6_codes_within_one_percent_of_its_nll(channels):
    from osoa_zip.models.registry import load_model
    network = load_model("idf-sublattice-v6").network(channels)
    assert network.components == 3 and network.edge_bins
    batch = _example_tiles(channels)
    coded_bits = 8 * len(model_round_trip(network, batch))
    with torch.no_grad():
        nll = float(network.nll(batch))
    assert abs(coded_bits - nll) <= 0.01 * nll + 64, (coded_bits, nll)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_shipped_vae_v2_codes_its_elbo_plus_the_initial_bits(channels):
    """Bits written: the negative ELBO (one sample) plus the initial bits, within 1% (the issue's bound)."""
    from osoa_zip.coding.bitsback import StackCoder
    from osoa_zip.exact.logistic import nll_bits
    from osoa_zip.models.registry import load_model
    network = load_model("vae-conv-v2").network(channels)
    assert network.components == 3
    tiles = _example_tiles(channels, side=16, images=3)
    bits = elbo = initial = 0.0
    for batch in tiles.split(16):  # one sample per tile: the ELBO is noisy on few tiles
        coder = StackCoder()
        network.encode(batch, coder)
        data = coder.finish()
        assert torch.equal(network.decode(StackCoder(data), batch.shape), batch)
        bits += 8 * len(data)
        with torch.no_grad():
            elbo += float(network.nll(batch))
            mean, log_scale = network.posterior(batch[-1:])
            z = network._sample(mean, log_scale, batch[-1:])
            initial += float(nll_bits(z, mean, log_scale, network.tables).sum())
    # Within 1% of the ELBO, plus at most the initial bits (the first-coded tile takes the
    # posterior's mode, which costs a little less than the sampled estimate says).
    assert 0.99 * elbo <= bits <= 1.01 * (elbo + initial), (bits, elbo, initial)
