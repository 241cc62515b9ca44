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
    inputs: dict[int, list[torch.Tensor]] = {}
    stacks = {id(module): module for module in network.modules() if isinstance(module, ConvStack)}
    hooks = [stack.register_forward_pre_hook(lambda module, args: inputs.setdefault(id(module), []).append(
        args[0].detach().double())) for stack in stacks.values()]
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch):
                network.nll(samples[start:start + batch].double())
    finally:
        for hook in hooks:
            hook.remove()
    converted = copy.deepcopy(network)
    converted.engine = 2
    for level in converted.levels:
        for name in ("edges", "centres"):
            stack = getattr(level, name)
            weights = [(conv.weight.detach(), conv.bias.detach()) for conv in stack.convs]
            recorded = inputs.get(id(stacks_by_copy(network, converted, stack)), [])
            if not recorded:  # a predictor no level reaches on these samples: scales from zeros
                recorded = [torch.zeros(1, weights[0][0].shape[1], 4, 4, dtype=torch.float64)]
            setattr(level, name, IntegerConvStack.from_float(weights, recorded, CONTEXT_EXPONENT,
                                                             clip_bits=clip_bits, **ENGINE2_LAYOUT))
    return converted.to(torch.float64)


def stacks_by_copy(original: SubLatticeFlow, converted: SubLatticeFlow, stack: ConvStack) -> ConvStack:
    """The stack of ``original`` that ``stack`` (of its deep copy ``converted``) was copied from."""
    names = {id(module): name for name, module in converted.named_modules()}
    return dict(original.named_modules())[names[id(stack)]]
