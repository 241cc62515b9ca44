"""CPU ms of the exact NLL and its gradient: one logistic against a mixture of K.

  python benchmarks/mixture_nll.py [--latents 98304] [--components 3]

98,304 latents are a batch of eight RGB 64x64 tiles.  Values, means, scales and
logits are random (on the activation grid); one thread; the second of two runs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from osoa_zip.exact.logistic import LogisticTables, mixture_nll_bits, nll_bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", type=int, default=98304)
    parser.add_argument("--components", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tables = LogisticTables.from_tensors(LogisticTables.build(mixture=True))
    rng = np.random.default_rng(0)
    n, k = args.latents, args.components
    values = torch.from_numpy(rng.integers(-20, 20, n).astype(np.float64))

    def on_grid(array):
        return torch.from_numpy(np.round(array * 256) / 256).requires_grad_()

    means, log_scales = on_grid(rng.normal(0, 3, (k, n))), on_grid(rng.uniform(-1, 2, (k, n)))
    logits = on_grid(rng.normal(0, 1, (k, n)))
    lower, upper = torch.full((n,), -128.0, dtype=torch.float64), torch.full((n,), 127.0, dtype=torch.float64)
    cases = {"one logistic": lambda: nll_bits(values, means[0], log_scales[0], tables, lower, upper),
             f"mixture of {k}": lambda: mixture_nll_bits(values, means, log_scales, logits, tables, lower, upper)}
    for label, loss in cases.items():
        for _ in range(2):
            started = time.process_time()
            total = loss().sum()
            middle = time.process_time()
            total.backward()
            ended = time.process_time()
        print(f"{label}: forward {1000 * (middle - started):.1f} ms, backward {1000 * (ended - middle):.1f} ms")


if __name__ == "__main__":
    main()
