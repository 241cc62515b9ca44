"""Engine 2's drop-in for layers.ConvStack: float tensors in and out, exact integer products inside.

A model on engine 2 keeps everything but its convolutions as on engine 1
(couplings, logistic tables and ExactAdam in float64 on engine 1's grids);
each ConvStack becomes an ``IntegerConvStack`` with the same constructor
arguments, the same parameter names and the same float NCHW interface:

* forward: the input (an integer times 2**input_exponent: the coupling
  context, pixels - 128 over 64) becomes int8 NHWC, IntConvStack runs on
  the fastest exact kernel (kernels.current_kernel), and its 16-bit output
  comes back as ints * 2**exponent -- exact in float64 and in float32 -- and
  is floored onto engine 1's activation grid, as ExactConv2d's output is;
* backward: the output's gradient becomes integers on a per-tensor exponent
  from its exact peak (as fixed.quantize_gradient chooses), IntConvStack's
  integer backward runs, and the parameter gradients are returned to autograd,
  so a stack that serves several levels accumulates them like any module.

Under an active trunk memo (exact/trunk.py) a pass over a batch that an earlier
pass has seen skips the convs whose integers the memo shows to be unchanged
(the frozen trunk below an adapting last conv) and resumes from their recorded
activations: the same integers, less work.

The same integers come out under every kernel, ISA and thread count, so an
adaptation step replays bit for bit; in float32 (pretraining) it is the same
integer network, which makes quantisation-aware training exact by
construction: the weights are trained through the very arithmetic that codes.
"""
from __future__ import annotations

import math

import torch

from . import conv_kernels
from .fixed import gradient_grid, quantize_activation
from .grid import (
    ACT_FRAC_BITS,
    ACT_LIMIT,
    CONTEXT_EXPONENT,
    FIRST_WEIGHT_LIMBS,
    GRAD_BITS,
    LAST_INPUT_LIMBS,
    OUTPUT_LIMBS,
)
from .intconv import Fixed, IntConv3x3, IntConvStack, interior, layer_layout, padded
from .kernels import current_kernel
from .trunk import active_trunk_memo

# Options every engine-2 stack is built with (the ENGINE2 record names them).
ENGINE2_LAYOUT = {"output_limbs": OUTPUT_LIMBS, "first_weight_limbs": FIRST_WEIGHT_LIMBS,
                  "last_input_limbs": LAST_INPUT_LIMBS}


def gradient_to_fixed(grad: torch.Tensor) -> Fixed:
    """A float gradient as integers on one exponent: GRAD_BITS below its exact peak, rounded half up.

    On engine 1's float64 path the gradient is already on that grid (fixed.quantize_gradient),
    so the rounding changes nothing there (unless engine 1 rounded the peak up to a power of
    two: then the scale is one bit coarser); in float32 training it rounds.  A gradient whose
    exponent would fall below MIN_GRAD_EXPONENT is zero, as engine 1 makes it (its scale
    2**-exponent would overflow float64).
    """
    grid = gradient_grid(grad)
    if grid is None:
        return Fixed(torch.zeros(grad.shape, dtype=torch.int32), 0)
    exponent = grid[1]
    ints = grad.double().mul(2.0 ** -exponent).add_(0.5).floor_()  # floor(g * 2**-e + 1/2), in place
    return Fixed(ints.to(torch.int32), exponent)


def grid_gradient_to_fixed(grad: torch.Tensor) -> Fixed:
    """``gradient_to_fixed(quantize_gradient(grad))`` of a float64 gradient, in four passes instead of nine.

    quantize_gradient rounds g / 2**e half to even (e: GRAD_BITS below its peak's exponent), giving
    integers k with 2**(GRAD_BITS-1) <= max|k| <= 2**GRAD_BITS, and returns k * 2**e (exact);
    gradient_to_fixed's exponent for that is e again, unless max|k| reached 2**GRAD_BITS (the
    peak rounded up to a power of two): then it is e + 1 and its integers floor(k * 0.5 + 0.5).
    Zeros, NaN and an exponent below MIN_GRAD_EXPONENT give zeros on exponent 0, as the pair does.

    A B x H x W x C ``grad`` (the stacks': a B x C x H x W gradient's permuted view) takes, with
    numba, one compiled pass (exact/conv_kernels.py) that reads it in any strides and writes the
    integers NHWC-contiguous (the layout every later pass reads), instead of four strided passes
    and a copy: the same integers.
    Its multiplication by 2**-e is the division by 2**e exactly, as e lies in [MIN_GRAD_EXPONENT,
    1008], where both powers of two are finite floats."""
    # The stack's own layout (NCHW, in which its gradient arrives): read in order by the kernel,
    # and by torch.aminmax, which copies a permuted view whole before it reduces (the extremes
    # are the same either way).
    nchw = grad.permute(0, 3, 1, 2) if grad.dim() == 4 else grad
    grid = gradient_grid(nchw)
    if grid is None:
        return Fixed(torch.zeros(grad.shape, dtype=torch.int32), 0)
    peak, exponent = grid
    halve = math.isfinite(peak) and round(math.ldexp(peak, -exponent)) == 1 << GRAD_BITS
    if grad.dim() == 4 and math.isfinite(peak) and conv_kernels.available():
        ints = torch.empty(grad.shape, dtype=torch.int32)
        conv_kernels.grid_gradient_nhwc(nchw.numpy(), math.ldexp(1.0, -exponent), halve, ints.numpy())
        return Fixed(ints, exponent + 1 if halve else exponent)
    k = grad / math.ldexp(1.0, exponent)
    k.round_()
    if halve:  # max|k| reached 2**GRAD_BITS (as round_() rounds the peak)
        k.mul_(0.5).add_(0.5).floor_()
        exponent += 1
    return Fixed(k.to(torch.int32), exponent)


def _first_input(first: IntConv3x3, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(the first conv's input, whether it is framed) from the float NCHW stack input x.

    x * 2**-e are integers (the coupling context): for an int8 input they are written
    straight into the first conv's framed input, one conversion and no intermediate copies."""
    nhwc = x.detach().permute(0, 2, 3, 1)
    if first.input_limbs == 1:
        source = padded(*nhwc.shape)
        interior(source).copy_(nhwc.mul(2.0 ** -first.input_exponent))
        return source, True
    return nhwc.mul(2.0 ** -first.input_exponent).to(torch.int32), False


class _IntegerStackFunction(torch.autograd.Function):
    """x (float NCHW) -> the stack's output (float NCHW); parameters are inputs so autograd routes their grads.

    ``grad_enabled``: autograd's mode where the stack was called (inside ``forward`` it is always
    off, and ``needs_input_grad`` follows the parameters' requires_grad alone): without it no
    gradient is wanted, so nothing is kept for a backward pass that cannot come."""

    @staticmethod
    def forward(ctx, x, stack: IntegerConvStack, on_grid: bool, grad_enabled: bool, *parameters):
        kernel = current_kernel()
        wanted = [(grad_enabled and ctx.needs_input_grad[4 + 2 * index],
                   grad_enabled and ctx.needs_input_grad[5 + 2 * index]) for index in range(len(stack.convs))]
        keep = any(any(pair) for pair in wanted)
        # A trunk memo (exact/trunk.py) may hold this batch's trunk from an earlier pass: the
        # convs below the lowest one with a wanted gradient, and below the last, may be skipped.
        memo = active_trunk_memo() if len(stack.convs) > 1 else None
        start, source, inputs, last_patches, patches_out = 0, None, None, None, None
        if memo is not None:
            final = len(stack.convs) - 1
            trunk = next((index for index, pair in enumerate(wanted) if any(pair)), final)
            start, source = memo.resume(stack, x, min(trunk, final))
            if start == final:  # the last conv's input is a recorded one: so may its patches be
                last_patches = memo.patches_of(stack, x, source, kernel.operand_dtype)
            inputs, patches_out = (None, None) if start else ([], [])
        if start:
            framed = True
        else:
            source, framed = _first_input(stack.convs[0], x)
        output, saved = stack._forward(source, kernel, keep, framed=framed, patches=[pair[0] for pair in wanted],
                                       start=start, inputs=inputs, last_patches=last_patches, patches_out=patches_out)
        if inputs is not None:
            memo.record(stack, x, inputs, patches_out[0] if patches_out else None)
        if keep:
            ctx.state = (stack, saved, wanted, kernel, on_grid)
        if on_grid:  # quantize_activation's floor onto 2**-ACT_FRAC_BITS, as an integer shift
            shift = -(output.exponent + ACT_FRAC_BITS)
            if x.dtype == torch.float64 and shift < 31 and output.ints.is_contiguous() and conv_kernels.available():
                values = torch.empty(output.ints.shape, dtype=torch.float64)  # one compiled pass, the same floats
                conv_kernels.scaled_output(output.ints.numpy(), shift, 2.0 ** -ACT_FRAC_BITS, values.numpy())
                return values.permute(0, 3, 1, 2)
            ints = output.ints >> shift
            return ints.to(x.dtype).mul_(2.0 ** -ACT_FRAC_BITS).permute(0, 3, 1, 2)
        return output.ints.to(x.dtype).mul_(2.0 ** output.exponent).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        stack, saved, wanted, kernel, on_grid = ctx.state
        del ctx.state  # the saved activations are large; free them with the step
        nhwc = grad.permute(0, 2, 3, 1)
        if on_grid and grad.dtype == torch.float64:  # quantize_activation's backward (every value was inside)
            fixed = grid_gradient_to_fixed(nhwc)
        else:
            fixed = gradient_to_fixed(nhwc)
        gradients = stack.backward(saved, fixed, kernel, wanted, scratch=True)
        flat = []
        for conv, (weight_grad, bias_grad) in zip(stack.convs, gradients):
            flat += [None if weight_grad is None else weight_grad.to(conv.weight.dtype),
                     None if bias_grad is None else bias_grad.to(conv.bias.dtype)]
        return (None, None, None, None, *flat)


class IntegerConvStack(IntConvStack):
    """conv -> leaky ReLU -> ... -> conv on engine 2, with ConvStack's float interface.

    ``IntegerConvStack.empty(in, hidden, out, depth)`` builds the layers with
    placeholder scales: the weights and every exponent (activation and weight
    scales are buffers) come from a checkpoint; ``from_float`` (IntConvStack's)
    calibrates them from float weights.
    """

    @classmethod
    def empty(cls, in_channels: int, hidden: int, out_channels: int, depth: int) -> IntegerConvStack:
        widths = [in_channels] + [hidden] * (depth - 1) + [out_channels]
        layers = layer_layout(depth, **ENGINE2_LAYOUT)
        return cls([IntConv3x3(torch.zeros(b, a, 3, 3), torch.zeros(b), input_exponent=CONTEXT_EXPONENT if i == 0
                               else 0, output_exponent=0, **layer)
                    for i, (a, b, layer) in enumerate(zip(widths[:-1], widths[1:], layers))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stack's output on engine 1's activation grid (fixed.quantize_activation).

        When the last conv's grid is at least as fine as the activation grid and its
        range lies inside ACT_LIMIT, quantize_activation is a floor that is an integer
        shift and a clamp that never acts: the autograd function does both itself (its
        backward then applies quantize_activation's gradient rounding), saving a
        float64 pass set over the output."""
        parameters = [t for conv in self.convs for t in (conv.weight, conv.bias)]
        last = self.convs[-1]
        low, high = last.output_range
        on_grid = (last.output_exponent <= -ACT_FRAC_BITS
                   and max(-low, high) * 2.0 ** last.output_exponent <= ACT_LIMIT)
        output = _IntegerStackFunction.apply(x, self, on_grid, torch.is_grad_enabled(), *parameters)
        return output if on_grid else quantize_activation(output)
