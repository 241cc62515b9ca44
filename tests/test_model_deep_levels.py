"""v3's deep levels: sub-lattice levels go on down to 1 x 1, odd sides repeating their last row/column.

Checked here on untrained tiny networks (no checkpoint): exact round trips on
odd and degenerate shapes, with adaptation replayed over several batches, and
the classic level plan (v1, v2) left exactly as it was.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import model_round_trip

from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.coding.ans import Encoder
from osoa_zip.exact.logistic import LogisticTables
from osoa_zip.models.idf import level_count, level_sizes
from osoa_zip.models.registry import FlowBundle, build_networks

TINY_V3 = {"hidden": 8, "depth": 2, "levels": 2, "channel_coupling": True, "mean_remainder": True,
           "deep_levels": True}



def _networks(config: dict = TINY_V3) -> dict:
    torch.manual_seed(0)
    networks = build_networks(config)
    tables = LogisticTables.from_tensors(LogisticTables.build())
    with torch.no_grad():
        for network in networks.values():
            for level in network.levels:
                for net in (level.edges, level.centres):
                    net.convs[-1].weight.mul_(0.05)  # plausible: latents stay inside the coding windows
            network.to(torch.float64)
            network.tables = tables
    return networks


def _smooth(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    base = 100 + 40 * np.sin(y / 3.0) + 30 * np.cos(x / 4.0)
    noise = generator.integers(-6, 7, (batch, channels, height, width))
    return torch.from_numpy(np.clip(np.round(base) + noise, 0, 255)).to(torch.float64)


def test_level_sizes_classic_is_the_old_plan():
    for height, width in [(64, 64), (28, 28), (32, 30), (6, 8), (2, 2), (128, 64)]:
        levels = level_count(height, width)
        assert level_sizes(height, width) == [(height >> k, width >> k) for k in range(levels + 1)]


def test_level_sizes_deep_go_down_to_one_pixel():
    assert level_sizes(28, 28, deep=True) == [(28, 28), (14, 14), (7, 7), (4, 4), (2, 2), (1, 1)]
    assert level_sizes(1, 5, deep=True) == [(1, 5), (1, 3), (1, 2), (1, 1)]
    assert level_sizes(1, 1, deep=True) == [(1, 1)]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (7, 7), (28, 28), (13, 30)])
@pytest.mark.parametrize("channels", [1, 3])
def test_deep_levels_round_trip_exactly(shape, channels):
    model_round_trip(_networks()[channels], _smooth(3, channels, *shape))


def test_coded_bits_match_the_nll_with_deep_levels():
    """v2's trained weights with deep levels switched on, on real 28 x 28 crops: within 1%."""
    import copy

    from conftest import EXAMPLES
    from PIL import Image

    from osoa_zip.models.registry import load_model
    network = copy.deepcopy(load_model("idf-sublattice-v2").network(3))
    network.deep_levels = True
    pixels = np.asarray(Image.open(EXAMPLES / "0000.png").convert("RGB"))[:56, :56]
    tiles = pixels.reshape(2, 28, 2, 28, 3).transpose(0, 2, 4, 1, 3).reshape(4, 3, 28, 28)
    batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(torch.float64)
    encoder = Encoder()
    network.encode(batch, encoder)
    coded_bits = 8 * len(encoder.finish())
    with torch.no_grad():
        nll = float(network.nll(batch))
    assert abs(coded_bits - nll) <= 0.01 * nll + 64, (coded_bits, nll)


def test_deep_levels_code_the_final_prior_once_per_image():
    """With deep levels the final prior codes one pixel per channel; classic, a 7 x 7 block (28 x 28)."""
    pixels = _smooth(2, 1, 28, 28)
    for config, final in ((TINY_V3, (1, 1)), ({**TINY_V3, "deep_levels": False}, (7, 7))):
        _, factors = _networks(config)[1].analyse(pixels, with_loss=False)
        assert tuple(factors[0][0].shape[2:]) == final


def test_adaptation_replays_exactly_with_deep_levels():
    networks = _networks()
    bundle = FlowBundle(name="tiny-v3-untrained", sha256="", config=TINY_V3, networks=networks)
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=2e-3)
    encoder, decoder = OnlineAdapter(bundle, config), OnlineAdapter(bundle, config)
    batches = [_smooth(4, 3, 14, 10, seed).to(torch.uint8).numpy() for seed in range(4)]
    coded = [encoder.encode(batch)[0] for batch in batches]
    for data, batch in zip(coded, batches):
        assert np.array_equal(decoder.decode(data, batch.shape), batch)
