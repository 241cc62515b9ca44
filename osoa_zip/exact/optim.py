"""Adam written as single elementwise IEEE operations, so that it replays exactly.

torch.optim.Adam is not used: its fused and foreach kernels may contract
multiply-adds into FMA on some CPUs and not on others, and its bias
correction calls pow().  Here every line is one correctly rounded operation
per element, and beta**t is a running product.

The square root is numpy's: torch.sqrt on float64 is *not* correctly
rounded on CPU (measured: 1.3% of random inputs differ by one ulp from
math.sqrt under AVX2), while numpy uses the IEEE hardware instruction.

With numba (coding/native.py) each parameter's lines run as one compiled loop
(``_adam_update``): the same operations in the same order on each element, so
the same floats (numba contracts nothing into an FMA without fastmath, and its
sqrt is the same instruction); 13 torch operations per parameter become one call.
"""
from __future__ import annotations

import numpy as np
import torch

from ..coding import native


@native._jit
def _adam_update(p, g, m, v, beta1, beta2, keep1, keep2, correction1, correction2, eps, lr):
    """``ExactAdam.step``'s lines for one parameter in one pass (numba, optional): p, m and v in place
    (the caller marks p changed for autograd and the caches keyed on its version).

    The same correctly rounded operations in the same order (numba contracts no multiply-add
    into an FMA without fastmath, and its sqrt is the IEEE instruction, as numpy's is): the same
    floats, bit for bit (tests/test_engine2_compiled.py compares them)."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * beta1
        mi = mi + gi * keep1
        m[i] = mi
        vi = v[i] * beta2
        vi = vi + (gi * gi) * keep2
        v[i] = vi
        # np.divide: IEEE division without the Python error model's zero check, which keeps the loop
        # from vectorising (twice the time); the denominators are positive anyway.
        denominator = np.sqrt(np.divide(vi, correction2)) + eps
        p[i] = p[i] - np.divide(np.divide(mi, correction1), denominator) * lr


def _flat(t: torch.Tensor) -> np.ndarray | None:
    """A float64 CPU tensor's contiguous numpy view, or None."""
    if t.dtype != torch.float64 or t.device.type != "cpu" or not t.is_contiguous():
        return None
    return t.detach().view(-1).numpy()


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
        compiled = native.available()
        for p, m, v in zip(self.params, self.first, self.second):
            if p.grad is None:
                continue
            g = p.grad
            if compiled and self._compiled_step(p, g, m, v, correction1, correction2):
                continue
            m.mul_(self.beta1)
            m.add_(g * (1.0 - self.beta1))
            v.mul_(self.beta2)
            v.add_((g * g) * (1.0 - self.beta2))
            denominator = correctly_rounded_sqrt(v / correction2) + self.eps
            update = (m / correction1) / denominator
            p.sub_(update * self.lr)

    def _compiled_step(self, p, g, m, v, correction1: float, correction2: float) -> bool:
        """One parameter's step in one compiled pass (``_adam_update``), if every tensor is a
        contiguous float64 CPU tensor of p's size; else False (the torch lines run).  Why: the
        torch lines are 13 operations per parameter (494 for v7's RGB network), each batch, on
        the encoder and the decoder alike."""
        arrays = [*self._state_arrays(p, m, v), _flat(g)]
        if any(a is None for a in arrays) or len({a.shape for a in arrays}) != 1:
            return False
        arrays = [arrays[0], arrays[3], arrays[1], arrays[2]]  # p, g, m, v
        _adam_update(*arrays, self.beta1, self.beta2, 1.0 - self.beta1, 1.0 - self.beta2, correction1, correction2,
                     self.eps, self.lr)
        torch.autograd.graph.increment_version(p)  # as p.sub_ does: prepared weights are cached on it
        return True

    def _state_arrays(self, p, m, v) -> tuple:
        """numpy views of p, m and v (``_flat``), kept from step to step while they are the same
        tensors on the same memory (the engine may swap in restored moments; a parameter's
        storage could be replaced): a view is never used on memory its tensor no longer has."""
        views = self.__dict__.setdefault("_views", {})
        key = (id(p), id(m), id(v))
        cached = views.get(key)
        pointers = (p.data_ptr(), m.data_ptr(), v.data_ptr(), p.numel(), m.numel(), v.numel())
        if cached is None or cached[0] is not p or cached[1] is not m or cached[2] is not v or cached[3] != pointers:
            if len(views) > 4 * len(self.params):  # moments swapped in many times: start over
                views.clear()
            cached = views[key] = (p, m, v, pointers, tuple(_flat(t) for t in (p, m, v)))
        return cached[4]
