"""Engine 2's faster paths give the integers of the paths they replace (branch y-kernels).

* the int8 kernel pads a second operand of 9-15 or 25-31 columns with zero columns
  (``kernels.int8_columns``): every kernel still equals the int64 product, at the
  engine's extreme operands and odd shapes;
* im2col of fewer than 16 channels copies one kernel row at a time: the same
  matrix as the one strided copy, and as torch's own unfold;
* a frozen pass's patches and the input gradient's windows live in a per-thread
  scratch buffer: the same outputs and gradients as with fresh matrices, nothing
  kept that backward does not read, and no two threads share a buffer;
* a v7-shaped stack (48 hidden channels, 16-bit last input, 30 outputs) gives
  the same output and gradients with these paths as the int64 reference of
  test_engine2_conv.py.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from osoa_zip.exact import intconv
from osoa_zip.exact.intconv import Fixed, IntConvStack, _im2col, padded, scratch_matrix
from osoa_zip.exact.kernels import INT8_COLUMN_BLOCK, INT8_MIN_COLUMNS, KERNELS, int8_columns


def _operand(generator, shape, low, high, extreme):
    if extreme:
        return torch.where(torch.rand(shape, generator=generator) < 0.5, low, high)
    return torch.randint(low, high + 1, shape, generator=generator)


def test_int8_columns_pads_only_the_slow_remainders():
    assert int8_columns(1) == INT8_MIN_COLUMNS
    padded_to = {n: int8_columns(n) for n in range(2, 130)}
    assert {n for n, wide in padded_to.items() if wide != n} == set(range(9, 16)) | set(range(25, 32))
    assert all(wide % INT8_COLUMN_BLOCK == 0 for n, wide in padded_to.items() if wide != n)


def _unfold_reference(framed: torch.Tensor) -> torch.Tensor:
    """torch's unfold of the same framed images, reordered to im2col's (ky, kx, c) columns."""
    batch, height, width, channels = framed.shape[0], framed.shape[1] - 2, framed.shape[2] - 2, framed.shape[3]
    unfolded = torch.nn.functional.unfold(framed.permute(0, 3, 1, 2).double(), 3)  # B x (C*9) x (H*W)
    unfolded = unfolded.view(batch, channels, 9, height * width).permute(0, 3, 2, 1)
    return unfolded.reshape(batch * height * width, 9 * channels)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), height=st.integers(1, 7), width=st.integers(1, 7), channels=st.integers(1, 40),
       dtype=st.sampled_from([torch.int8, torch.float32, torch.float64]), scratch=st.booleans(),
       offset=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_im2col_is_unfold_in_both_layouts(batch, height, width, channels, dtype, scratch, offset, seed):
    generator = torch.Generator().manual_seed(seed)
    framed = padded(batch + offset, height, width, channels)[offset:]  # a view with a storage offset
    intconv.interior(framed).copy_(torch.randint(-128, 128, (batch, height, width, channels), generator=generator))
    if scratch:  # stale values in the scratch buffer must all be overwritten
        scratch_matrix(batch * height * width + 5, 9 * channels + 3, dtype).fill_(77)
    got = _im2col(framed, dtype, scratch=scratch)
    assert got.dtype == dtype and got.shape == (batch * height * width, 9 * channels)
    assert torch.equal(got.double(), _unfold_reference(framed))
    # and the one-strided-copy layout, forced, agrees (the narrow path is only a faster copy)
    original = intconv.NARROW_IM2COL_CHANNELS
    try:
        intconv.NARROW_IM2COL_CHANNELS = 0
        assert torch.equal(_im2col(framed, dtype), got)
    finally:
        intconv.NARROW_IM2COL_CHANNELS = original


def test_scratch_is_per_thread_and_reused():
    first = scratch_matrix(4, 6, torch.int8)
    again = scratch_matrix(3, 5, torch.int8)
    assert again.data_ptr() == first.data_ptr()  # the same memory, one buffer per thread and dtype
    assert scratch_matrix(2, 2, torch.float32).data_ptr() != first.data_ptr()
    other = []
    thread = threading.Thread(target=lambda: other.append(scratch_matrix(4, 6, torch.int8).data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != first.data_ptr()


def _stack(generator, widths, last_input_limbs):
    weights = [(torch.randn(b, a, 3, 3, generator=generator, dtype=torch.float64) * (2 / (9 * a)) ** 0.5,
                torch.randn(b, generator=generator, dtype=torch.float64) * 0.1) for a, b in zip(widths, widths[1:])]
    sample = torch.randn(2, widths[0], 6, 6, generator=generator, dtype=torch.float64)
    return IntConvStack.from_float(weights, sample, -6, output_limbs=2, first_weight_limbs=2,
                                   last_input_limbs=last_input_limbs, clip_bits=2)


@contextmanager
def _old_paths():
    """The paths before these changes: a fresh matrix for every im2col, one strided copy for any width."""
    with mock.patch.object(intconv, "scratch_matrix", lambda rows, columns, dtype: torch.empty(rows, columns,
                                                                                              dtype=dtype)), \
            mock.patch.object(intconv, "NARROW_IM2COL_CHANNELS", 0):
        yield


@pytest.mark.parametrize("widths", [[9, 48, 48, 30], [3, 20, 20, 9], [1, 17, 13]])
def test_stack_with_fast_paths_matches_the_reference(widths):
    """Forward and every gradient of a v7-shaped stack (clamps forced by clip_bits) on every kernel,
    with patches kept for the last conv only, against the same stack's float64 step on the old
    paths (fresh matrices, every patch kept)."""
    generator = torch.Generator().manual_seed(len(widths) * 100 + widths[1])
    stack = _stack(generator, widths, last_input_limbs=2)
    x = torch.randint(-128, 128, (2, 6, 5, widths[0]), generator=generator)
    loss = torch.randint(-8000, 8001, (2, 6, 5, widths[-1]), generator=generator)

    def loss_grad(output: Fixed) -> Fixed:
        return Fixed(loss.to(torch.int32), -20)
    with _old_paths():
        expected = stack.step_ints(x, loss_grad, KERNELS["float64"])
    expected_grads = [(c.weight.grad.clone(), c.bias.grad.clone()) for c in stack.convs]
    wanted = [(index == len(widths) - 2, True) for index in range(len(widths) - 1)]  # the last conv's weights only
    for kernel in KERNELS.values():
        frozen, _ = stack._forward(x, kernel, keep=False)
        assert torch.equal(frozen.ints, expected.ints) and frozen.exponent == expected.exponent
        output, saved = stack._forward(x, kernel, keep=True, patches=[w for w, _ in wanted])
        assert [memo.patches is not None for memo in saved] == [w for w, _ in wanted]
        assert torch.equal(output.ints, expected.ints)
        gradients = stack.backward(saved, loss_grad(output), kernel, wanted)
        for (weight, bias), (expected_weight, expected_bias), (want_weight, _) in zip(
                gradients, expected_grads, wanted):
            assert torch.equal(bias, expected_bias), kernel.name
            assert (weight is None) if not want_weight else torch.equal(weight, expected_weight), kernel.name
