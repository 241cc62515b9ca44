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

The same integers come out under every kernel, ISA and thread count, so an
adaptation step replays bit for bit; in float32 (pretraining) it is the same
integer network, which makes quantisation-aware training exact by
construction: the weights are trained through the very arithmetic that codes.
"""
from __future__ import annotations

import math

import torch

from .fixed import quantize_activation
from .grid import CONTEXT_EXPONENT, FIRST_WEIGHT_LIMBS, GRAD_BITS, LAST_INPUT_LIMBS, OUTPUT_LIMBS
from .intconv import Fixed, IntConv3x3, IntConvStack, layer_layout
from .kernels import current_kernel

# Options every engine-2 stack is built with (the ENGINE2 record names them).
ENGINE2_LAYOUT = {"output_limbs": OUTPUT_LIMBS, "first_weight_limbs": FIRST_WEIGHT_LIMBS,
                  "last_input_limbs": LAST_INPUT_LIMBS}


def gradient_to_fixed(grad: torch.Tensor) -> Fixed:
    """A float gradient as integers on one exponent: GRAD_BITS below its exact peak, rounded half up.

    On engine 1's float64 path the gradient is already on that grid (fixed.quantize_gradient),
    so the rounding changes nothing there; in float32 training it rounds.
    """
    peak = float(grad.abs().max()) if grad.numel() else 0.0
    if not peak > 0:
        return Fixed(torch.zeros(grad.shape, dtype=torch.int32), 0)
    exponent = math.frexp(peak)[1] - GRAD_BITS
    ints = torch.floor(grad.double() * 2.0 ** -exponent + 0.5)
    return Fixed(ints.to(torch.int32), exponent)


class _IntegerStackFunction(torch.autograd.Function):
    """x (float NCHW) -> the stack's output (float NCHW); parameters are inputs so autograd routes their grads."""

    @staticmethod
    def forward(ctx, x, stack: IntegerConvStack, *parameters):
        kernel = current_kernel()
        ints = x.detach().permute(0, 2, 3, 1).mul(2.0 ** -stack.convs[0].input_exponent).to(torch.int8)
        wanted = [(ctx.needs_input_grad[2 + 2 * index], ctx.needs_input_grad[3 + 2 * index])
                  for index in range(len(stack.convs))]
        keep = any(any(pair) for pair in wanted)
        output, saved, pre_activations = stack._forward(ints, kernel, keep)
        if keep:
            ctx.state = (stack, saved, pre_activations, wanted, kernel)
        return output.ints.to(x.dtype).mul_(2.0 ** output.exponent).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        stack, saved, pre_activations, wanted, kernel = ctx.state
        del ctx.state  # the saved activations are large; free them with the step
        gradients = stack.backward(saved, pre_activations, gradient_to_fixed(grad.permute(0, 2, 3, 1)),
                                   kernel, wanted)
        flat = []
        for conv, (weight_grad, bias_grad) in zip(stack.convs, gradients):
            flat += [None if weight_grad is None else weight_grad.to(conv.weight.dtype),
                     None if bias_grad is None else bias_grad.to(conv.bias.dtype)]
        return (None, None, *flat)


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
        parameters = [t for conv in self.convs for t in (conv.weight, conv.bias)]
        return quantize_activation(_IntegerStackFunction.apply(x, self, *parameters))
