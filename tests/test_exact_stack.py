"""The fused float64 ConvStack (exact/stack.py) gives the module path's bits.

Outputs and every parameter gradient are compared with torch.equal on
inputs and weights on the exact grids, including values beyond the
activation limit (clamps and their gradient masks) and negative values
(the leaky ReLU), for several shapes and thread counts.
"""
from __future__ import annotations

import pytest
import torch

from osoa_zip.exact import fixed
from osoa_zip.exact.layers import ConvStack
from osoa_zip.exact.stack import PARALLEL_COLUMNS, set_gemm_threads


def _stack(in_channels, hidden, out_channels, depth, seed, weight_scale):
    torch.manual_seed(seed)
    stack = ConvStack(in_channels, hidden, out_channels, depth).double()
    with torch.no_grad():
        for parameter in stack.parameters():
            parameter.mul_(weight_scale)
    return stack


def _grid_input(shape, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=generator) * scale
    return torch.floor(x * 2 ** fixed.ACT_FRAC_BITS) / 2 ** fixed.ACT_FRAC_BITS


def _run(stack, x, fused: bool, threads: int, gemm_threads: int = 1):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    set_gemm_threads(gemm_threads)
    try:
        stack.zero_grad()
        output = stack(x) if fused else stack.forward_by_module(x)
        generator = torch.Generator().manual_seed(7)
        upstream = fixed.quantize_gradient(torch.randn(output.shape, dtype=torch.float64, generator=generator))
        (output * upstream).sum().backward()
        return output.detach(), [p.grad.clone() for p in stack.parameters()]
    finally:
        torch.set_num_threads(previous)
        set_gemm_threads(1)


@pytest.mark.parametrize("in_channels, hidden, out_channels, depth, shape, input_scale, weight_scale", [
    (3, 48, 24, 3, (8, 3, 32, 32), 1.0, 1.0),     # the default model's edges, level 0
    (9, 48, 12, 3, (2, 9, 4, 6), 1.0, 1.0),       # smallest sub-lattice, not square
    (1, 16, 6, 2, (3, 1, 8, 5), 2.0, 1.0),
    (3, 8, 9, 4, (2, 3, 6, 6), 300.0, 40.0),      # activations beyond ACT_LIMIT: clamps and masks
])
def test_fused_stack_equals_module_path(in_channels, hidden, out_channels, depth, shape, input_scale,
                                        weight_scale):
    stack = _stack(in_channels, hidden, out_channels, depth, seed=sum(shape), weight_scale=weight_scale)
    x = _grid_input(shape, seed=depth, scale=input_scale)
    reference_output, reference_grads = _run(stack, x, fused=False, threads=1)
    # the first shape has blocks wide enough for the products to go to two threads
    for threads, gemm_threads in ((1, 1), (2, 1), (1, 2)):
        output, grads = _run(stack, x, fused=True, threads=threads, gemm_threads=gemm_threads)
        assert torch.equal(output, reference_output)
        for got, expected in zip(grads, reference_grads):
            assert torch.equal(got, expected)


def test_fused_stack_skips_gradients_nobody_needs():
    stack = _stack(3, 8, 6, 3, seed=1, weight_scale=1.0)
    for conv in stack.convs[:-1]:
        conv.weight.requires_grad_(False)
        conv.bias.requires_grad_(False)
    x = _grid_input((2, 3, 8, 8), seed=2, scale=1.0)
    stack(x).sum().backward()
    assert stack.convs[-1].weight.grad is not None
    assert all(conv.weight.grad is None for conv in stack.convs[:-1])


def test_wide_blocks_really_go_to_two_threads(monkeypatch):
    """The (1, 2) case above must exercise the two-thread path, not skip it."""
    from osoa_zip.exact import stack as stack_module
    seen = []
    original = torch.set_num_threads
    monkeypatch.setattr(stack_module.torch, "set_num_threads", lambda n: (seen.append(n), original(n)))
    stack = _stack(3, 8, 6, 2, seed=3, weight_scale=1.0)
    x = _grid_input((4, 3, 24, 24), seed=4, scale=1.0)  # 4 x 25 x 25 = 2500 grid positions
    assert 2500 >= PARALLEL_COLUMNS
    _run(stack, x, fused=True, threads=1, gemm_threads=2)
    assert 2 in seen
