"""A flow on engine 1 -> the same flow on engine 2, scales calibrated on sample images.

Post-training quantisation is the starting point of quantisation-aware
training (scripts/train_engine2.py): every coupling ConvStack becomes an
exact/intlayers.IntegerConvStack with the float weights rounded onto 7-bit
(14-bit for the first conv) per-channel grids, and each activation's
power-of-two scale is the smallest that holds the samples' extremes, made
``clip_bits`` finer (docs/ENGINE2.md: one bit cost v6 far less than the
resolution it bought).  The scales are buffers of the network, so a
checkpoint carries them and they never change afterwards.
"""
from __future__ import annotations

import copy

import torch

from ..exact.grid import CONTEXT_EXPONENT
from ..exact.intlayers import ENGINE2_LAYOUT, IntegerConvStack
from ..exact.layers import ConvStack
from .idf import SubLatticeFlow


def to_engine2(network: SubLatticeFlow, samples: torch.Tensor, clip_bits: int = 1, batch: int = 64
               ) -> SubLatticeFlow:
    """An engine-2 copy of an engine-1 flow (same weights, rounded), scales from ``samples`` (B x C x H x W pixels)."""
    if network.engine != 1:
        raise ValueError("to_engine2 converts an engine-1 flow")
    inputs: dict[str, list[torch.Tensor]] = {}  # stack's module name -> its inputs on the samples

    def recorder(name: str):
        return lambda module, args: inputs.setdefault(name, []).append(args[0].detach().double())

    hooks = [module.register_forward_pre_hook(recorder(name)) for name, module in network.named_modules()
             if isinstance(module, ConvStack)]
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch):
                network.nll(samples[start:start + batch].double())
    finally:
        for hook in hooks:
            hook.remove()
    converted = copy.deepcopy(network)
    converted.engine = 2
    for index, level in enumerate(converted.levels):
        for name in ("edges", "centres"):
            stack = getattr(level, name)
            weights = [(conv.weight.detach(), conv.bias.detach()) for conv in stack.convs]
            recorded = inputs.get(f"levels.{index}.{name}", [])
            if not recorded:  # a predictor no level reaches on these samples: scales from zeros
                recorded = [torch.zeros(1, weights[0][0].shape[1], 4, 4, dtype=torch.float64)]
            setattr(level, name, IntegerConvStack.from_float(weights, recorded, CONTEXT_EXPONENT,
                                                             clip_bits=clip_bits, **ENGINE2_LAYOUT))
    return converted.to(torch.float64)

