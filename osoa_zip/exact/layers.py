"""Layers whose float64 forward and backward passes are exact (see fixed.py)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .fixed import check_conv_bounds, quantize_activation, weight_on_grid
from .stack import ExactStack

LEAKY_SLOPE = 0.125  # a power of two: the product stays on a dyadic grid


class ExactConv2d(nn.Module):
    """A same-padded convolution on fixed-point grids.

    Master weights are free floats (they take optimiser updates); the forward
    pass uses their grid-rounded copies and floors the output onto the
    activation grid.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=LEAKY_SLOPE)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            fan_in = self.weight[0].numel()
            check_conv_bounds(fan_in, x.shape[0] * x.shape[2] * x.shape[3])
        y = F.conv2d(x, weight_on_grid(self.weight), weight_on_grid(self.bias), padding=self.padding)
        return quantize_activation(y)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """Piecewise linear, slope 1/8 below zero, re-quantized onto the grid."""
    return quantize_activation(F.leaky_relu(x, LEAKY_SLOPE))


class ConvStack(nn.Module):
    """conv -> lrelu -> ... -> conv: a small fully convolutional predictor.

    The modules below state the computation; in float64 it runs as one
    fused ExactStack (stack.py), which gives the same bits.
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, depth: int):
        super().__init__()
        widths = [in_channels] + [hidden] * (depth - 1) + [out_channels]
        self.convs = nn.ModuleList(ExactConv2d(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64 and not x.requires_grad and self._fusable():
            # The same numbers, faster (see stack.py).
            parameters = [t for conv in self.convs for t in (conv.weight, conv.bias)]
            return ExactStack.apply(x, LEAKY_SLOPE, *parameters)
        return self.forward_by_module(x)

    def forward_by_module(self, x: torch.Tensor) -> torch.Tensor:
        """The reference computation, one module at a time (float32 training uses it)."""
        for conv in self.convs[:-1]:
            x = leaky_relu(conv(x))
        return self.convs[-1](x)

    def _fusable(self) -> bool:
        return all(conv.padding == 1 and conv.weight.shape[2:] == (3, 3) for conv in self.convs)
