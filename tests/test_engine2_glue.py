"""Engine 2's cheaper paths of branch y-glue give the integers of the paths they replace.

* the int8 kernel pads every column count under INT8_WIDE_PADDING that is not a
  multiple of 16 when the caller takes the product as a strided view (limb blocks
  that are recombined into a new matrix): every kernel, plain and strided, equals
  the int64 product at the engine's extreme operands and odd shapes, and
  ``stacked_product`` gives the recombined integers as a contiguous matrix.
"""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from osoa_zip.exact.kernels import (
    INT8_COLUMN_BLOCK,
    INT8_MIN_COLUMNS,
    INT8_WIDE_PADDING,
    KERNELS,
    int8_columns,
    limb_range,
    split_limbs,
    stacked_product,
)


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
