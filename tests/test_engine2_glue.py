"""Engine 2's cheaper paths of branch y-glue give the integers of the paths they replace.

* the int8 kernel pads every column count under INT8_WIDE_PADDING that is not a
  multiple of 16 when the caller takes the product as a strided view (limb blocks
  that are recombined into a new matrix): every kernel, plain and strided, equals
  the int64 product at the engine's extreme operands and odd shapes, and
  ``stacked_product`` gives the recombined integers as a contiguous matrix;
* a pass that resumes at a stack's last conv (exact/trunk.py) reads the patches
  the recording pass kept of that conv's input instead of its own im2col, in the
  encoder's order and the decoder's, under every kernel: the same output and
  gradients as passes without a memo, and the shared patches are never written.
"""
from __future__ import annotations

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
from osoa_zip.exact.trunk import TrunkMemo


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
@given(rows=st.integers(1, 80), depth=st.integers(1, 600), columns=st.integers(1, 70),
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
