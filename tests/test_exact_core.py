"""The numeric core's promises, checked directly.

If any of these fails, archives written on one machine may not decode on
another, so the tests assert exact bits (golden hashes), not tolerances.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.exact import fixed
from osoa_zip.exact.logistic import CDF_ONE, LogisticTables
from osoa_zip.exact.optim import ExactAdam, correctly_rounded_sqrt
from osoa_zip.models.registry import load_model

# sha256 of the tiny model's RGB weights after three replayed adaptation steps
# on examples/images/0000.png (16x16 tiles, batch 4, lr 2e-3).  It must never
# change: a different value means archives from older versions stop decoding.
GOLDEN_ADAPTED_WEIGHTS = "4047541c3010542fc1eabc0792dd1a265635502ed7530c5cabe4b205479bcce7"


def _weights_digest(network) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        digest.update(name.encode() + value.detach().numpy().astype("<f8").tobytes())
    return digest.hexdigest()


def _adapt_three_batches(threads: int) -> str:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        bundle = load_model("idf-tiny-test")
        adapter = OnlineAdapter(bundle, AdaptationConfig(tile_size=16, batch_size=4,
                                                         batch_pixels=0, learning_rate=2e-3))
        pixels = np.asarray(Image.open(EXAMPLES / "0000.png"))
        tiles = pixels.reshape(4, 16, 4, 16, 3).transpose(0, 2, 4, 1, 3).reshape(16, 3, 16, 16)
        for start in range(0, 12, 4):
            adapter.encode(np.ascontiguousarray(tiles[start:start + 4]))
        return _weights_digest(adapter.adapted_network(3))
    finally:
        torch.set_num_threads(previous)


def test_adaptation_is_thread_count_independent():
    assert _adapt_three_batches(1) == _adapt_three_batches(2)


def test_adaptation_matches_golden_weights():
    assert _adapt_three_batches(2) == GOLDEN_ADAPTED_WEIGHTS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=64))
def test_quantized_gradient_keeps_few_bits_on_one_grid(values):
    g = fixed.quantize_gradient(torch.tensor(values, dtype=torch.float64))
    peak = max(abs(v) for v in values)
    if math.frexp(peak)[1] - fixed.GRAD_BITS < fixed.MIN_GRAD_EXPONENT:
        assert not g.any()
        return
    step = math.ldexp(1.0, math.frexp(peak)[1] - fixed.GRAD_BITS)
    assert torch.equal(torch.round(g / step) * step, g)           # one power-of-two grid
    assert float(g.abs().max()) <= 2 ** fixed.GRAD_BITS * step    # GRAD_BITS significant bits


def test_convolution_sums_are_exact_in_any_order():
    """A conv on the grids equals the same sum done in exact integer arithmetic."""
    generator = torch.Generator().manual_seed(0)
    scale_a, scale_w = 2 ** fixed.ACT_FRAC_BITS, 2 ** fixed.WEIGHT_FRAC_BITS
    a = torch.randint(-int(fixed.ACT_LIMIT) * scale_a, int(fixed.ACT_LIMIT) * scale_a, (2, 64, 6, 6),
                      generator=generator)
    w = torch.randint(-int(fixed.WEIGHT_LIMIT) * scale_w, int(fixed.WEIGHT_LIMIT) * scale_w, (8, 64, 3, 3),
                      generator=generator)
    result = torch.nn.functional.conv2d(a.double() / scale_a, w.double() / scale_w)
    columns = torch.nn.functional.unfold(a.double(), 3).long()  # exact: values < 2**53
    exact = (w.reshape(8, -1) @ columns).reshape(2, 8, 4, 4)
    assert torch.equal(result * (scale_a * scale_w), exact.double())


def test_layers_too_large_for_exact_sums_are_refused():
    fixed.check_conv_bounds(fan_in=576, positions=1 << 14)
    with pytest.raises(ValueError):
        fixed.check_conv_bounds(fan_in=1 << 20, positions=1 << 14)


def test_sqrt_is_correctly_rounded():
    values = torch.rand(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    expected = torch.tensor([math.sqrt(v) for v in values.tolist()], dtype=torch.float64)
    assert torch.equal(correctly_rounded_sqrt(values), expected)


def test_adam_matches_a_plain_python_reference():
    """Every element follows the textbook update, computed with Python floats."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50, dtype=torch.float64))
    start = p.detach().clone()
    optimiser = ExactAdam([p], lr=1e-2)
    grads = [torch.randn(50, dtype=torch.float64) for _ in range(3)]
    for g in grads:
        p.grad = g.clone()
        optimiser.step()
    for i in range(50):
        w, m, v, b1, b2 = float(start[i]), 0.0, 0.0, 1.0, 1.0
        for g in grads:
            b1, b2 = b1 * 0.9, b2 * 0.999
            m = m * 0.9 + float(g[i]) * (1 - 0.9)
            v = v * 0.999 + (float(g[i]) * float(g[i])) * (1 - 0.999)
            w = w - ((m / (1 - b1)) / (math.sqrt(v / (1 - b2)) + 1e-8)) * 1e-2
        assert float(p.detach()[i]) == w


def test_cdf_table_is_monotone_and_spans_the_range():
    tables = LogisticTables.from_tensors(LogisticTables.build())
    u = torch.arange(-20 * 64, 20 * 64 + 1, dtype=torch.float64) / 64 + 1 / 3 / 64
    cdf = tables.cdf_q24(u)
    assert bool((cdf[1:] >= cdf[:-1]).all())
    assert float(cdf[0]) < 16 and float(cdf[-1]) > CDF_ONE - 16
    assert torch.equal(cdf, torch.floor(cdf))
