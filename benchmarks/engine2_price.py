"""The price of exactness per kernel: engine 2's step against plain float32 torch, side by side.

  python benchmarks/engine2_price.py [--batch 16] [--tile 64] [--repeat 5] [--no-avx2]

One step = forward + backward of every coupling network of idf-sublattice-v6
(RGB: edges 3 -> 48 -> 48 -> 60 and centres 9 -> 48 -> 48 -> 30) on every
level of a batch of photo tiles (as benchmarks/exactness_price.py: batch 16
of 64 x 64 tiles from data/eval/tiles64, sub-lattices 32 x 32 down to 1 x 1),
then one optimiser step over all their parameters.  Timed on one thread in
process CPU time (a shared machine's load disturbs it far less than wall
time), round-robin, median of --repeat:

* float32: plain torch (F.conv2d + leaky ReLU, autograd, torch.optim.Adam): the inexact baseline;
* engine 1: today's exact float64 fixed-point ConvStack (ExactStack) with ExactAdam;
* engine 2 on each kernel (int8, float32, float64): exact/intconv.IntConvStack with ExactAdam,
  per-channel weight scales, int8 activations, 16-bit last outputs, 13-bit gradients.

The price of exactness is each exact step's time divided by float32's, in the same process.
Unless --no-avx2, the script runs itself again under ONEDNN_MAX_CPU_ISA=AVX2 (a CPU without
VNNI, as far as oneDNN is concerned) and prints that run's ratios against its own float32.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from osoa_zip.exact.intconv import IntConvStack
from osoa_zip.exact.intlayers import ENGINE2_LAYOUT
from osoa_zip.exact.kernels import KERNELS, current_kernel
from osoa_zip.exact.layers import LEAKY_SLOPE
from osoa_zip.exact.optim import ExactAdam
from osoa_zip.models.idf import context, sublattices
from osoa_zip.models.registry import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exactness_price import _batch as exactness_price_batch  # noqa: E402  (a sibling script)

MODEL = "idf-sublattice-v6"


def _batch(size: int, tile: int) -> torch.Tensor:
    """exactness_price.py's batch of RGB tiles, as integers."""
    return exactness_price_batch(size, tile).long()


def _workload(pixels: torch.Tensor):
    """(network, input pixels B x C x h x w) for every coupling network on every level."""
    network = load_model(MODEL).network(3)
    jobs, y, level = [], pixels, 0
    while min(y.shape[2:]) >= 2:
        s0, s1, s2, _ = sublattices(y)
        predictor = network.levels[min(level, len(network.levels) - 1)]
        jobs += [(predictor.edges, s0), (predictor.centres, torch.cat([s0, s1, s2], dim=1))]
        y, level = s0, level + 1
    return jobs


def _weights(stack) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(conv.weight.detach(), conv.bias.detach()) for conv in stack.convs]


class PlainFloat32:
    name = "float32 torch"

    def __init__(self, jobs):
        self.jobs = [([(w.float().clone().requires_grad_(), b.float().clone().requires_grad_())
                       for w, b in _weights(stack)], context(x).float()) for stack, x in jobs]
        self.optimizer = torch.optim.Adam([t for layers, _ in self.jobs for pair in layers for t in pair], 1e-4)
        self.targets = [torch.zeros(1)] * len(self.jobs)

    def step(self):
        self.optimizer.zero_grad()
        for (layers, x), target in zip(self.jobs, self.targets):
            for index, (w, b) in enumerate(layers):
                x = F.conv2d(x, w, b, padding=1)
                if index < len(layers) - 1:
                    x = F.leaky_relu(x, LEAKY_SLOPE)
            (0.5 * (x - target).square().sum()).backward()
        self.optimizer.step()


class EngineOne:
    name = "engine 1 (float64)"

    def __init__(self, jobs):
        self.jobs = [(copy.deepcopy(stack).double(), context(x).double()) for stack, x in jobs]
        self.optimizer = ExactAdam([p for stack, _ in self.jobs for p in stack.parameters()], 1e-4)

    def step(self):
        self.optimizer.zero_grad()
        for stack, x in self.jobs:
            (0.5 * stack(x).square().sum()).backward()
        self.optimizer.step()


class EngineTwo:
    options: dict = {}

    def __init__(self, jobs, kernel_name: str):
        self.name, self.kernel = f"engine 2, {kernel_name} kernel", KERNELS[kernel_name]
        self.jobs = [(IntConvStack.from_float(_weights(stack), context(x).double(), input_exponent=-6,
                                              **self.options),
                      (x - 128).permute(0, 2, 3, 1).contiguous()) for stack, x in jobs]
        self.optimizer = ExactAdam([p for stack, _ in self.jobs for p in stack.parameters()], 1e-4)

    def step(self):
        self.optimizer.zero_grad()
        for stack, x in self.jobs:
            stack.step_ints(x, lambda out: out, self.kernel)  # loss 0.5 * |out|^2: its gradient is out
        self.optimizer.step()


def measure(batch: int, tile: int, repeat: int, variants: list[str]) -> dict[str, float]:
    torch.set_num_threads(1)
    pixels = _batch(batch, tile)
    jobs = _workload(pixels)
    runners = [PlainFloat32(jobs)]
    if "engine1" in variants:
        runners.append(EngineOne(jobs))
    runners += [EngineTwo(jobs, name) for name in variants if name in KERNELS]
    times = {runner.name: [] for runner in runners}
    for runner in runners:
        runner.step()  # warm-up (oneDNN primitive caches)
    for _ in range(repeat):
        for runner in runners:  # round-robin: a noisy neighbour hits every variant alike
            started = time.process_time()
            runner.step()
            times[runner.name].append(time.process_time() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
    return " ".join(flag for flag in wanted if flag in flags) or "no AVX2"


def _report(title: str, seconds: dict[str, float]) -> None:
    base = seconds["float32 torch"]
    print(title)
    for name, value in seconds.items():
        print(f"  {name:26s} {value * 1000:8.1f} ms   price {value / base:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", default="engine1,int8,float32,float64")
    parser.add_argument("--gradient-limbs", type=int, default=2, help="7-bit limbs per gradient (2: 13 bits)")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    parser.add_argument("--archive-layout", action="store_true",
                        help="the layout engine-2 archives use (exact/intlayers.ENGINE2_LAYOUT: the first conv's "
                             "weights in two 7-bit limbs, the last conv's input in two 8-bit limbs)")
    parser.add_argument("--no-avx2", action="store_true", help="skip the ONEDNN_MAX_CPU_ISA=AVX2 run")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the AVX2 child's output
    args = parser.parse_args()
    EngineTwo.options = {"gradient_limbs": args.gradient_limbs, "per_channel": not args.per_tensor,
                         **(ENGINE2_LAYOUT if args.archive_layout else {})}
    seconds = measure(args.batch, args.tile, args.repeat, args.variants.split(","))
    if args.json:
        print(json.dumps(seconds))
        return
    print(f"CPU flags: {_cpu_flags()}; torch {torch.__version__}, 1 thread, "
          f"ATen capability {torch.backends.cpu.get_cpu_capability()}, default kernel {current_kernel().name}")
    print(f"step: v6 RGB coupling networks on every level of a batch of {args.batch} {args.tile}x{args.tile} tiles; "
          f"engine 2 with {args.gradient_limbs} 7-bit gradient limbs, "
          f"{'per-tensor' if args.per_tensor else 'per-channel'} weight scales"
          + ("; the archive layout (14-bit first weights, 16-bit last inputs)" if args.archive_layout else ""))
    _report("default oneDNN ISA:", seconds)
    if not args.no_avx2:
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
        child = subprocess.run([sys.executable, __file__, "--json", "--batch", str(args.batch), "--tile",
                                str(args.tile), "--repeat", str(args.repeat), "--variants", "int8,float32",
                                "--gradient-limbs", str(args.gradient_limbs)] + ["--per-tensor"] * args.per_tensor
                               + ["--archive-layout"] * args.archive_layout,
                               env=env, capture_output=True, text=True, check=True)
        _report("ONEDNN_MAX_CPU_ISA=AVX2 (no VNNI for oneDNN):", json.loads(child.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
