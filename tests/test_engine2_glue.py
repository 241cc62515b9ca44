"""Engine 2's cheaper paths of branch y-glue give the integers of the paths they replace.

* the int8 kernel pads every column count under INT8_WIDE_PADDING that is not a
  multiple of 16 when the caller takes the product as a strided view (limb blocks
  that are recombined into a new matrix): every kernel, plain and strided, equals
  the int64 product at the engine's extreme operands and odd shapes, and
  ``stacked_product`` gives the recombined integers as a contiguous matrix;
* a pass that resumes at a stack's last conv (exact/trunk.py) reads the patches
  the recording pass kept of that conv's input instead of its own im2col, in the
  encoder's order and the decoder's, under every kernel: the same output and
  gradients as passes without a memo, and the shared patches are never written;
* a mixture's components are assembled by one autograd node (``mixture.mixture_stack``):
  the flow's loss, factors and every parameter's gradient are those of autograd's own
  adds and stacks, bit for bit (signed zeros too), on small random flows (RGB and grey,
  pixels at the edges) and on the shipped default on engine 2.
"""
from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trunk_memo import _adapted, _context, _frozen, _stack, _step

from osoa_zip.exact import kernels
from osoa_zip.exact.intconv import _im2col
from osoa_zip.exact.kernels import (
    INT8_COLUMN_BLOCK,
    INT8_MIN_COLUMNS,
    INT8_WIDE_PADDING,
    KERNELS,
    current_kernel,
    int8_columns,
    limb_range,
    split_limbs,
    stacked_product,
)
from osoa_zip.exact.logistic import LogisticTables
from osoa_zip.exact.trunk import TrunkMemo
from osoa_zip.models import idf, mixture
from osoa_zip.models.idf import SubLatticeFlow
from osoa_zip.models.registry import DEFAULT_MODEL, load_model


def _operand(generator, shape, low, high, extreme):
    if extreme:
        return torch.where(torch.rand(shape, generator=generator) < 0.5, low, high)
    return torch.randint(low, high + 1, shape, generator=generator)


def test_strided_products_pad_every_short_remainder():
    assert int8_columns(1, strided=True) == INT8_MIN_COLUMNS
    padded_to = {n: int8_columns(n, strided=True) for n in range(2, 200)}
    assert {n for n, wide in padded_to.items() if wide != n} == {
        n for n in range(2, INT8_WIDE_PADDING) if n % INT8_COLUMN_BLOCK}
    assert all(wide % INT8_COLUMN_BLOCK == 0 and wide - n < INT8_COLUMN_BLOCK
               for n, wide in padded_to.items() if wide != n)
    # a caller that needs a packed result keeps the old rule
    assert {n for n in range(2, 200) if int8_columns(n) != n} == set(range(9, 16)) | set(range(25, 32))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 80), depth=st.integers(1, 600),
       columns=st.one_of(st.sampled_from([9, 13, 15, 16, 18, 25, 30, 31, 33, 36, 60]), st.integers(1, 70)),
       extreme=st.booleans(), transposed=st.booleans(), contiguous=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_strided_products_are_exact_on_every_kernel(rows, depth, columns, extreme, transposed, contiguous, seed):
    generator = torch.Generator().manual_seed(seed)
    a = _operand(generator, (rows, depth), -128, 127, extreme)
    b = _operand(generator, (depth, columns), -64, 63, extreme)
    expected = a @ b
    a8, b8 = a.to(torch.int8), b.to(torch.int8)
    if transposed:
        a8, b8 = a8.T.contiguous().T, b8.T.contiguous().T
    for kernel in KERNELS.values():
        got = kernel.limb_product(a8, b8, contiguous=contiguous)
        assert got.shape == (rows, columns) and got.dtype == torch.int32
        if contiguous:
            assert got.is_contiguous()
        assert torch.equal(got.long(), expected), kernel.name


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 60), depth=st.integers(1, 500), columns=st.integers(1, 66),
       a_limbs=st.integers(1, 2), b_limbs=st.integers(1, 2), extreme=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_stacked_products_of_padded_limbs_are_exact_and_packed(rows, depth, columns, a_limbs, b_limbs, extreme,
                                                               seed):
    generator = torch.Generator().manual_seed(seed)
    a = _operand(generator, (rows, depth), *limb_range(8, a_limbs), extreme)
    b = _operand(generator, (depth, columns), *limb_range(7, b_limbs), extreme)
    a_stack = torch.cat(split_limbs(a, 8, a_limbs)) if a_limbs > 1 else a.to(torch.int8)
    b_stack = torch.cat(split_limbs(b, 7, b_limbs), dim=1) if b_limbs > 1 else b.to(torch.int8)
    for kernel in KERNELS.values():
        got = stacked_product(a_stack, a_limbs, b_stack, b_limbs, kernel)
        assert got.is_contiguous() and got.shape == (rows, columns)
        assert torch.equal(got.long(), a @ b), kernel.name


# -- the last conv's patches, shared between passes over one batch (exact/trunk.py) ------------

def _kernel(name):
    """Run the block under kernel ``name`` (the process's choice restored after)."""
    return mock.patch.object(kernels, "_chosen", KERNELS[name])


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("order", ["adapted first", "frozen first"])
def test_a_later_pass_reads_the_recorded_last_patches_and_gives_the_same_integers(kernel, order):
    """The encoder's order (the adapted pass, then θ0's guard pass) and the decoder's (θ0's decoding
    pass, then the update's pass): the later pass reads the last conv's patches the first kept, and
    its output and gradients are those of passes without a memo; the patches stay unwritten."""
    with _kernel(kernel):
        frozen, x = _stack(8), _context(9)
        adapted = _adapted(frozen)
        expected_frozen, (expected_output, expected_grads) = _frozen(frozen, x), _step(adapted, x)
        memo = TrunkMemo()
        with memo.active():
            if order == "adapted first":
                output, grads = _step(adapted, x)
                frozen_output = _frozen(frozen, x)
            else:
                frozen_output = _frozen(frozen, x)
                output, grads = _step(adapted, x)
        assert (memo.hits, memo.misses, memo.shared_patches) == (1, 1, 1)
        (recorded,) = [entry for entries in memo._recorded.values() for entry in entries]
        assert recorded.last_patches.dtype == KERNELS[kernel].operand_dtype
        assert torch.equal(recorded.last_patches, _im2col(recorded.inputs[-1], KERNELS[kernel].operand_dtype))
    assert torch.equal(frozen_output, expected_frozen)
    assert torch.equal(output, expected_output)
    assert all(torch.equal(a, b) if b is not None else a is None for a, b in zip(grads, expected_grads))


def test_patches_of_another_input_or_kernel_are_not_read():
    frozen, x = _stack(10), _context(11)
    other = _context(12)
    expected, expected_other = _frozen(frozen, x), _frozen(frozen, other)
    memo = TrunkMemo()
    with memo.active():
        _frozen(frozen, x)
        assert torch.equal(_frozen(frozen, other), expected_other)  # a miss, recorded in turn
        assert (memo.hits, memo.shared_patches) == (0, 0)
        with _kernel("float64" if current_kernel().name != "float64" else "float32"):
            assert torch.equal(_frozen(frozen, x), expected)  # recorded in another dtype: its own im2col
        assert (memo.hits, memo.shared_patches) == (1, 0)
        assert torch.equal(_frozen(frozen, x), expected)
        assert (memo.hits, memo.shared_patches) == (2, 1)


# -- a mixture's components through one autograd node (models/mixture.py) ----------------------

def _flow(channels: int, seed: int):
    """A small flow with v7's coupling layout (cross-channel couplings, edge bins, three logistics)
    on engine 1, random weights (the couplings' glue is the same on both engines)."""
    torch.manual_seed(seed)
    flow = SubLatticeFlow.from_config(channels, {"hidden": 8, "depth": 2, "levels": 2, "channel_coupling": True,
                                                 "mean_remainder": True, "deep_levels": True, "edge_bins": True,
                                                 "mixture_components": 3}).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(torch.randn(parameter.shape, dtype=torch.float64) * 0.05)
    flow.tables = LogisticTables.from_tensors(LogisticTables.build(mixture=True))
    return flow


def _pass(flow, pixels, fused: bool):
    """(loss, factors, every parameter's gradient) of one analyse pass and its backward."""
    patch = (mock.patch.object(idf, "mixture_stack", mixture.mixture_from_blocks) if not fused
             else mock.patch.object(idf, "mixture_stack", mixture.mixture_stack))
    for parameter in flow.parameters():
        parameter.grad = None
    with patch:
        loss, factors = flow.analyse(pixels)
        loss.backward()
    return loss.detach(), factors, [parameter.grad.clone() for parameter in flow.parameters()]


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit: the same values, NaNs and signs of zero."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        (a.view(torch.int64) == b.view(torch.int64)).all()) if a.dtype == torch.float64 else torch.equal(a, b)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_fused_mixture_gives_the_same_loss_factors_and_gradients(channels, seed):
    flow = _flow(channels, seed)
    generator = torch.Generator().manual_seed(seed + 10)
    pixels = torch.randint(0, 256, (3, channels, 12, 10), generator=generator).double()
    pixels[0] = 0  # edge bins and far tails
    pixels[1, :, :4] = 255
    old_loss, old_factors, old_grads = _pass(flow, pixels, fused=False)
    new_loss, new_factors, new_grads = _pass(flow, pixels, fused=True)
    assert _identical(old_loss, new_loss)
    assert len(old_factors) == len(new_factors)
    assert all(_identical(a, b) for old, new in zip(old_factors, new_factors) for a, b in zip(old, new))
    assert all(_identical(a, b) for a, b in zip(old_grads, new_grads))
    assert any(bool(grad.any()) for grad in new_grads)


def test_the_fused_mixture_on_v7_gives_the_same_gradients():
    """The shipped default on engine 2 (its mixture NLL's compiled or torch passes), RGB and grey."""
    bundle = load_model(DEFAULT_MODEL)
    for channels in (3, 1):
        flow = copy.deepcopy(bundle.network(channels))
        for parameter in flow.parameters():
            parameter.requires_grad_(True)
        generator = torch.Generator().manual_seed(channels)
        pixels = torch.randint(0, 256, (2, channels, 16, 16), generator=generator).double()
        old_loss, old_factors, old_grads = _pass(flow, pixels, fused=False)
        new_loss, new_factors, new_grads = _pass(flow, pixels, fused=True)
        assert _identical(old_loss, new_loss)
        assert all(_identical(a, b) for old, new in zip(old_factors, new_factors) for a, b in zip(old, new))
        assert all(_identical(a, b) for a, b in zip(old_grads, new_grads))


def test_the_fused_mixture_is_used_only_where_a_gradient_is_wanted_in_float64():
    mean, log_scale = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True), torch.ones(2, 3, dtype=torch.float64)
    blocks = [torch.full((2, 3), float(b), dtype=torch.float64) for b in range(6)]
    means, log_scales, logits = mixture.mixture_stack(mean, log_scale, blocks, 3)
    assert type(means.grad_fn).__name__ == "_MixtureStackBackward"
    expected = mixture.mixture_from_blocks(mean, log_scale, blocks, 3)
    assert all(_identical(a.detach(), b.detach()) for a, b in zip((means, log_scales, logits), expected))
    with torch.no_grad():
        assert mixture.mixture_stack(mean, log_scale, blocks, 3)[0].grad_fn is None
    single = mixture.mixture_stack(mean.detach().float().requires_grad_(), log_scale.float(),
                                   [b.float() for b in blocks], 3)[0]
    assert type(single.grad_fn).__name__ == "StackBackward0"  # float32 training keeps autograd's own nodes
