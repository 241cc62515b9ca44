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
as engine 1's activation grid.  Gradients keep ``gradient_bits``
significant bits with a per-tensor exponent taken from their exact maximum
(as engine 1's quantize_gradient): |g| <= 2**(gradient_bits - 1), which for
the default 13 is two 7-bit limbs or two 8-bit limbs.

Master weights stay float64 parameters updated by exact/optim.ExactAdam; the
forward pass rounds them onto their integer grid elementwise (exact IEEE
operations), and their gradients are integers times powers of two, which
float64 holds exactly while below 2**53 (``_as_float`` checks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .kernels import (
    FULL_LIMB_BITS,
    SEVEN_BIT_LIMB_BITS,
    Kernel,
    limb_range,
    limbs_needed,
    shift_round,
    split_limbs,
    stacked_product,
)

GRADIENT_BITS = 13
# Hidden layers: the conv output is clamped to [-1024, 127] so that the leaky
# ReLU (slope 1/8, rounded half up) maps it onto the full int8 range [-128, 127].
LEAKY_SHIFT = 3
HIDDEN_RANGE = (-1024, 127)
ACTIVATION_RANGE = limb_range(FULL_LIMB_BITS, 1)
FLOAT64_EXACT = 2 ** 53


@dataclass(frozen=True)
class Fixed:
    """An integer tensor and its power-of-two exponent: the value is ints * 2**exponent."""

    ints: torch.Tensor
    exponent: int


def quantize_gradient(ints: torch.Tensor, exponent: int, bits: int = GRADIENT_BITS) -> Fixed:
    """Keep ``bits`` significant bits: |result| <= 2**(bits - 1), exponent from the exact maximum."""
    peak = int(ints.abs().max()) if ints.numel() else 0
    if peak == 0:
        return Fixed(torch.zeros_like(ints, dtype=torch.int32), exponent)
    shift = max(0, peak.bit_length() - (bits - 1))  # peak / 2**shift < 2**(bits-1): rounds to <= 2**(bits-1)
    return Fixed(shift_round(ints.long(), shift).to(torch.int32), exponent + shift)


def _as_float(ints: torch.Tensor, exponent: int) -> torch.Tensor:
    """ints * 2**exponent in float64, exactly (refused if an integer leaves float64's 53 bits)."""
    if ints.numel() and int(ints.abs().max()) >= FLOAT64_EXACT:
        raise ValueError("an engine-2 gradient left float64's exact integer range")
    return torch.ldexp(ints.double(), torch.tensor(exponent, dtype=torch.float64))


def _im2col(x: torch.Tensor, flipped: bool = False) -> torch.Tensor:
    """B x H x W x C -> (B*H*W) x 9C: the zero-padded 3x3 window of each position, taps (ky, kx) row-major.

    ``flipped`` reads tap (ky, kx) at offset (2 - ky, 2 - kx): the windows of a
    transposed convolution (the input gradient).
    """
    batch, height, width, channels = x.shape
    padded = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
    offsets = [(2 - ky, 2 - kx) if flipped else (ky, kx) for ky in range(3) for kx in range(3)]
    windows = [padded[:, dy:dy + height, dx:dx + width] for dy, dx in offsets]
    return torch.cat(windows, dim=3).reshape(batch * height * width, 9 * channels)


def _limb_stack_rows(x: torch.Tensor, count: int, flipped: bool = False) -> torch.Tensor:
    """im2col of each 8-bit limb of x, stacked down the rows (limbs split before im2col: 9x less work)."""
    if count == 1:
        return _im2col(x.to(torch.int8), flipped)
    return _im2col(torch.cat(split_limbs(x, FULL_LIMB_BITS, count)), flipped)


def _limb_stack_columns(b: torch.Tensor, count: int) -> torch.Tensor:
    if count == 1:
        return b.to(torch.int8)
    return torch.cat(split_limbs(b, SEVEN_BIT_LIMB_BITS, count), dim=1)


class IntConv3x3(nn.Module):
    """A same-padded 3x3 convolution on integers (NHWC), with explicit exact forward and backward.

    ``input_exponent`` / ``output_exponent`` and ``output_range`` fix the
    activation grids; ``input_limbs`` is how many 8-bit limbs the input
    needs (1: int8; 2: 16 bits); ``weight_limbs`` how many 7-bit limbs the
    weights get (1: [-64, 63]; 2: [-8256, 8127]).  Weight exponents are
    calibrated once from the initial weights (the largest magnitude lands in
    the top limb) and then fixed; later weights are clamped onto the grid.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, *, input_exponent: int, output_exponent: int,
                 output_range: tuple[int, int] = HIDDEN_RANGE, input_limbs: int = 1, weight_limbs: int = 1,
                 per_channel: bool = True, gradient_bits: int = GRADIENT_BITS):
        super().__init__()
        if weight.shape[2:] != (3, 3):
            raise ValueError("IntConv3x3 needs a 3x3 kernel")
        self.weight = nn.Parameter(weight.detach().double().clone())
        self.bias = nn.Parameter(bias.detach().double().clone())
        self.input_exponent, self.output_exponent = int(input_exponent), int(output_exponent)
        self.output_range = (int(output_range[0]), int(output_range[1]))
        self.input_limbs, self.weight_limbs = int(input_limbs), int(weight_limbs)
        self.weight_range = limb_range(SEVEN_BIT_LIMB_BITS, self.weight_limbs)
        self.gradient_bits = int(gradient_bits)
        magnitudes = self.weight.detach().abs().amax(dim=(1, 2, 3))
        if not per_channel:
            magnitudes = magnitudes.amax().expand_as(magnitudes)
        top_bits = self.weight_range[1].bit_length()  # 6 for one limb, 13 for two
        exponents = [math.frexp(float(m))[1] - top_bits if m > 0 else -top_bits for m in magnitudes]
        self.register_buffer("weight_exponents", torch.tensor(exponents, dtype=torch.int64))

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

    # -- forward and backward ------------------------------------------------
    def forward_ints(self, x: torch.Tensor, kernel: Kernel | None = None) -> tuple[torch.Tensor, tuple]:
        """x: B x H x W x Ci integers on the input grid -> (y on the output grid, what backward needs)."""
        batch, height, width, _ = x.shape
        weights = self.weight_ints()
        columns = weights.permute(2, 3, 1, 0).reshape(-1, weights.shape[0])  # (ky, kx, ci) x co
        patches = _limb_stack_rows(x, self.input_limbs)
        acc = stacked_product(patches, self.input_limbs, _limb_stack_columns(columns, self.weight_limbs),
                              self.weight_limbs, kernel)
        bias, shift = self.bias_ints(), self._output_shift()
        # An int32 acc (one limb each side) is at most K * 2**13 <= 2**30 in magnitude, so a bias
        # below 2**30 cannot overflow it; otherwise, or if a negative shift would multiply, use int64.
        if acc.dtype == torch.int32 and (int(bias.abs().max()) >= 2 ** 30 or int(torch.as_tensor(shift).min()) < 0):
            acc = acc.long()
        shifted = shift_round(acc + bias.to(acc.dtype), shift)
        inside = (shifted >= self.output_range[0]) & (shifted <= self.output_range[1])
        y = shifted.clamp_(*self.output_range).to(torch.int32)
        return y.view(batch, height, width, -1), (patches, weights, inside, x.shape)

    def backward_ints(self, saved: tuple, grad: Fixed, kernel: Kernel | None = None,
                      need_input: bool = True) -> Fixed | None:
        """The output's gradient -> parameter gradients (set as .grad, float64) and the input's gradient."""
        patches, weights, inside, shape = saved
        batch, height, width, in_channels = shape
        positions = batch * height * width
        g = quantize_gradient(grad.ints.reshape(positions, -1) * inside, grad.exponent, self.gradient_bits)
        self.bias.grad = _as_float(g.ints.sum(dim=0, dtype=torch.int64), g.exponent)
        g7_limbs = limbs_needed(-(1 << (self.gradient_bits - 1)), 1 << (self.gradient_bits - 1),
                                SEVEN_BIT_LIMB_BITS)
        if self.input_limbs == 1:
            transposed = patches.T
        else:
            transposed = torch.cat([block.T for block in patches.split(positions)])
        weight_grad = stacked_product(transposed, self.input_limbs, _limb_stack_columns(g.ints, g7_limbs),
                                      g7_limbs, kernel)
        weight_grad = weight_grad.view(3, 3, in_channels, -1).permute(3, 2, 0, 1)
        self.weight.grad = _as_float(weight_grad, self.input_exponent + g.exponent)
        if not need_input:
            return None
        # Fold per-channel weight exponents into g, so the sum over output channels has one scale.
        low = int(self.weight_exponents.min())
        spread = self.weight_exponents - low
        folded = g if not bool(spread.any()) else quantize_gradient(
            g.ints.long() << spread, g.exponent, self.gradient_bits)
        g8_limbs = limbs_needed(-(1 << (self.gradient_bits - 1)), 1 << (self.gradient_bits - 1), FULL_LIMB_BITS)
        windows = _limb_stack_rows(folded.ints.view(batch, height, width, -1), g8_limbs, flipped=True)
        rows = weights.permute(2, 3, 0, 1).reshape(-1, in_channels)  # (ky, kx, co) x ci
        input_grad = stacked_product(windows, g8_limbs, _limb_stack_columns(rows, self.weight_limbs),
                                     self.weight_limbs, kernel)
        return Fixed(input_grad.view(batch, height, width, in_channels), folded.exponent + low)


def leaky_relu_ints(y: torch.Tensor) -> torch.Tensor:
    """Slope 1/8 on the same grid: y if y > 0 else round_half_up(y / 8); [-1024, 127] -> [-128, 127]."""
    return torch.where(y > 0, y, shift_round(y, LEAKY_SHIFT))


def leaky_relu_backward(grad: Fixed, y: torch.Tensor) -> Fixed:
    """Gradient 1 above zero, 1/8 elsewhere, exactly: the positive side is multiplied by 8 instead."""
    ints = grad.ints.long()
    return Fixed(torch.where(y > 0, ints << LEAKY_SHIFT, ints), grad.exponent - LEAKY_SHIFT)


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
    def from_float(cls, weights: list[tuple[torch.Tensor, torch.Tensor]], sample: torch.Tensor,
                   input_exponent: int, output_limbs: int = 2, **options) -> IntConvStack:
        """Engine-2 layers for float (weight, bias) pairs, activation exponents calibrated on ``sample``.

        ``sample`` is a float B x Ci x H x W batch; each layer's output exponent is
        the smallest that holds the sample's largest value (power-of-two scales
        from min/max).  Hidden outputs use HIDDEN_RANGE; the last layer's output
        gets ``output_limbs`` 8-bit limbs (2: 16 bits).
        """
        convs, exponent, x = [], input_exponent, sample.double()
        for index, (weight, bias) in enumerate(weights):
            last = index == len(weights) - 1
            y = torch.nn.functional.conv2d(x, weight.double(), bias.double(), padding=1)
            low, high = limb_range(FULL_LIMB_BITS, output_limbs) if last else HIDDEN_RANGE
            peak = max(float(y.max()) / high, float(y.min()) / low, 2.0 ** -60)
            output_exponent = math.ceil(math.log2(peak))
            convs.append(IntConv3x3(weight, bias, input_exponent=exponent, output_exponent=output_exponent,
                                    output_range=(low, high), input_limbs=1, **options))
            x, exponent = torch.nn.functional.leaky_relu(y, 1 / 8), output_exponent
        return cls(convs)

    def step_ints(self, x: torch.Tensor, loss_grad, kernel: Kernel | None = None) -> Fixed:
        """Forward, then backward of ``loss_grad(output: Fixed) -> Fixed`` (the loss's gradient)."""
        saved, pre_activations = [], []
        for index, conv in enumerate(self.convs):
            y, memo = conv.forward_ints(x, kernel)
            saved.append(memo)
            if index < len(self.convs) - 1:
                pre_activations.append(y)
                x = leaky_relu_ints(y)
        output = Fixed(y, self.convs[-1].output_exponent)
        grad = loss_grad(output)
        for index in reversed(range(len(self.convs))):
            grad = self.convs[index].backward_ints(saved[index], grad, kernel, need_input=index > 0)
            if index > 0:
                grad = leaky_relu_backward(grad, pre_activations[index - 1])
        return output
