"""The compiled mixture NLL (exact/mixture_kernels.py) against the torch passes it replaces: every bit.

The loops must give the forward's loss and all four gradients bit for bit (signed zeros
included), since the decoder replays the gradients; the torch passes are what every
archive so far was written with.  Inputs cover the tables' ends: log-scales beyond the
table (clamped, zero gradient), logits more than EXP_RANGE apart, means far from the
value (components in their tails, latents no component explains), values on the edge
bins, and gradients of the output that are not all ones."""
from __future__ import annotations

import pytest
import torch

from osoa_zip.exact import logistic, mixture_kernels
from osoa_zip.exact.logistic import LogisticTables, mixture_nll_bits

pytestmark = pytest.mark.skipif(not mixture_kernels.available(), reason="numba (the fast extra) is not installed")

TABLES = LogisticTables.from_tensors(LogisticTables.build(mixture=True))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int64)


def _case(seed: int, k: int, shape: tuple, edges: bool, spread: float):
    g = torch.Generator().manual_seed(seed)
    value_pixels = torch.randint(0, 256, shape, generator=g).double()
    offset = torch.randint(-40, 300, shape, generator=g).double()
    value = value_pixels - offset
    grid = 2.0 ** -8
    means = torch.round(torch.randn((k, *shape), generator=g, dtype=torch.float64) * spread / grid) * grid
    means += value.unsqueeze(0) * (torch.rand((k, *shape), generator=g) < 0.5)
    log_scales = torch.round((torch.rand((k, *shape), generator=g, dtype=torch.float64) * 10 - 3.5) / grid) * grid
    logits = torch.round(torch.randn((k, *shape), generator=g, dtype=torch.float64) * 12 / grid) * grid
    logits[0] = 0.0
    bounds = (-offset, 255.0 - offset) if edges else (None, None)
    return value, means, log_scales, logits, bounds


def _run(value, means, log_scales, logits, bounds, grad_out, compiled: bool, monkeypatch):
    monkeypatch.setattr(mixture_kernels, "available", lambda: compiled)
    leaves = [t.clone().requires_grad_(True) for t in (value, means, log_scales, logits)]
    out = mixture_nll_bits(*leaves, TABLES, *bounds)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("seed", range(12))
def test_compiled_mixture_nll_is_bit_identical(seed, monkeypatch):
    k = 1 + seed % 4
    shape = (2, 3, 5 + seed, 4)
    edges = seed % 3 != 0
    spread = [0.5, 4.0, 60.0, 3000.0][seed % 4]
    value, means, log_scales, logits, bounds = _case(seed, k, shape, edges, spread)
    grad_choices = [torch.ones(shape, dtype=torch.float64),
                    torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1e3,
                    torch.zeros(shape, dtype=torch.float64)]
    grad_out = grad_choices[seed % 3]
    expected = _run(value, means, log_scales, logits, bounds, grad_out, False, monkeypatch)
    got = _run(value, means, log_scales, logits, bounds, grad_out, True, monkeypatch)
    assert torch.equal(_bits(expected[0]), _bits(got[0]))
    for want, have in zip(expected[1], got[1]):
        assert torch.equal(_bits(want), _bits(have))


def test_compiled_path_runs_and_the_loss_gradient_matches(monkeypatch):
    """The sum's gradient (an expanded scalar), as the flow's loss gives it, and a case that
    takes the compiled path for certain: the loops are really used."""
    value, means, log_scales, logits, bounds = _case(99, 3, (4, 6, 8, 8), True, 3.0)
    calls = []
    original = mixture_kernels.mixture_backward
    monkeypatch.setattr(mixture_kernels, "mixture_backward", lambda *a: calls.append(1) or original(*a))

    def run(compiled):
        monkeypatch.setattr(mixture_kernels, "available", lambda: compiled)
        leaves = [t.clone().requires_grad_(True) for t in (value, means, log_scales, logits)]
        mixture_nll_bits(*leaves, TABLES, *bounds).sum().backward()
        return [t.grad for t in leaves]

    expected, got = run(False), run(True)
    assert calls == [1]
    for want, have in zip(expected, got):
        assert torch.equal(_bits(want), _bits(have))


def test_no_gradient_and_all_zero_gradients(monkeypatch):
    """A zero output gradient quantises to +0.0 everywhere on both paths; a value no component
    explains goes to the nearest component (the first of equals)."""
    value = torch.tensor([0.0, 5000.0, -5000.0], dtype=torch.float64)
    means = torch.zeros((3, 3), dtype=torch.float64)
    log_scales = torch.full((3, 3), -2.0, dtype=torch.float64)
    logits = torch.zeros((3, 3), dtype=torch.float64)
    for grad_out in (torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)):
        expected = _run(value, means, log_scales, logits, (None, None), grad_out, False, monkeypatch)
        got = _run(value, means, log_scales, logits, (None, None), grad_out, True, monkeypatch)
        for want, have in zip([expected[0], *expected[1]], [got[0], *got[1]]):
            assert torch.equal(_bits(want), _bits(have))


def test_constants_agree_with_logistic():
    assert mixture_kernels.CDF_ONE == logistic.CDF_ONE
    assert mixture_kernels.CDF_RANGE == logistic.CDF_RANGE
    assert mixture_kernels.CDF_STEP == 2 ** logistic.CDF_STEP_BITS
    assert mixture_kernels.LOG_SCALE_MIN == logistic.LOG_SCALE_MIN
    assert mixture_kernels.LOG_SCALE_MAX == logistic.LOG_SCALE_MAX
    assert mixture_kernels.EXP_RANGE == logistic.EXP_RANGE
    assert mixture_kernels.TAIL_PROBABILITY == logistic._TAIL_PROBABILITY


def test_output_pieces_gradient_is_the_slices_gradient():
    """models/mixture.output_pieces: the same pieces and, bit for bit, the same gradient of the
    whole output as indexing each piece (pieces that do not cover the output included)."""
    from osoa_zip.models.mixture import output_pieces

    g = torch.Generator().manual_seed(5)
    output = torch.randn((2, 14, 3, 4), generator=g, dtype=torch.float64)
    pieces = [slice(0, 3), slice(3, 9, 3), slice(4, 9, 3), slice(5, 9, 3), slice(10, 14, 2), slice(11, 14, 2)]
    weights = [torch.randn(output[:, p].shape, generator=g, dtype=torch.float64) for p in pieces]
    weights[1] = torch.zeros_like(weights[1]) * -1.0  # negative zeros in one piece's gradient
    grads = []
    for gathered in (True, False):
        leaf = output.clone().requires_grad_(True)
        parts = output_pieces(leaf, pieces) if gathered else [leaf[:, p] for p in pieces]
        for part, p in zip(parts, pieces):
            assert torch.equal(part, output[:, p])
        sum((part * w).sum() for part, w in zip(parts, weights)).backward()
        grads.append(leaf.grad)
    assert torch.equal(_bits(grads[0]), _bits(grads[1]))


def test_compiled_component_rows_equal_numpy_rows(monkeypatch):
    """coding/mixture_coder's CDF rows, filled by the compiled loop and by the numpy passes:
    every row of the table, entry for entry."""
    import numpy as np

    from osoa_zip.coding import mixture_coder

    tables = LogisticTables.from_tensors(LogisticTables.build(mixture=True))
    every = np.arange(mixture_coder.OFFSET_STEPS * mixture_coder._ComponentRows(tables).scale_rows)
    filled = []
    for compiled in (True, False):
        monkeypatch.setattr(mixture_kernels, "available", lambda compiled=compiled: compiled)
        rows = mixture_coder._ComponentRows(tables)
        rows.ensure(every[::-1].copy())
        assert rows.filled.all()
        filled.append(rows.cdf)
    assert np.array_equal(filled[0], filled[1])
