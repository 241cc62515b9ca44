"""The layout of a mixture's extra outputs, shared by the flow and the VAE.

A network that predicts one logistic (mean, log-scale) per value predicts a
mixture of K by appending, per extra component k = 1 .. K-1, three blocks of
equal height: a mean shift, a log-scale shift and a logit.  Component 0 is the
single logistic with logit 0, so zero extra rows give back the single-logistic
model exactly (a single-logistic checkpoint warm-starts the mixture).
"""
from __future__ import annotations

import torch


def extra_outputs(components: int) -> int:
    """How many blocks a network appends for ``components`` logistics (0 for one)."""
    return 3 * (components - 1)


def mixture_components(mean: torch.Tensor, log_scale: torch.Tensor, extra: torch.Tensor, components: int,
                       pick, shift_gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(means, log_scales, logits) with the K components first.

    ``extra`` holds the appended blocks along dim 1; ``pick`` selects the rows of
    each block that belong to ``mean`` (e.g. one channel); mean shifts are
    multiplied by ``shift_gain`` (a power of two, so exact).
    """
    blocks = extra.chunk(extra_outputs(components), dim=1)
    means, log_scales, logits = [mean], [log_scale], [torch.zeros_like(mean)]
    for k in range(components - 1):
        shift_mean, shift_log_scale, logit = (block[:, pick] for block in blocks[3 * k:3 * k + 3])
        means.append(mean + (shift_mean if shift_gain == 1.0 else shift_mean * shift_gain))
        log_scales.append(log_scale + shift_log_scale)
        logits.append(logit)
    return torch.stack(means), torch.stack(log_scales), torch.stack(logits)
