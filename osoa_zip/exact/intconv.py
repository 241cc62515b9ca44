"""Engine 2's quantised 3x3 convolution: forward and backward as exact integer products.

Every tensor is an integer tensor with a power-of-two scale (value = ints *
2**exponent); every reduction is a product of kernels.py's contract, so it
is the same integer on every kernel, ISA and thread count, and every other
step is an elementwise integer operation.  Layout: NHWC, so the 3x3 window
of a position is nine contiguous channel runs (im2col by one ``torch.cat``).

The three products of a layer, and which operand carries which limbs
(first operand: 8-bit limbs, second: 7-bit limbs):

* forward      y  = im2col(x) @ W           x in 8-bit limbs, W in 7-bit limbs
* input grad   dx = im2col'(g) @ W'         g in 8-bit limbs, W in 7-bit limbs
* weight grad  dW = im2col(x)^T @ g         x in 8-bit limbs, g in 7-bit limbs

Scales: the input, output and gradients have one exponent per tensor; the
weights one per tensor or per output channel (``per_channel``).  The bias
is held in the accumulator's units (exponent input + weight), so it is
added to the integer sum before the one rounding.  Requantisation is
kernels.shift_round (round half up) then a clamp whose gradient is masked,
as engine 1's activation grid.  Gradients are rounded (the same rule) onto
a per-tensor exponent taken from their exact extremes (as engine 1's
quantize_gradient) so that |g| <= gradient_limit(gradient_limbs): 8127 for
the default two 7-bit limbs (about 13 significant bits), which is also two
8-bit limbs for the input-gradient product.

Master weights stay float64 parameters updated by exact/optim.ExactAdam; the
forward pass rounds them onto their integer grid elementwise (exact IEEE
operations), and their gradients are integers times powers of two, which
float64 holds exactly while below 2**53 (``_as_float`` checks).
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import conv_kernels
from .grid import GRADIENT_LIMBS, LEAKY_SHIFT  # GRADIENT_LIMBS: |g| <= 8127, about 13 significant bits
from .kernels import (
    FULL_LIMB_BITS,
    SEVEN_BIT_LIMB_BITS,
    Kernel,
    current_kernel,
    limb_range,
    rounding_half,
    shift_round,
    split_limbs,
    stacked_product,
)

# Hidden layers: the conv output is clamped to [-1024, 127] so that the leaky
# ReLU (slope 1/8, rounded half up) maps it onto the full int8 range [-128, 127].
HIDDEN_RANGE = (-1024, 127)
ACTIVATION_RANGE = limb_range(FULL_LIMB_BITS, 1)
FLOAT64_EXACT = 2 ** 53
INT32_LIMIT = 2 ** 31


@dataclass(frozen=True)
class Fixed:
    """An integer tensor and its power-of-two exponent: the value is ints * 2**exponent."""

    ints: torch.Tensor
    exponent: int


def gradient_limit(limbs: int) -> int:
    """The symmetric range +-limit of a gradient in ``limbs`` 7-bit limbs (63, 8127, ...)."""
    return limb_range(SEVEN_BIT_LIMB_BITS, limbs)[1]


def quantize_gradient(ints: torch.Tensor, exponent: int, limit: int, in_place: bool = False) -> Fixed:
    """Round onto a coarser grid so that |result| <= limit (int32), the exponent from the exact extremes.

    The smallest shift s for which round_half_up(x / 2**s) of the largest and the
    smallest entry lands in [-limit, limit]; as engine 1's quantize_gradient,
    one scale per tensor, the same on every machine because it comes from exact
    integers.  ``in_place``: ``ints`` may be overwritten.
    """
    if not ints.numel():
        return Fixed(ints.to(torch.int32), exponent)
    low, high = (int(v) for v in torch.aminmax(ints))
    shift = max(0, max(high, -low).bit_length() - limit.bit_length())
    while (high + rounding_half(shift)) >> shift > limit or (low + rounding_half(shift)) >> shift < -limit:
        shift += 1
    if shift == 0:
        return Fixed(ints.to(torch.int32), exponent)
    if ints.dtype == torch.int32 and high + rounding_half(shift) >= INT32_LIMIT:
        ints = ints.long()
    if in_place:
        return Fixed(ints.add_(rounding_half(shift)).bitwise_right_shift_(shift).to(torch.int32), exponent + shift)
    return Fixed(shift_round(ints, shift).to(torch.int32), exponent + shift)


def _as_float(ints: torch.Tensor, exponent: int, bound: int | None = None) -> torch.Tensor:
    """ints * 2**exponent in float64, exactly (refused if an integer leaves float64's 53 bits).

    ``bound``: the largest |ints| the caller's operands allow; below 2**53 nothing is checked."""
    if (bound is None or bound >= FLOAT64_EXACT) and ints.numel() and int(ints.abs().max()) >= FLOAT64_EXACT:
        raise ValueError("an engine-2 gradient left float64's exact integer range")
    return ints.double().mul_(power_of_two(exponent))


def power_of_two(exponent: int) -> float:
    """2.0**exponent as torch.ldexp multiplies by it (x * pow(2, e)): 0.0 below the subnormals, inf
    above float64's range, so x * power_of_two(e) is torch.ldexp(x, e) bit for bit, without a
    tensor for the exponent."""
    return math.ldexp(1.0, exponent) if exponent <= 1023 else math.inf


def padded(batch: int, height: int, width: int, channels: int) -> torch.Tensor:
    """A zero B x (H+2) x (W+2) x C int8 tensor: its frame is a 3x3 conv's zero padding."""
    return torch.zeros(batch, height + 2, width + 2, channels, dtype=torch.int8)


def interior(t: torch.Tensor) -> torch.Tensor:
    return t[:, 1:-1, 1:-1]


def _padded_limbs(x: torch.Tensor, count: int) -> torch.Tensor:
    """x's 8-bit limbs, stacked along the batch, each inside a zero frame (count * B images)."""
    batch, height, width, channels = x.shape
    out = padded(count * batch, height, width, channels)
    split_limbs(x, FULL_LIMB_BITS, count, [interior(out[i * batch:(i + 1) * batch]) for i in range(count)])
    return out


# im2col of fewer channels than this copies one kernel row at a time (see _im2col).
NARROW_IM2COL_CHANNELS = 16
_scratch = threading.local()


def scratch_matrix(rows: int, columns: int, dtype: torch.dtype) -> torch.Tensor:
    """A rows x columns matrix in this thread's reusable buffer of ``dtype``; its entries are stale.

    Why: a fresh im2col matrix of a 64-image grey batch is 14 MB, and the kernel
    maps new pages for it on every call (measured: ~1500 page faults, about half
    of that im2col's time).  A matrix that is consumed at once (a frozen pass's
    patches, the input gradient's windows) takes this buffer instead.  The caller
    writes every entry and is done with it before its thread asks again: the
    next call on the same thread returns the same memory.  One buffer per thread
    and dtype (segments are coded side by side on threads)."""
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    size = rows * columns
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < size:
        buffer = buffers[dtype] = torch.empty(size, dtype=dtype)
    return buffer[:size].view(rows, columns)


def _im2col(framed: torch.Tensor, dtype: torch.dtype = torch.int8, scratch: bool = False) -> torch.Tensor:
    """B x (H+2) x (W+2) x C (zero frame) -> (B*H*W) x 9C: each position's 3x3 window, taps (ky, kx) row-major.

    One copy of a strided view (window rows and columns are the image's own
    strides); measured ~5x faster than a torch.cat of nine windows, whose
    contiguous runs are only C bytes long.  Under NARROW_IM2COL_CHANNELS, one
    copy per kernel row instead: a row's three taps are 3C contiguous values
    of the framed image (measured 0.54 -> 0.32 ms for 64 x 16 x 16 x 9, 0.58 ->
    0.37 ms for 16 x 32 x 32 x 3; the same bytes).  ``scratch``: the matrix is
    the thread's scratch buffer (``scratch_matrix``), for a caller that uses it at once.
    """
    framed = framed.contiguous()
    batch, height, width, channels = framed.shape[0], framed.shape[1] - 2, framed.shape[2] - 2, framed.shape[3]
    b, row, column, _ = framed.stride()
    # Always a copy: a reshape may return a view whose rows overlap, which _int_mm misreads.
    shape = (batch * height * width, 9 * channels)
    columns = scratch_matrix(*shape, dtype) if scratch else torch.empty(shape, dtype=dtype)
    if channels < NARROW_IM2COL_CHANNELS:
        rows = columns.view(batch, height, width, 3, 3 * channels)
        for ky in range(3):
            rows[:, :, :, ky].copy_(framed.as_strided((batch, height, width, 3 * channels), (b, row, column, 1),
                                                      framed.storage_offset() + ky * row))
        return columns
    windows = framed.as_strided((batch, height, width, 3, 3, channels), (b, row, column, row, column, 1))
    columns.view(windows.shape).copy_(windows)
    return columns


def _limb_columns(b: torch.Tensor, count: int) -> torch.Tensor:
    """b's 7-bit limbs side by side (K x count*N int8), written in place of a cat."""
    if count == 1:
        return b.to(torch.int8)
    columns = b.shape[1]
    out = torch.empty(b.shape[0], count * columns, dtype=torch.int8)
    split_limbs(b, SEVEN_BIT_LIMB_BITS, count, [out[:, i * columns:(i + 1) * columns] for i in range(count)])
    return out


class IntConv3x3(nn.Module):
    """A same-padded 3x3 convolution on integers (NHWC), with explicit exact forward and backward.

    ``input_exponent`` / ``output_exponent`` and ``output_range`` fix the
    activation grids; ``input_limbs`` is how many 8-bit limbs the input
    needs (1: int8; 2: 16 bits); ``weight_limbs`` how many 7-bit limbs the
    weights get (1: [-64, 63]; 2: [-8256, 8127]); ``gradient_limbs`` how many
    7-bit limbs a gradient gets (|g| <= gradient_limit).  Weight exponents are
    calibrated once from the initial weights (the largest magnitude lands in
    the top limb) and then fixed; later weights are clamped onto the grid.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, *, input_exponent: int, output_exponent: int,
                 output_range: tuple[int, int] = HIDDEN_RANGE, input_limbs: int = 1, weight_limbs: int = 1,
                 per_channel: bool = True, gradient_limbs: int = GRADIENT_LIMBS):
        super().__init__()
        if weight.shape[2:] != (3, 3):
            raise ValueError("IntConv3x3 needs a 3x3 kernel")
        self.weight = nn.Parameter(weight.detach().double().clone())
        self.bias = nn.Parameter(bias.detach().double().clone())
        # Part of the model (checkpoints carry them), fixed after calibration: (input, output).
        self.register_buffer("activation_exponents", torch.tensor([int(input_exponent), int(output_exponent)]))
        self.output_range = (int(output_range[0]), int(output_range[1]))
        self.input_limbs, self.weight_limbs = int(input_limbs), int(weight_limbs)
        self.input_range = limb_range(FULL_LIMB_BITS, self.input_limbs)
        self.weight_range = limb_range(SEVEN_BIT_LIMB_BITS, self.weight_limbs)
        self.gradient_limbs = int(gradient_limbs)
        self.gradient_limit = gradient_limit(self.gradient_limbs)
        magnitudes = self.weight.detach().abs().amax(dim=(1, 2, 3))
        if not per_channel:
            magnitudes = magnitudes.amax().expand_as(magnitudes)
        top_bits = self.weight_range[1].bit_length()  # 6 for one limb, 13 for two
        exponents = [math.frexp(float(m))[1] - top_bits if m > 0 else -top_bits for m in magnitudes]
        self.register_buffer("weight_exponents", torch.tensor(exponents, dtype=torch.int64))

    @property
    def input_exponent(self) -> int:
        return int(self.activation_exponents[0])

    @property
    def output_exponent(self) -> int:
        return int(self.activation_exponents[1])

    @property
    def weight_coarsening(self) -> torch.Tensor:
        """The input gradient sums over output channels, so it takes the weights on one scale, the
        coarsest: W_c rounded by (max e - e_c) bits (a right shift cannot leave W's range, so W's
        limbs still do; exact per-channel weights, W << (e_c - min e), measured 2 limbs and a
        ~25% slower step on v6)."""
        return self.weight_exponents.max() - self.weight_exponents

    # -- the integer grids ---------------------------------------------------
    def weight_ints(self) -> torch.Tensor:
        """round_half_up(w * 2**-e) clamped to the limbs' range: elementwise, exact in float64."""
        scale = torch.ldexp(torch.ones_like(self.weight[:, 0, 0, 0]), -self.weight_exponents.double())
        scaled = self.weight.detach() * scale[:, None, None, None]
        return torch.floor(scaled + 0.5).clamp_(*self.weight_range).to(torch.int32)

    def bias_ints(self) -> torch.Tensor:
        """The bias in accumulator units (exponent input + weight[c]), rounded half up."""
        exponents = (self.input_exponent + self.weight_exponents).double()
        return torch.floor(torch.ldexp(self.bias.detach(), -exponents) + 0.5).long()

    def _output_shift(self) -> int | torch.Tensor:
        shifts = self.output_exponent - (self.input_exponent + self.weight_exponents)
        first = int(shifts[0])
        return first if bool((shifts == first).all()) else shifts

    def _bound(self, depth: int, a: tuple[int, int], b: tuple[int, int]) -> int:
        return depth * max(-a[0], a[1]) * max(-b[0], b[1])

    def input_gradient_bound(self) -> int:
        """The largest |input gradient| integer backward_ints can return."""
        limit = self.gradient_limit
        return self._bound(9 * self.weight.shape[0], (-limit, limit), self.weight_range)

    def prepared(self) -> _Prepared:
        """Everything a step derives from the weights alone, computed once per weight value.

        The master weights change only in optimiser steps (in place, which bumps their
        version counters), so the integer weights, their limb matrices for the forward
        and the input-gradient products, the bias in accumulator units and the output
        shift are cached under the parameters' and buffers' versions and storage: a
        coupling network that serves several levels, and every pass of a frozen
        network, rounds its weights once.  A deep copy (another network) never sees
        the original's cache: it is tied to the original weight object by a weak
        reference."""
        key = (self.weight._version, self.bias._version, self.activation_exponents._version,
               self.weight_exponents._version, self.weight.data_ptr(), self.bias.data_ptr(), self.weight.dtype)
        cache = self.__dict__.get("_prepared_cache")
        if cache is not None and cache[0]() is self.weight and cache[1] == key:
            return cache[2]
        with torch.no_grad():
            value = self._prepare()
        self.__dict__["_prepared_cache"] = (weakref.ref(self.weight), key, value)
        return value

    def _scales(self) -> _Scales:
        """What depends on the exponents alone (fixed after calibration): computed once per value."""
        key = (self.activation_exponents._version, self.weight_exponents._version, self.weight.dtype,
               self.activation_exponents.data_ptr(), self.weight_exponents.data_ptr())
        cache = self.__dict__.get("_scales_cache")
        if cache is not None and cache[0]() is self.weight_exponents and cache[1] == key:
            return cache[2]
        exponents = self.weight_exponents
        weight_scale = torch.ldexp(torch.ones_like(self.weight[:, 0, 0, 0]), -exponents.double())[:, None, None, None]
        # ldexp(bias, e) is bias * 2**e: the power of two once, as torch.ldexp computes it.
        bias_scale = torch.ldexp(torch.ones_like(self.bias.detach()), -(self.input_exponent + exponents).double())
        coarsening = self.weight_coarsening.to(torch.int32)
        coarse = None
        if bool(coarsening.any()):
            coarse = (rounding_half(coarsening)[:, None, None, None], coarsening[:, None, None, None])
        shift = self._output_shift()
        # shift_round(acc + bias, shift) = ((acc << l) + (bias << l) + half(r)) >> r with
        # l = max(0, -shift) and r = max(0, shift), per channel: three in-place passes.
        if isinstance(shift, int):
            left_shift, right_shift = max(0, -shift), max(0, shift)
        else:
            left_shift, right_shift = (-shift).clamp(min=0), shift.clamp(min=0)
            left_shift = left_shift if bool(left_shift.any()) else 0
        left = max(0, int(torch.as_tensor(left_shift).max()))  # the largest multiplication, 2**left
        product_bound = self._bound(9 * self.weight.shape[1], self.input_range, self.weight_range)
        half = rounding_half(right_shift)
        channels = self.weight.shape[0]

        def per_channel(value) -> np.ndarray:
            return torch.as_tensor(value, dtype=torch.int64).reshape(-1).expand(channels).contiguous().numpy()

        compiled = None
        if self.weight.dtype == torch.float64:  # the compiled pass's operands (conv_kernels.prepare_weights)
            coarse_half, coarse_shift = (0, 0) if coarse is None else coarse
            compiled = (weight_scale.reshape(-1).contiguous().numpy(), bias_scale.contiguous().numpy(),
                        per_channel(coarse_half), per_channel(coarse_shift), per_channel(left_shift), per_channel(half))
        value = _Scales(weight_scale, bias_scale, coarse, left_shift, right_shift, half, left,
                        product_bound, self.input_exponent, int(exponents.max()), compiled)
        self.__dict__["_scales_cache"] = (weakref.ref(self.weight_exponents), key, value)
        return value

    def _prepare(self) -> _Prepared:
        scales = self._scales()
        if scales.compiled is not None and conv_kernels.available():
            prepared = self._prepare_compiled(scales)
            if prepared is not None:
                return prepared
        # weight_ints and bias_ints, with their scales computed once: the same IEEE operations,
        # the later ones in place.
        weights = torch.mul(self.weight.detach(), scales.weight_scale).add_(0.5).floor_().clamp_(*self.weight_range)
        weights = weights.to(torch.int32)
        bias = torch.mul(self.bias.detach(), scales.bias_scale).add_(0.5).floor_().long()
        out_channels, in_channels = weights.shape[:2]
        columns = _limb_columns(weights.permute(2, 3, 1, 0).reshape(-1, out_channels), self.weight_limbs)
        coarse = weights if scales.coarse is None else (weights + scales.coarse[0]).bitwise_right_shift_(
            scales.coarse[1])
        rows = coarse.flip(2, 3).permute(2, 3, 0, 1).reshape(-1, in_channels)  # (ky, kx, co) x ci
        input_gradient_bound = self.input_gradient_bound()
        if input_gradient_bound << LEAKY_SHIFT >= INT32_LIMIT and rows.numel():
            # |input gradient| <= limit * (the largest column sum of |rows|): a bound from the actual
            # weights, far below the limbs' static one, keeps the leaky ReLU's x8 inside int32.
            input_gradient_bound = self.gradient_limit * int(rows.abs().sum(0).max())
        offset = (bias << scales.left_shift) + scales.half
        wide = (scales.product_bound << scales.left) + int(offset.abs().max()) >= INT32_LIMIT
        dtype = torch.int64 if wide else torch.int32
        left_shift, right_shift = (shift if isinstance(shift, int) else shift.to(dtype)
                                   for shift in (scales.left_shift, scales.right_shift))
        return _Prepared(weights, columns, _limb_columns(rows, self.weight_limbs), offset.to(dtype), left_shift,
                         right_shift, dtype, scales.product_bound, input_gradient_bound, scales.input_exponent,
                         scales.coarsest)

    def _prepare_compiled(self, scales: _Scales) -> _Prepared | None:
        """``_prepare``'s integers from one compiled pass (exact/conv_kernels.py), or None for weights or
        biases that are not finite or beyond int64 (the torch passes then give their integers).

        Why: the torch passes are some thirty small operations per conv (~0.15 ms), and an adapting
        network's convs change every batch, so each batch pays them again in every process that
        replays it (18 convs in v7's RGB network)."""
        weight = self.weight.detach().contiguous()
        out_channels, in_channels = weight.shape[:2]
        limbs = self.weight_limbs
        weights = torch.empty(weight.shape, dtype=torch.int32)
        columns = torch.empty(9 * in_channels, limbs * out_channels, dtype=torch.int8)
        rows = torch.empty(9 * out_channels, limbs * in_channels, dtype=torch.int8)
        offset = torch.empty(out_channels, dtype=torch.int64)
        finite, column_sum, largest_offset = conv_kernels.prepare_weights(
            weight.numpy(), scales.compiled[0], *self.weight_range, self.bias.detach().contiguous().numpy(),
            *scales.compiled[1:], limbs, weights.numpy(), columns.numpy(), rows.numpy(), offset.numpy())
        if not finite:
            return None
        input_gradient_bound = self.input_gradient_bound()
        if input_gradient_bound << LEAKY_SHIFT >= INT32_LIMIT and rows.numel():
            input_gradient_bound = self.gradient_limit * int(column_sum)  # as _prepare: from the actual weights
        wide = (scales.product_bound << scales.left) + int(largest_offset) >= INT32_LIMIT
        dtype = torch.int64 if wide else torch.int32
        left_shift, right_shift = (shift if isinstance(shift, int) else shift.to(dtype)
                                   for shift in (scales.left_shift, scales.right_shift))
        return _Prepared(weights, columns, rows, offset.to(dtype), left_shift, right_shift, dtype,
                         scales.product_bound, input_gradient_bound, scales.input_exponent, scales.coarsest)

    # -- forward and backward ------------------------------------------------
    def _accumulate(self, source: torch.Tensor, prep: _Prepared, kernel: Kernel | None, keep_patches: bool = True,
                    given: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(patches, the requantised sums before the clamp, positions x Co) of a framed source.

        ``source``: input_limbs * B framed images (int8), each limb's images stacked along the batch.
        Without ``keep_patches`` (no weight gradient will need them) the patches are the thread's
        scratch matrix and None is returned for them.  ``given``: im2col of this very source, made
        by an earlier pass (exact/trunk.py), read instead of made again (never written)."""
        kernel = kernel or current_kernel()
        if given is not None and given.dtype == kernel.operand_dtype:
            patches = given
        else:  # a float kernel's copy, converted once for both products
            patches = _im2col(source, kernel.operand_dtype, scratch=not keep_patches)
        acc = stacked_product(patches, self.input_limbs, prep.columns, self.weight_limbs, kernel, prep.product_bound)
        if acc.dtype != prep.dtype:
            acc = acc.to(prep.dtype)
        if not isinstance(prep.left_shift, int) or prep.left_shift:
            acc.bitwise_left_shift_(prep.left_shift)  # a negative output shift multiplies
        # The bias and shift_round's half step in one pass, then the shift: (acc + b + half) >> s.
        return patches if keep_patches else None, acc.add_(prep.offset).bitwise_right_shift_(prep.right_shift)

    def _clamp(self, shifted: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(shifted clamped to one beyond the output range, whether anything was clamped).

        One step beyond the range on either side keeps the clamp's gradient mask (zero
        there) in the same tensor as the value: y = clamp(c, low, high), inside = low <= c <= high."""
        low, high = self.output_range
        if not shifted.numel():
            return shifted, False
        smallest, largest = (int(v) for v in torch.aminmax(shifted))
        if smallest >= low and largest <= high:
            return shifted, False
        return shifted.clamp_(low - 1, high + 1), True

    def forward_ints(self, x: torch.Tensor, kernel: Kernel | None = None, framed: bool = False
                     ) -> tuple[torch.Tensor, _Saved]:
        """x: B x H x W x Ci integers on the input grid -> (y on the output grid, what backward needs).

        With ``framed``, x is B x (H+2) x (W+2) x Ci with a zero frame (see ``padded``),
        which saves a copy.
        """
        if framed:
            batch, height, width = x.shape[0], x.shape[1] - 2, x.shape[2] - 2
            source = x.to(torch.int8) if self.input_limbs == 1 else torch.cat(
                split_limbs(x, FULL_LIMB_BITS, self.input_limbs))
        else:
            batch, height, width = x.shape[:3]
            source = _padded_limbs(x, self.input_limbs)
        saved = self._forward_saved(source, (batch, height, width, x.shape[3]), kernel)
        y = saved.values.clamp(*self.output_range) if saved.clamped else saved.values.clone()
        return y.to(torch.int32).reshape(batch, height, width, -1), saved

    def _forward_saved(self, source: torch.Tensor, shape: tuple, kernel: Kernel | None, keep_patches: bool = True,
                       given: torch.Tensor | None = None) -> _Saved:
        prep = self.prepared()
        patches, shifted = self._accumulate(source.to(torch.int8), prep, kernel, keep_patches, given)
        values, clamped = self._clamp(shifted)
        return _Saved(patches, prep, values, clamped, shape)

    def backward_ints(self, saved: _Saved, grad: Fixed, kernel: Kernel | None = None,
                      need_input: bool = True, masked: bool = False) -> Fixed | None:
        """The output's gradient -> parameter gradients (set as .grad, float64) and the input's gradient.

        ``masked``: the clamp's mask is already applied to ``grad`` (IntConvStack folds it
        into the leaky ReLU's gradient), which saves a pass; ``grad.ints`` is then the
        caller's scratch and is overwritten.
        """
        input_grad, self.weight.grad, self.bias.grad = self.gradients(saved, grad, kernel, need_input, masked)
        return input_grad

    def gradients(self, saved: _Saved, grad: Fixed, kernel: Kernel | None = None, need_input: bool = True,
                  masked: bool = False, need_weight: bool = True
                  ) -> tuple[Fixed | None, torch.Tensor | None, torch.Tensor]:
        """``backward_ints``'s three gradients, returned: (input, weight or None, bias).

        The weight gradient, the costliest product, is skipped without ``need_weight``
        (adaptation of biases only)."""
        batch, height, width, in_channels = saved.shape
        positions = batch * height * width
        ints = grad.ints.reshape(positions, -1)
        scratch = masked
        if not masked and saved.clamped:
            ints, scratch = ints * _inside(saved.values, *self.output_range), True
        limit = self.gradient_limit
        g_columns, exponent, total = _gradient_columns(ints, grad.exponent, limit, self.gradient_limbs, scratch)
        if total is None:
            # The bias gradient (g's column sums) as one more limb product: a row of ones times g's limbs.
            ones = torch.ones(1, positions, dtype=torch.int8)
            total = stacked_product(ones, 1, g_columns, self.gradient_limbs, kernel, positions * limit)[0]
        bias_grad = _as_float(total, exponent, positions * limit)
        weight_grad = None
        if need_weight:
            bound = self._bound(positions, self.input_range, (-limit, limit))
            weight_ints = _weight_product(saved.patches, self.input_limbs, g_columns, self.gradient_limbs, kernel,
                                          bound)
            weight_ints = weight_ints.view(3, 3, in_channels, -1).permute(3, 2, 0, 1)
            weight_grad = _as_float(weight_ints, saved.prep.input_exponent + exponent, bound)
        if not need_input:
            return None, weight_grad, bias_grad
        # The transposed convolution: the windows of g (its 7-bit limbs, already split for the
        # weight gradient, each in a zero frame) times the kernel rotated by 180 degrees.
        out_channels = g_columns.shape[1] // self.gradient_limbs
        framed = padded(self.gradient_limbs * batch, height, width, out_channels)
        for limb in range(self.gradient_limbs):
            interior(framed[limb * batch:(limb + 1) * batch]).copy_(
                g_columns[:, limb * out_channels:(limb + 1) * out_channels].view(batch, height, width, -1))
        kernel = kernel or current_kernel()
        input_grad = stacked_product(_im2col(framed, kernel.operand_dtype, scratch=True), self.gradient_limbs,
                                     saved.prep.rows,
                                     self.weight_limbs, kernel, saved.prep.input_gradient_bound,
                                     a_width=SEVEN_BIT_LIMB_BITS)
        return (Fixed(input_grad.view(batch, height, width, in_channels), exponent + saved.prep.coarsest), weight_grad,
                bias_grad)


class _Prepared(NamedTuple):
    """IntConv3x3.prepared: what one weight value gives every pass (see there)."""

    weights: torch.Tensor  # Co x Ci x 3 x 3 int32, on the weight grid
    columns: torch.Tensor  # the forward product's second operand: (ky, kx, ci) x co, 7-bit limbs side by side
    rows: torch.Tensor  # the input gradient's: (ky, kx, co) x ci, rotated by 180 degrees and coarsened, limbs
    offset: torch.Tensor  # Co: (the bias in accumulator units << left_shift) + shift_round's half step
    left_shift: int | torch.Tensor  # max(0, -output shift): a negative shift multiplies
    right_shift: int | torch.Tensor  # max(0, output shift) (per channel if the weight exponents differ)
    dtype: torch.dtype  # the accumulator: int32 when every sum + offset stays below 2**31
    product_bound: int  # the largest |forward product|
    input_gradient_bound: int  # the largest |input gradient| these weights give
    input_exponent: int  # the input grid's exponent (read once per exponent value, not per backward pass)
    coarsest: int  # the largest weight exponent: the input gradient's weights are on it


class _Scales(NamedTuple):
    """IntConv3x3._scales: what the exponents alone give every pass."""

    weight_scale: torch.Tensor  # Co x 1 x 1 x 1: 2**-e_c (weight_ints' scale)
    bias_scale: torch.Tensor  # Co: 2**-(input exponent + e_c) (bias_ints' scale)
    coarse: tuple | None  # the input gradient's weight coarsening: (half step, shift), Co x 1 x 1 x 1
    left_shift: int | torch.Tensor  # max(0, -output shift), per channel
    right_shift: int | torch.Tensor  # max(0, output shift), per channel
    half: int | torch.Tensor  # shift_round's half step of right_shift
    left: int  # the largest left_shift
    product_bound: int  # the largest |forward product|
    input_exponent: int  # the input grid's exponent
    coarsest: int  # the largest weight exponent
    compiled: tuple | None  # float64 weights: (weight scale, bias scale, coarsening half step and shift, left
    # shift, half step), per channel as numpy arrays, for conv_kernels.prepare_weights


class _Saved(NamedTuple):
    """What a conv's backward needs from its forward pass."""

    patches: torch.Tensor | None  # im2col of the input (input_limbs blocks of rows); None if not kept
    prep: _Prepared  # the weights of the pass
    values: torch.Tensor  # positions x Co: the requantised output, clamped one beyond the range
    clamped: bool  # whether anything lies beyond the range (else values is the output itself)
    shape: tuple  # (B, H, W, Ci)


def _inside(values: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """1 where low <= values <= high, else 0, as values' dtype (values lie in [low - 1, high + 1])."""
    return (values - (low - 1)).clamp_(max=1).mul_(torch.sub(high + 1, values).clamp_(max=1))


def _gradient_columns(ints: torch.Tensor, exponent: int, limit: int, limbs: int, scratch: bool
                      ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """quantize_gradient's rounding and _limb_columns' split in one go: (positions x limbs*C int8, exponent,
    the column sums of the rounded gradient (int64) where the compiled pass made them, else None).

    For two 7-bit limbs, t = round_half_up(g / 2**s) + 64 = (g + half + 64 * 2**s) >> s;
    the high limb is t >> 7 and the low one (t & 127) - 64 (split_limbs' rule), each
    written straight into its int8 columns.  ``scratch``: ``ints`` may be overwritten."""
    positions, channels = ints.shape
    if not ints.numel() or limbs > 2:
        g = quantize_gradient(ints, exponent, limit, in_place=scratch)
        return _limb_columns(g.ints, limbs), g.exponent, None
    low, high = (int(v) for v in torch.aminmax(ints))
    shift = max(0, max(high, -low).bit_length() - limit.bit_length())
    while (high + rounding_half(shift)) >> shift > limit or (low + rounding_half(shift)) >> shift < -limit:
        shift += 1
    if limbs == 1:
        if shift:
            t = ints.long() if ints.dtype == torch.int32 and high + rounding_half(shift) >= INT32_LIMIT else ints
            t = (t.add_ if scratch and t is ints else t.add)(rounding_half(shift)).bitwise_right_shift_(shift)
        else:
            t = ints
        return t.to(torch.int8), exponent + shift, None
    add = rounding_half(shift) + (1 << (SEVEN_BIT_LIMB_BITS - 1) << shift)
    if conv_kernels.available() and ints.dtype in (torch.int32, torch.int64) and ints.is_contiguous():
        # One compiled pass instead of seven (the int16 ones are slow): the same integers.
        columns = torch.empty(positions, 2 * channels, dtype=torch.int8)
        sums = torch.zeros(channels, dtype=torch.int64)
        conv_kernels.gradient_columns(ints.numpy(), add, shift, columns.numpy(), sums.numpy())
        return columns, exponent + shift, sums
    if ints.dtype != torch.int64 and (high + add >= INT32_LIMIT or low + add < -INT32_LIMIT):
        ints, scratch = ints.long(), True
    t = (ints.add_(add) if scratch else ints + add).bitwise_right_shift_(shift)  # round_half_up(g / 2**s) + 64
    t = t.to(torch.int16)  # in [-8063, 8191]: the limb passes run on half the bytes
    columns = torch.empty(positions, 2 * channels, dtype=torch.int8)
    columns[:, channels:].copy_(t >> SEVEN_BIT_LIMB_BITS)
    columns[:, :channels].copy_(t.bitwise_and_((1 << SEVEN_BIT_LIMB_BITS) - 1).sub_(1 << (SEVEN_BIT_LIMB_BITS - 1)))
    return columns, exponent + shift, None


def _weight_product(patches: torch.Tensor, input_limbs: int, g_columns: torch.Tensor, gradient_limbs: int,
                    kernel: Kernel | None, bound: int) -> torch.Tensor:
    """im2col(x)^T @ g exactly: each input limb's block of patches, transposed in place (a view), times g's limbs.

    The input limbs are K blocks here (rows of patches), so each block is its own product,
    recombined with 8-bit shifts, instead of a copy that stacks the transposed blocks."""
    if input_limbs == 1:
        return stacked_product(patches.T, 1, g_columns, gradient_limbs, kernel, bound)
    positions = patches.shape[0] // input_limbs
    block_bound = positions * (1 << (FULL_LIMB_BITS - 1)) * gradient_limit(gradient_limbs)
    total = None
    for limb, block in enumerate(patches.split(positions)):
        part = stacked_product(block.T, 1, g_columns, gradient_limbs, kernel, block_bound)
        part = part.long() if bound >= INT32_LIMIT else part
        total = part if total is None else total.add_(part.__ilshift__(FULL_LIMB_BITS * limb))
    return total


def leaky_relu_ints(y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Slope 1/8 on the same grid: y if y > 0 else round_half_up(y / 8); [-1024, 127] -> [-128, 127].

    max(y, (y + 4) >> 3) is that: for y > 0, (y + 4) >> 3 <= y; for y <= 0 it is >= y.
    """
    return torch.maximum(y, (y + (1 << (LEAKY_SHIFT - 1))) >> LEAKY_SHIFT, out=out)


def leaky_relu_backward(grad: Fixed, y: torch.Tensor, bound: int, inside: torch.Tensor | None = None) -> Fixed:
    """Gradient 1 above zero, 1/8 elsewhere, exactly: the positive side is multiplied by 8 instead.

    One multiplier per position, 8 where y > 0 and 1 elsewhere, times ``inside``
    (the clamp's mask of the conv that produced y, if given: 0 where it clamped).
    ``bound``: the largest |grad.ints|; int32 stays int32 while 8 * bound < 2**31.
    """
    ints = grad.ints if grad.ints.dtype == torch.int64 or (bound << LEAKY_SHIFT) < INT32_LIMIT \
        else grad.ints.long()
    multiplier = (y > 0).to(ints.dtype).mul_((1 << LEAKY_SHIFT) - 1).add_(1)
    if inside is not None:
        multiplier.mul_(inside.view(multiplier.shape))
    return Fixed(ints * multiplier, grad.exponent - LEAKY_SHIFT)


def layer_layout(count: int, output_limbs: int = 2, first_weight_limbs: int = 1, last_input_limbs: int = 1
                 ) -> list[dict]:
    """Each conv's ``output_range``, ``input_limbs`` and ``weight_limbs`` in a stack of ``count``.

    The last conv's output has ``output_limbs`` 8-bit limbs; a hidden conv's output range
    is what the leaky ReLU maps onto the next conv's input range ([8 low, high] ->
    [low, high]); only the last conv's input may be wider than one limb, and only the
    first conv's weights wider than one 7-bit limb.
    """
    layers = []
    for index in range(count):
        last = index == count - 1
        if last:
            output_range = limb_range(FULL_LIMB_BITS, output_limbs)
        else:
            low, high = limb_range(FULL_LIMB_BITS, last_input_limbs if index == count - 2 else 1)
            output_range = (low << LEAKY_SHIFT, high)
        layers.append({"output_range": output_range,
                       "input_limbs": last_input_limbs if last and index else 1,
                       "weight_limbs": first_weight_limbs if index == 0 else 1})
    return layers


class IntConvStack(nn.Module):
    """conv -> leaky ReLU -> ... -> conv on engine 2 (the shape of exact/layers.ConvStack).

    ``step_ints`` runs forward and backward: it returns the output (on the last
    layer's grid) and leaves float64 gradients on the master parameters for
    exact/optim.ExactAdam.
    """

    def __init__(self, convs: list[IntConv3x3]):
        super().__init__()
        self.convs = nn.ModuleList(convs)

    @classmethod
    def from_float(cls, weights: list[tuple[torch.Tensor, torch.Tensor]], samples, input_exponent: int,
                   output_limbs: int = 2, first_weight_limbs: int = 1, last_input_limbs: int = 1,
                   clip_bits: int = 0, **options) -> IntConvStack:
        """Engine-2 layers for float (weight, bias) pairs, activation exponents calibrated on ``samples``.

        ``samples``: a float B x Ci x H x W batch or a list of them; each layer's
        output exponent is the smallest that holds the samples' extremes
        (power-of-two scales from min/max).  Hidden outputs use HIDDEN_RANGE; the
        last layer's output gets ``output_limbs`` 8-bit limbs (2: 16 bits).
        ``first_weight_limbs``: 7-bit limbs of the first conv's weights (2: 14 bits);
        ``last_input_limbs``: 8-bit limbs of the last conv's input (2: 16 bits).
        ``clip_bits``: make every activation scale 2**clip_bits finer than min/max gives
        (the rare values beyond are clamped): post-training, 1 bit cost v6 far less than
        the resolution it bought (docs/ENGINE2.md).
        ``options`` go to every IntConv3x3 (per_channel, gradient_limbs).
        """
        samples = list(samples) if isinstance(samples, (list, tuple)) else [samples]
        convs, exponent, xs = [], input_exponent, [sample.double() for sample in samples]
        layers = layer_layout(len(weights), output_limbs, first_weight_limbs, last_input_limbs)
        for (weight, bias), layer in zip(weights, layers):
            ys = [torch.nn.functional.conv2d(x, weight.double(), bias.double(), padding=1) for x in xs]
            low, high = layer["output_range"]
            peak = max(max(float(y.max()) / high, float(y.min()) / low) for y in ys)
            output_exponent = math.ceil(math.log2(max(peak, 2.0 ** -60))) - clip_bits
            convs.append(IntConv3x3(weight, bias, input_exponent=exponent, output_exponent=output_exponent,
                                    **layer, **options))
            xs, exponent = [torch.nn.functional.leaky_relu(y, 1 / 8) for y in ys], output_exponent
        return cls(convs)

    def _forward(self, x: torch.Tensor, kernel: Kernel | None, keep: bool, framed: bool = False,
                 patches: list[bool] | None = None, start: int = 0, inputs: list | None = None,
                 last_patches: torch.Tensor | None = None, patches_out: list | None = None
                 ) -> tuple[Fixed, list[_Saved | None]]:
        """(the output, what backward needs if ``keep``) of B x H x W x Ci integer input x.

        ``framed``: x is already the first conv's int8 input in a zero frame
        (B x (H+2) x (W+2) x Ci, see ``padded``).  Each hidden output goes through the
        leaky ReLU straight into the next conv's framed int8 input.  ``patches``: per conv,
        whether backward will need its patches (its weight gradient; default: all if ``keep``).
        ``start``: x is conv ``start``'s framed input (its limbs stacked along the batch), as
        an earlier pass made it; the convs below are not run and their saved entries are None
        (backward must not reach them: intlayers.TrunkMemo).  ``inputs``: a list that receives
        the framed input of every conv after the first that runs, in order.  ``last_patches``: the
        last conv's im2col of its input, made by an earlier pass from the very tensor that is its
        input now (exact/trunk.py), read instead of made again; ``patches_out``: a list that receives
        the last conv's patches (kept in memory of their own, for a later pass)."""
        if patches is None or not keep:
            patches = [keep] * len(self.convs)
        final = len(self.convs) - 1
        first = self.convs[start]
        if framed or start:
            source, shape = x, (x.shape[0] // first.input_limbs, x.shape[1] - 2, x.shape[2] - 2)
        else:
            source, shape = _padded_limbs(x, first.input_limbs), tuple(x.shape[:3])
        saved: list[_Saved | None] = [None] * start if keep else []
        for index in range(start, len(self.convs)):
            conv = self.convs[index]
            if inputs is not None and index > start:
                inputs.append(source)
            if index < final:
                memo = conv._forward_saved(source, shape + (source.shape[3],), kernel, patches[index])
                source, values = _leaky_framed(memo, conv.output_range, self.convs[index + 1].input_limbs, shape)
                memo = memo._replace(values=values)
            else:
                memo = conv._forward_saved(source, shape + (source.shape[3],), kernel,
                                           patches[index] or patches_out is not None, last_patches)
                if patches_out is not None:
                    patches_out.append(memo.patches)
                if not patches[index]:
                    memo = memo._replace(patches=None)
            if keep:
                saved.append(memo)
        last = self.convs[-1]
        y = memo.values.clamp(*last.output_range) if memo.clamped else memo.values
        return Fixed(y.to(torch.int32).reshape(*shape, -1), last.output_exponent), saved

    @torch.no_grad()
    def forward_ints(self, x: torch.Tensor, kernel: Kernel | None = None) -> Fixed:
        """The output of B x H x W x Ci int8 input x, without what backward would need."""
        return self._forward(x, kernel, keep=False)[0]

    def step_ints(self, x: torch.Tensor, loss_grad, kernel: Kernel | None = None) -> Fixed:
        """Forward, then backward of ``loss_grad(output: Fixed) -> Fixed`` (the loss's gradient).

        x: B x H x W x Ci int8 (the first layer takes one limb).
        """
        output, saved = self._forward(x, kernel, keep=True)
        gradients = self.backward(saved, loss_grad(output), kernel)
        for conv, (weight_grad, bias_grad) in zip(self.convs, gradients):
            conv.weight.grad, conv.bias.grad = weight_grad, bias_grad
        return output

    def backward(self, saved: list[_Saved], grad: Fixed, kernel: Kernel | None = None,
                 wanted: list[tuple[bool, bool]] | None = None, scratch: bool = False
                 ) -> list[tuple[torch.Tensor | None, ...]]:
        """The output's gradient -> (weight gradient, bias gradient) of every conv, float64.

        ``saved`` comes from ``_forward(..., keep=True)``.  ``wanted``: per conv, whether
        its (weight, bias) gradients are needed (default: all); the pass stops below the
        lowest conv with a wanted gradient, and a weight gradient nobody wants is not
        computed (None is returned for what is skipped).  ``scratch``: ``grad.ints`` may
        be overwritten (it is the caller's own copy).
        """
        wanted = wanted or [(True, True)] * len(self.convs)
        needed = [index for index, pair in enumerate(wanted) if any(pair)]
        gradients: list[tuple[torch.Tensor | None, ...]] = [(None, None)] * len(self.convs)
        if not needed:
            return gradients
        lowest = needed[0]
        last = self.convs[-1]
        if saved[-1].clamped:  # the clamp's mask of the last conv (the hidden ones fold theirs below)
            grad = Fixed(grad.ints.reshape(saved[-1].values.shape) * _inside(saved[-1].values, *last.output_range),
                         grad.exponent)
            scratch = True
        for index in reversed(range(lowest, len(self.convs))):
            conv = self.convs[index]
            grad, weight_grad, bias_grad = conv.gradients(saved[index], grad, kernel, need_input=index > lowest,
                                                          masked=scratch, need_weight=wanted[index][0])
            gradients[index] = (weight_grad, bias_grad if wanted[index][1] else None)
            if index > lowest:
                below = self.convs[index - 1]
                grad = _leaky_gradient(grad, saved[index - 1], below.output_range,
                                       saved[index].prep.input_gradient_bound)
                scratch = True
        return gradients


def _leaky_framed(saved: _Saved, output_range: tuple[int, int], next_limbs: int, shape: tuple
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The leaky ReLU of a hidden conv's output, written into the next conv's framed input limbs.

    leaky(clamp(c, low, high)) = clamp(leaky(c), leaky(low), leaky(high)) (leaky is
    monotone), so it is computed on the values clamped one beyond the range, then
    clamped only if anything was: max(c, (c + 4) >> 3), as leaky_relu_ints.
    Returns (the framed input, the values in the narrowest type that holds them:
    int16 for an int8 next input, what backward keeps)."""
    values = saved.values
    if conv_kernels.available() and values.dim() == 2 and values.is_contiguous():
        return _leaky_framed_compiled(saved, output_range, next_limbs, shape)
    if next_limbs == 1:  # values in [-1025, 128]
        values = values.to(torch.int16)
    t = values + (1 << (LEAKY_SHIFT - 1))
    torch.maximum(values, t.bitwise_right_shift_(LEAKY_SHIFT), out=t)
    if saved.clamped:
        low, high = output_range
        t.clamp_(max(low, (low + (1 << (LEAKY_SHIFT - 1))) >> LEAKY_SHIFT), high)
    batch = shape[0]
    framed = padded(next_limbs * batch, *shape[1:], values.shape[1])
    t = t.view(*shape, -1)
    if next_limbs == 1:
        interior(framed).copy_(t)
    else:
        split_limbs(t, FULL_LIMB_BITS, next_limbs,
                    [interior(framed[i * batch:(i + 1) * batch]) for i in range(next_limbs)])
    return framed, values


def _leaky_framed_compiled(saved: _Saved, output_range: tuple[int, int], next_limbs: int, shape: tuple
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``_leaky_framed`` in one compiled pass (exact/conv_kernels.py): the same integers."""
    values = saved.values
    low, high = output_range
    framed = padded(next_limbs * shape[0], *shape[1:], values.shape[1])
    narrow = torch.empty(values.shape, dtype=torch.int16) if next_limbs == 1 else torch.empty(0, 0, dtype=torch.int16)
    conv_kernels.leaky_framed(values.numpy(), LEAKY_SHIFT, bool(saved.clamped),
                              max(low, (low + (1 << (LEAKY_SHIFT - 1))) >> LEAKY_SHIFT), high, framed.numpy(),
                              narrow.numpy())
    return framed, (narrow if next_limbs == 1 else values)


def _leaky_gradient(grad: Fixed, saved: _Saved, output_range: tuple[int, int], bound: int) -> Fixed:
    """leaky_relu_backward folded with the clamp's mask of the conv below: x8 where its output is
    positive (the exponent lowered by 3), x1 at or below zero, x0 where it was clamped.

    ``grad.ints`` (the input gradient of the conv above, |ints| <= ``bound``) is overwritten."""
    values = saved.values
    ints = grad.ints.reshape(values.shape)
    if ints.dtype != torch.int64 and (bound << LEAKY_SHIFT) >= INT32_LIMIT:
        ints = ints.long()
    if conv_kernels.available() and ints.is_contiguous() and values.is_contiguous():
        conv_kernels.leaky_gradient(ints.numpy(), values.numpy(), bool(saved.clamped), *output_range,
                                    1 << LEAKY_SHIFT)  # one compiled pass: the same integers
        return Fixed(ints, grad.exponent - LEAKY_SHIFT)
    positive = values.clamp(0, 1)  # in values' (narrow) type, converted once
    if saved.clamped:
        multiplier = positive.mul_((1 << LEAKY_SHIFT) - 1).add_(1).mul_(_inside(values, *output_range))
        ints = ints.mul_(multiplier.to(ints.dtype))
    else:
        ints = ints.bitwise_left_shift_(positive.mul_(LEAKY_SHIFT).to(ints.dtype))
    return Fixed(ints, grad.exponent - LEAKY_SHIFT)
