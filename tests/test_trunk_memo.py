"""A frozen trunk's activations, reused between passes over one batch (exact/trunk.py).

* on one stack: a later pass whose trunk convs have the recorded integers, on
  the recorded input, skips them and gives the very integers (output and
  gradients) of a pass that runs every conv; a changed trunk weight skips only
  the convs below it, a changed first conv, another input or an input changed
  in place since is a miss with the exact result, a weight change below the
  integer grid is still a hit, and a pass that wants a trunk conv's gradient
  runs that conv;
* the memo is only the active one inside ``active()`` and only on its thread;
* through OnlineAdapter on idf-tiny-test-e2, adapting "last" with the guard
  firing both ways (FLAG_PRETRAINED batches and adapted ones) and two steps
  per batch: the encoder and the decoder reuse trunks, and the archive's bytes,
  the decoded pixels and the adapted weights are those of a run without the memo.
"""
from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.engine import FLAG_PRETRAINED, OnlineAdapter
from osoa_zip.exact import intlayers, trunk
from osoa_zip.exact.grid import CONTEXT_EXPONENT
from osoa_zip.exact.intlayers import ENGINE2_LAYOUT, IntegerConvStack
from osoa_zip.exact.trunk import TrunkMemo, active_trunk_memo
from osoa_zip.models.registry import load_model

MODEL = "idf-tiny-test-e2"


def _stack(seed: int = 0, widths=(3, 24, 24, 10)) -> IntegerConvStack:
    """A v7-shaped engine-2 stack (two-limb first weights and last input), clamps forced by clip_bits."""
    generator = torch.Generator().manual_seed(seed)
    weights = [(torch.randn(b, a, 3, 3, generator=generator, dtype=torch.float64) * (2 / (9 * a)) ** 0.5,
                torch.randn(b, generator=generator, dtype=torch.float64) * 0.1) for a, b in zip(widths, widths[1:])]
    sample = torch.randint(-128, 128, (2, widths[0], 6, 6), generator=generator).double() / 64
    return IntegerConvStack.from_float(weights, sample, CONTEXT_EXPONENT, clip_bits=1, **ENGINE2_LAYOUT)


def _context(seed: int, channels: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (3, channels, 7, 6), generator=generator).double() * 2.0 ** CONTEXT_EXPONENT


def _adapted(stack: IntegerConvStack, seed: int = 1) -> IntegerConvStack:
    """A copy whose last conv has other weights and alone takes gradients (the selection "last")."""
    other = copy.deepcopy(stack)
    for parameter in other.parameters():
        parameter.requires_grad_(False)
    last = other.convs[-1]
    with torch.no_grad():
        last.weight.add_(torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(seed),
                                     dtype=torch.float64) * last.weight.abs().max() * 0.3)
    last.weight.requires_grad_(True)
    last.bias.requires_grad_(True)
    return other


def _step(stack: IntegerConvStack, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """(the output, the gradients of a fixed loss for the parameters that take them)."""
    for parameter in stack.parameters():
        parameter.grad = None
    output = stack(x)
    weights = torch.linspace(-1, 1, output.numel(), dtype=torch.float64).view(output.shape)
    (output * weights).sum().backward()
    return output.detach(), [None if p.grad is None else p.grad.clone() for p in stack.parameters()]


def _frozen(stack: IntegerConvStack, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return stack(x)


def test_a_later_pass_skips_the_recorded_trunk_and_gives_the_same_integers():
    frozen, x = _stack(), _context(0)
    adapted = _adapted(frozen)
    expected_frozen, (expected_output, expected_grads) = _frozen(frozen, x), _step(adapted, x)
    memo = TrunkMemo()
    with memo.active():
        assert torch.equal(_frozen(frozen, x), expected_frozen)  # θ0's pass records the trunk
        assert (memo.hits, memo.misses) == (0, 1)
        output, grads = _step(adapted, x)  # the adapted pass with gradients resumes at the last conv
        assert (memo.hits, memo.skipped_convs) == (1, 2)
        assert torch.equal(_frozen(frozen, x), expected_frozen)  # and θ0 again, from either's record
        assert (memo.hits, memo.skipped_convs, memo.misses) == (2, 4, 1)
    assert torch.equal(output, expected_output)
    assert all(torch.equal(a, b) if b is not None else a is None for a, b in zip(grads, expected_grads))
    assert grads[-1] is not None and grads[0] is None


def test_the_adapted_pass_may_record_and_a_frozen_pass_resume():
    """The encoder's order: the adapted pass (with gradients) first, θ0's guard pass second."""
    frozen, x = _stack(2), _context(3)
    adapted = _adapted(frozen)
    expected = _frozen(frozen, x)
    expected_output, expected_grads = _step(adapted, x)
    memo = TrunkMemo()
    with memo.active():
        output = adapted(x)
        assert torch.equal(_frozen(frozen, x), expected)
        weights = torch.linspace(-1, 1, output.numel(), dtype=torch.float64).view(output.shape)
        for parameter in adapted.parameters():
            parameter.grad = None
        (output * weights).sum().backward()  # the recording pass's backward is untouched by the reuse
    assert (memo.hits, memo.skipped_convs, memo.misses) == (1, 2, 1)
    assert torch.equal(output.detach(), expected_output)
    assert all(torch.equal(p.grad, g) for p, g in zip(adapted.parameters(), expected_grads) if g is not None)


@pytest.mark.parametrize("changed, skipped", [(0, 0), (1, 1)])
def test_a_changed_trunk_weight_runs_that_conv_and_those_above(changed, skipped):
    frozen, x = _stack(4), _context(5)
    other = copy.deepcopy(frozen)
    conv = other.convs[changed]
    with torch.no_grad():
        conv.weight.mul_(0.75)
    expected = _frozen(other, x)
    assert not torch.equal(expected, _frozen(frozen, x))
    memo = TrunkMemo()
    with memo.active():
        _frozen(frozen, x)
        output = _frozen(other, x)
    assert torch.equal(output, expected)
    assert memo.skipped_convs == skipped and memo.hits == (1 if skipped else 0)
    assert memo.misses == (2 if not skipped else 1)  # a miss runs every conv and is recorded in turn


def test_a_weight_change_below_the_integer_grid_is_still_a_hit():
    """What is compared is the integers a conv computes with, not the float master weights."""
    frozen, x = _stack(6), _context(7)
    other = copy.deepcopy(frozen)
    with torch.no_grad():
        other.convs[1].weight[0, 0, 1, 1] += 2.0 ** int(other.convs[1].weight_exponents[0]) * 0.01
    assert not torch.equal(other.convs[1].weight, frozen.convs[1].weight)
    memo = TrunkMemo()
    with memo.active():
        _frozen(frozen, x)
        output = _frozen(other, x)
    assert memo.skipped_convs == 2
    with torch.no_grad():
        assert torch.equal(output, other(x))


def test_another_input_or_one_changed_in_place_is_a_miss_with_the_exact_result():
    frozen, x, y = _stack(8), _context(9), _context(10)
    adapted = _adapted(frozen)
    expected_y, expected_x = _frozen(adapted, y), _frozen(adapted, -x)
    memo = TrunkMemo()
    with memo.active():
        _frozen(frozen, x)
        assert torch.equal(_frozen(adapted, y), expected_y)
        assert (memo.hits, memo.misses) == (0, 2)
        x.mul_(-1)  # the recorded tensor itself, changed since: compared with itself it would match
        assert torch.equal(_frozen(adapted, x), expected_x)
    assert memo.hits == 0


def test_a_pass_that_wants_trunk_gradients_runs_the_trunk():
    frozen, x = _stack(11), _context(12)
    trained = copy.deepcopy(frozen)  # every parameter takes gradients (the selection "all")
    expected_output, expected_grads = _step(trained, x)
    memo = TrunkMemo()
    with memo.active():
        _frozen(frozen, x)
        output, grads = _step(trained, x)
    assert memo.hits == 0
    assert torch.equal(output, expected_output)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads))


def test_a_memo_is_active_only_inside_and_only_on_its_thread():
    frozen, x = _stack(13), _context(14)
    memo, seen = TrunkMemo(), []
    _frozen(frozen, x)
    assert memo.misses == 0 and active_trunk_memo() is None
    with memo.active():
        worker = threading.Thread(target=lambda: seen.append((active_trunk_memo(), _frozen(frozen, x))))
        worker.start()
        worker.join()
        inner = TrunkMemo()
        with inner.active():
            _frozen(frozen, x)
        assert active_trunk_memo() is memo
    assert active_trunk_memo() is None
    assert seen[0][0] is None and memo.misses == 0 and inner.misses == 1


# -- through the adapter --------------------------------------------------------------------------

def _tiles(mode: str) -> np.ndarray:
    """16 x 16 tiles of the six 64 x 64 examples, in ``mode``."""
    tiles = []
    for index in range(6):
        with Image.open(EXAMPLES / f"000{index}.png") as image:
            pixels = np.asarray(image.convert(mode))
        pixels = pixels.reshape(64, 64, -1)
        channels = pixels.shape[2]
        tiles.append(pixels.reshape(4, 16, 4, 16, channels).transpose(0, 2, 4, 1, 3).reshape(16, channels, 16, 16))
    return np.ascontiguousarray(np.concatenate(tiles))


@contextmanager
def _counted_memos():
    """Every TrunkMemo made inside, to read their counts."""
    made, original = [], TrunkMemo.__init__

    def init(self):
        original(self)
        made.append(self)
    with mock.patch.object(trunk.TrunkMemo, "__init__", init):
        yield made


def _without_memo():
    return mock.patch.object(intlayers, "active_trunk_memo", lambda: None)


def _code(batches: list[np.ndarray], config: AdaptationConfig) -> tuple[list[bytes], OnlineAdapter]:
    adapter = OnlineAdapter(load_model(MODEL), config)
    return [adapter.encode(batch)[0] for batch in batches], adapter


def _decode(payloads: list[bytes], batches: list[np.ndarray], config: AdaptationConfig) -> OnlineAdapter:
    adapter = OnlineAdapter(load_model(MODEL), config)
    for payload, batch in zip(payloads, batches):
        assert np.array_equal(adapter.decode(payload, batch.shape), batch)
    return adapter


@pytest.mark.parametrize("mode, steps", [("L", 1), ("RGB", 2)])
def test_adapter_round_trips_reuse_trunks_and_write_the_same_bytes(mode, steps):
    """Adapting "last" at a rate that makes θ0 win some comparisons and lose others."""
    tiles = _tiles(mode)
    batches = [tiles[start:start + 4] for start in range(0, len(tiles), 4)]
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, gray_batch_pixels=0, parameters="last",
                              gray_parameters="last", learning_rate=0.05, steps_per_batch=steps, give_up_after=0)
    with _without_memo():
        expected, encoder = _code(batches, config)
    flags = [payload[0] for payload in expected]
    assert any(f & FLAG_PRETRAINED for f in flags[1:]) and any(f == 0 for f in flags), flags
    with _counted_memos() as memos:
        payloads, reused = _code(batches, config)
    assert payloads == expected
    assert sum(memo.hits for memo in memos) > 0
    with _counted_memos() as memos:
        decoder = _decode(payloads, batches, config)
    assert sum(memo.hits for memo in memos) > 0  # FLAG_PRETRAINED batches' updates (and later steps)
    for network in (reused.adapted_network(tiles.shape[1]), decoder.adapted_network(tiles.shape[1])):
        assert all(torch.equal(a, b) for a, b in zip(network.parameters(),
                                                     encoder.adapted_network(tiles.shape[1]).parameters()))
