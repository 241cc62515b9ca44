"""Fixed-point grids that make every reduction exact in float64.

Why: the decoder replays every adaptation step, so forward pass, backward
pass and update must give the same bits on every machine.  Elementwise IEEE
operations (+, -, *, /, sqrt, each issued as its own kernel) are already
deterministic; only *reductions* (convolutions, sums) depend on thread count,
SIMD width and BLAS kernel through their summation order.  We therefore keep
every operand of a reduction on a dyadic grid with bounded magnitude, so that
every partial sum is an exactly representable float64 and the order stops
mattering:

* weights:      multiples of 2**-WEIGHT_FRAC_BITS, |w| <= WEIGHT_LIMIT
* activations:  multiples of 2**-ACT_FRAC_BITS,    |a| <= ACT_LIMIT
* gradients:    GRAD_BITS significant bits with a per-tensor power-of-two
                scale taken from the tensor's exact maximum.

A 3x3 convolution over 64 channels then sums 576 products of at most 45
significant bits in total (see ``check_conv_bounds``), far below 2**53.
"""
from __future__ import annotations

import math

import torch

from .grid import ACT_FRAC_BITS, ACT_LIMIT, GRAD_BITS, WEIGHT_FRAC_BITS, WEIGHT_LIMIT  # noqa: F401

# Gradients whose grid step would fall below this are flushed to zero, so no
# subnormal number (whose handling varies with FTZ/DAZ settings) ever appears.
MIN_GRAD_EXPONENT = -1000
FLOAT64_MANTISSA_BITS = 53

_ACT_SCALE = float(2 ** ACT_FRAC_BITS)
_WEIGHT_SCALE = float(2 ** WEIGHT_FRAC_BITS)


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """Round a master weight onto the weight grid (round-half-even, exact)."""
    w = torch.clamp(w, -WEIGHT_LIMIT, WEIGHT_LIMIT)
    return torch.round(w * _WEIGHT_SCALE) / _WEIGHT_SCALE


def gradient_grid(g: torch.Tensor) -> tuple[float, int] | None:
    """(max |g|, e): the gradient grid 2**e that keeps GRAD_BITS significant bits of g's peak,
    from one exact pass; None where g has no grid (empty, all zeros, a NaN, or e below
    MIN_GRAD_EXPONENT), which every caller turns into zeros.

    One rule for every gradient that reaches integers or is rounded onto its grid
    (quantize_gradient here, intlayers.gradient_to_fixed and grid_gradient_to_fixed): the
    exponent comes from the exact maximum, so it is the same on every machine."""
    if g.numel() == 0:
        return None
    low, high = (float(v) for v in torch.aminmax(g))  # one pass; max(-low, high) is the exact max |g|
    if low != low or high != high:  # a NaN: no peak (torch.maximum would propagate it)
        return None
    peak = max(-low, high)
    if not peak > 0:
        return None
    exponent = math.frexp(peak)[1] - GRAD_BITS  # torch.frexp's exponent, also for inf (0)
    if exponent < MIN_GRAD_EXPONENT:
        return None
    return peak, exponent


def quantize_gradient(g: torch.Tensor) -> torch.Tensor:
    """Keep GRAD_BITS significant bits, with one power-of-two scale per tensor.

    The scale comes from the exact maximum (gradient_grid), so it is the same on every
    machine; the rounding is elementwise, so it is too.
    """
    if g.numel() == 0:
        return g
    grid = gradient_grid(g)
    if grid is None:
        return torch.zeros_like(g)
    step = math.ldexp(1.0, grid[1])
    return (g / step).round_().mul_(step)  # in place on the quotient: the same two roundings


class _QuantizeActivation(torch.autograd.Function):
    """Floor onto the activation grid; straight-through gradient, re-quantized."""

    @staticmethod
    def forward(ctx, x):
        inside = (x >= -ACT_LIMIT) & (x <= ACT_LIMIT)
        ctx.save_for_backward(inside)
        clamped = torch.clamp(x, -ACT_LIMIT, ACT_LIMIT)
        return torch.floor(clamped * _ACT_SCALE) / _ACT_SCALE

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        grad = grad * inside
        return quantize_gradient(grad) if grad.dtype == torch.float64 else grad


class _QuantizeWeight(torch.autograd.Function):
    """Weight grid in the forward pass; the master weight takes the gradient."""

    @staticmethod
    def forward(ctx, w):
        return quantize_weight(w)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _RoundInteger(torch.autograd.Function):
    """floor(x + 1/2): the rounding of an additive integer coupling."""

    @staticmethod
    def forward(ctx, x):
        return torch.floor(x + 0.5)

    @staticmethod
    def backward(ctx, grad):
        return grad


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    return _QuantizeActivation.apply(x)


def weight_on_grid(w: torch.Tensor) -> torch.Tensor:
    return _QuantizeWeight.apply(w)


def round_to_integer(x: torch.Tensor) -> torch.Tensor:
    return _RoundInteger.apply(x)


def check_conv_bounds(fan_in: int, positions: int) -> None:
    """Refuse a layer shape whose sums could leave the exact float64 range.

    Forward: fan_in products of weight x activation.  Backward: grad_weight
    sums `positions` products of activation x gradient; grad_input sums
    fan_in-sized products of weight x gradient.
    """
    def bits(x: float) -> int:
        return int(x).bit_length()

    act_bits = ACT_FRAC_BITS + bits(ACT_LIMIT)
    weight_bits = WEIGHT_FRAC_BITS + bits(WEIGHT_LIMIT)
    forward = act_bits + weight_bits + bits(fan_in)
    grad_weight = act_bits + GRAD_BITS + bits(positions)
    grad_input = weight_bits + GRAD_BITS + bits(fan_in)
    worst = max(forward, grad_weight, grad_input)
    if worst > FLOAT64_MANTISSA_BITS:
        raise ValueError(
            f"layer too large for the exact core: needs {worst} bits "
            f"(fan_in={fan_in}, positions={positions})")
