"""A flow's parts (SubLatticeFlow.parts): pieces of a batch that another process can take.

The parts of a partition must give the whole pass's factors, loss gradients and decoded
pixels bit for bit; each part's gradients reach only its own parameters
(``part_parameters``); and a decoder resumed at another decoder's position pops what that
one left (benchmarks/level_split.py runs the parts in two processes).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from osoa_zip.adapt.engine import _select_parameters
from osoa_zip.coding.ans import Decoder, Encoder
from osoa_zip.models.idf import FINAL
from osoa_zip.models.registry import DEFAULT_MODEL, load_model


@pytest.fixture(scope="module")
def bundle():
    return load_model(DEFAULT_MODEL)


def _tiles(channels: int, count: int, height: int, width: int) -> torch.Tensor:
    """Real photo tiles from examples/images (64 x 64 crops), as a B x C x H x W float64 batch."""
    tiles = []
    for path in sorted(EXAMPLES.glob("*.png")):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB" if channels == 3 else "L"))
        pixels = pixels.reshape(*pixels.shape[:2], channels)
        tiles += [pixels[y:y + height, x:x + width] for y, x in ((0, 0), (64 - height, 64 - width))]
    tiles = tiles[:count]
    return torch.from_numpy(np.stack(tiles).transpose(0, 3, 1, 2).copy()).to(torch.float64)


def _adapting(bundle, channels: int) -> torch.nn.Module:
    network = copy.deepcopy(bundle.network(channels))
    _select_parameters(network, "all")
    return network


def _gradients(network, loss) -> dict[str, torch.Tensor]:
    network.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in network.named_parameters() if p.grad is not None}


SHAPES = [(3, 32, 32), (1, 32, 32), (3, 17, 30), (1, 9, 6)]


@pytest.mark.parametrize("channels,height,width", SHAPES)
def test_the_parts_give_the_whole_pass_factors_and_gradients(bundle, channels, height, width):
    network = _adapting(bundle, channels)
    pixels = _tiles(channels, 5, height, width)
    loss, factors = network.analyse(pixels)
    whole = _gradients(network, loss)
    parts = network.parts(height, width)
    assert len(parts) == 2 and FINAL in parts[0] and parts[1] == {0} and not parts[0] & parts[1]
    part_factors, part_terms, gradients = [], [], {}
    for part in parts:
        terms, some = network.analyse_part(pixels, part)
        part_factors += some
        part_terms += terms
        part_loss = torch.stack(terms).sum()
        owned = network.part_parameters(part)
        for name, gradient in _gradients(network, part_loss).items():
            assert name in owned, f"{name} is not {sorted(part, key=str)}'s"
            assert name not in gradients, f"{name} has gradients from two parts"
            gradients[name] = gradient
    assert len(part_factors) == len(factors)
    for mine, theirs in zip(part_factors, factors):
        assert len(mine) == len(theirs) and all(torch.equal(a, b) for a, b in zip(mine, theirs))
    assert gradients.keys() == whole.keys()
    assert all(torch.equal(gradients[name], whole[name]) for name in whole)
    assert torch.equal(torch.stack(part_terms).sum(), loss)  # the guard's bit count, bit for bit


@pytest.mark.parametrize("channels,height,width", SHAPES[:3])
def test_the_parts_decode_the_batch_from_one_stream_in_turn(bundle, channels, height, width):
    network = _adapting(bundle, channels)
    pixels = _tiles(channels, 4, height, width)
    loss, factors = network.analyse(pixels)
    encoder = Encoder()
    network.push(factors, encoder)
    stream = encoder.finish()
    whole_decoder = Decoder(stream)
    decoded, whole_loss = network.decode_with_loss(whole_decoder, pixels.shape)
    whole = _gradients(network, whole_loss)
    coarse_part, fine_part = network.parts(height, width)
    first = Decoder(stream)
    coarse, coarse_loss = network.decode_part(first, pixels.shape, coarse_part)
    second = Decoder(stream)  # as another process would: the same bytes, resumed where the first stopped
    second.resume(first.position())
    restored, fine_loss = network.decode_part(second, pixels.shape, fine_part, coarse)
    second.check_finished()
    assert torch.equal(restored, pixels) and torch.equal(decoded, pixels)
    gradients = {**_gradients(network, coarse_loss), **_gradients(network, fine_loss)}
    assert gradients.keys() == whole.keys()
    assert all(torch.equal(gradients[name], whole[name]) for name in whole)


def test_a_stream_resumed_elsewhere_pops_the_rest_and_not_more(bundle):
    network = bundle.network(3)
    pixels = _tiles(3, 2, 32, 32)
    encoder = Encoder()
    network.push(network.analyse(pixels, with_loss=False)[1], encoder)
    stream = encoder.finish()
    first = Decoder(stream)
    coarse_part, fine_part = network.parts(32, 32)
    with torch.no_grad():
        coarse, _ = network.decode_part(first, pixels.shape, coarse_part, with_loss=False)
    fresh = Decoder(stream)
    assert fresh.position() != first.position()
    fresh.resume(first.position())
    assert fresh.position() == first.position()
    with torch.no_grad():
        restored, loss = network.decode_part(fresh, pixels.shape, fine_part, coarse, with_loss=False)
    assert loss is None and torch.equal(restored, pixels)
    fresh.check_finished()


def test_no_parameter_serves_both_parts_whatever_the_tile_size(bundle):
    network = bundle.network(3)
    coarse, fine = set(), set()
    for height, width in ((32, 32), (17, 30), (9, 6), (2, 2), (1, 1)):
        first, second = network.parts(height, width)
        coarse |= network.part_parameters(first)
        fine |= network.part_parameters(second)
    assert fine and coarse and not fine & coarse
    assert coarse | fine == {name for name, _ in network.named_parameters()}
    assert network.parts(1, 1) == [frozenset({FINAL}), frozenset()]  # no level: the prior alone
    assert network.parts(2, 2) == [frozenset({FINAL}), frozenset({0})]


def test_one_part_where_one_predictor_serves_every_level(bundle):
    network = bundle.network(3)
    single = copy.deepcopy(network)
    single.levels = single.levels[:1]                         # one predictor serves every level
    (part,) = single.parts(32, 32)
    assert single.part_parameters(part) == {name for name, _ in single.named_parameters()}
