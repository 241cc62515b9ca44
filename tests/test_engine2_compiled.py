"""Engine 2's compiled leaky ReLU pass (exact/conv_kernels.py) against the torch passes: the same integers."""
from __future__ import annotations

import pytest
import torch

from osoa_zip.exact import conv_kernels, intconv

pytestmark = pytest.mark.skipif(not conv_kernels.available(), reason="numba (the fast extra) is not installed")


@pytest.mark.parametrize("seed", range(8))
def test_compiled_leaky_framed_matches_torch(seed, monkeypatch):
    """Hidden outputs clamped one beyond the range or not, into one int8 limb or two 8-bit limbs,
    int32 and int64 sums: the framed input (frame included) and the values backward keeps."""
    g = torch.Generator().manual_seed(seed)
    batch, height, width, channels = 1 + seed % 3, 1 + seed % 4, 2 + seed % 5, 1 + 7 * (seed % 3)
    next_limbs = 1 + seed % 2
    output_range = intconv.HIDDEN_RANGE if next_limbs == 1 else (-32896, 32639)
    low, high = output_range
    clamped = seed % 4 >= 2
    values = torch.randint(low - (1 if clamped else 0), high + (2 if clamped else 1),
                           (batch * height * width, channels), generator=g)
    values[0, 0] = low - 1 if clamped else low
    values = values.to(torch.int64 if seed % 3 == 0 else torch.int32)
    saved = intconv._Saved(None, None, values, clamped, (batch, height, width, channels))
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(conv_kernels, "available", lambda compiled=compiled: compiled)
        results.append(intconv._leaky_framed(saved, output_range, next_limbs, (batch, height, width)))
    (framed, kept), (expected_framed, expected_kept) = results
    assert framed.dtype == expected_framed.dtype and torch.equal(framed, expected_framed)
    assert kept.dtype == expected_kept.dtype and torch.equal(kept, expected_kept)


@pytest.mark.parametrize("seed", range(12))
def test_compiled_gradient_columns_match_torch(seed, monkeypatch):
    """A gradient rounded onto its grid and split into two 7-bit limbs: int32 and int64 sums,
    extremes at +-2**31 and beyond, shifts from 0 up, ties: the same columns and exponent."""
    g = torch.Generator().manual_seed(seed)
    positions, channels = 1 + 37 * (seed % 4), 1 + 11 * (seed % 5)
    peak = [100, 8127, 8128, 2 ** 20, 2 ** 31 - 1, 2 ** 40][seed % 6]
    ints = torch.randint(-peak, peak + 1, (positions, channels), generator=g)
    ints.view(-1)[0] = peak if seed % 2 else -peak
    if seed % 3 == 1:  # ties: odd multiples of half a step
        ints = ints.bitwise_or(1 << 5)
    dtype = torch.int64 if peak >= 2 ** 31 or seed % 4 == 3 else torch.int32
    ints = ints.to(dtype)
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(conv_kernels, "available", lambda compiled=compiled: compiled)
        results.append(intconv._gradient_columns(ints.clone(), -7, intconv.gradient_limit(2), 2, seed % 2 == 0))
    (columns, exponent), (expected, expected_exponent) = results
    assert exponent == expected_exponent
    assert columns.dtype == expected.dtype == torch.int8 and torch.equal(columns, expected)


@pytest.mark.parametrize("seed", range(12))
def test_compiled_leaky_gradient_matches_torch(seed, monkeypatch):
    """The leaky ReLU's gradient folded with the clamp's mask: values kept narrow (int16) or not,
    clamped or not, int32 and int64 gradients (near the bound that promotes int32): the same integers."""
    g = torch.Generator().manual_seed(seed)
    positions, channels = 1 + 29 * (seed % 4), 1 + 13 * (seed % 3)
    output_range = intconv.HIDDEN_RANGE if seed % 2 else (-32896, 32639)
    low, high = output_range
    clamped = seed % 4 >= 2
    values = torch.randint(low - (1 if clamped else 0), high + (2 if clamped else 1), (positions, channels),
                           generator=g)
    values.view(-1)[0] = low - 1 if clamped else 0
    values = values.to(torch.int16 if seed % 2 else torch.int32)
    bound = [8127, 2 ** 28 - 1, 2 ** 28, 2 ** 40][seed % 4]
    ints = torch.randint(-bound, bound + 1, (positions, channels), generator=g)
    ints = ints.to(torch.int64 if bound >= 2 ** 31 or seed % 3 == 0 else torch.int32)
    saved = intconv._Saved(None, None, values, clamped, (1, positions, 1, channels))
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(conv_kernels, "available", lambda compiled=compiled: compiled)
        results.append(intconv._leaky_gradient(intconv.Fixed(ints.clone(), -5), saved, output_range, bound))
    got, want = results
    assert got.exponent == want.exponent == -8
    assert got.ints.dtype == want.ints.dtype and torch.equal(got.ints, want.ints)


def test_compiled_stack_step_matches_torch(monkeypatch):
    """A v7-shaped engine-2 stack (two-limb first weights and last input), forward and backward,
    both ways: identical outputs and gradients."""
    from osoa_zip.exact.intlayers import IntegerConvStack

    g = torch.Generator().manual_seed(3)
    stack = IntegerConvStack.empty(3, 16, 12, 3)
    for conv in stack.convs:
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64) * 0.3)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g, dtype=torch.float64) * 0.1)
    x = torch.randint(-128, 128, (2, 3, 8, 8), generator=g).double() / 64
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(conv_kernels, "available", lambda compiled=compiled: compiled)
        for p in stack.parameters():
            p.grad = None
        y = stack(x)
        (y * torch.linspace(-3, 3, y.numel(), dtype=torch.float64).view(y.shape)).sum().backward()
        results.append([y.detach()] + [p.grad.clone() for p in stack.parameters()])
    for got, want in zip(*results):
        assert torch.equal(got, want)
