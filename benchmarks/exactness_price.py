"""The price of exactness: one adaptation step, exact engine vs plain float32, per kernel.

  python benchmarks/exactness_price.py [--model NAME] [--batch 16] [--tile 64] [--repeat 5]
      [--parameters all|last|bias] [--kernels int8,float32,float64]

Same network, same batch (real photo tiles from data/eval/tiles64, or the
bundled examples): forward + backward + optimiser step of the whole RGB flow
(``nll``: couplings, logistic mixtures, the coupling networks), in the exact
engine the model runs on (what osoa-zip replays) against the same network in
plain float32 with torch's Adam (what an inexact implementation would do).

* ``--parameters``: which parameters adapt (default: what the model's manifest
  entry recommends, e.g. ``last`` for idf-sublattice-v7; else all).  Both
  sides adapt the same ones.
* ``--kernels``: an engine-2 model's exact step is timed under each named
  kernel (``OSOA_ZIP_KERNEL``, chosen again for each); an engine-1 model has one.
* The float32 side of an engine-2 model is its architecture on engine 1 (float
  convolutions, ``F.conv2d``) with the same float weights: the integer network
  in float32 is still the integer network.

CPU time of this process (the machine is shared; wall time is too noisy),
variants round-robin, median of --repeat runs after one warm-up step each.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osoa_zip.exact import kernels
from osoa_zip.exact.optim import ExactAdam
from osoa_zip.models.catalog import available_models, recommended_parameters
from osoa_zip.models.registry import DEFAULT_MODEL, load_model

REPO = Path(__file__).resolve().parents[1]


def _batch(size: int, tile: int) -> torch.Tensor:
    folder = REPO / "data" / "eval" / "tiles64"
    if not folder.is_dir():
        folder = REPO / "examples" / "images"
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    tiles = [im[y:y + tile, x:x + tile] for im in images
             for y in range(0, im.shape[0] - tile + 1, tile) for x in range(0, im.shape[1] - tile + 1, tile)]
    return torch.from_numpy(np.stack((tiles * size)[:size]).transpose(0, 3, 1, 2).copy())


def _adapting(network, selection: str) -> list[torch.nn.Parameter]:
    names = network.adaptable_parameters(selection)
    chosen = []
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name in names)
        if name in names:
            chosen.append(parameter)
    return chosen


def _step(network, optimizer, pixels) -> float:
    started = time.process_time()
    optimizer.zero_grad()
    network.nll(pixels).backward()
    optimizer.step()
    return time.process_time() - started


def _use_kernel(name: str | None) -> None:
    if name is None:
        os.environ.pop(kernels.KERNEL_ENVIRONMENT, None)
    else:
        os.environ[kernels.KERNEL_ENVIRONMENT] = name
    kernels.reset_kernel_choice()
    kernels.current_kernel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--parameters", choices=("all", "last", "bias"), default=None)
    parser.add_argument("--kernels", default=",".join(kernels.KERNEL_NAMES))
    args = parser.parse_args()
    bundle = load_model(args.model)
    selection = args.parameters or recommended_parameters(available_models().get(args.model, {})) or "all"
    exact = copy.deepcopy(bundle.network(3))
    engine = int(bundle.config.get("engine", 1))
    if engine == 2:
        plain = type(exact).from_config(3, {**bundle.config, "engine": 1})
        plain.load_state_dict({k: v for k, v in exact.state_dict().items() if k in plain.state_dict()})
        plain = plain.to(torch.float32)
        names = [name.strip() for name in args.kernels.split(",") if name.strip()]
    else:
        plain = copy.deepcopy(exact).to(torch.float32)
        names = [None]
    pixels = _batch(args.batch, args.tile)
    variants = [("plain float32 torch", plain, torch.optim.Adam(_adapting(plain, selection), 1e-4),
                 pixels.float(), None)]
    for name in names:
        network = copy.deepcopy(exact)
        label = f"engine {engine}" + (f", {name} kernel" if name else "")
        variants.append((label, network, ExactAdam(_adapting(network, selection), 1e-4), pixels.double(), name))
    times: dict[str, list[float]] = {label: [] for label, *_ in variants}
    for round_ in range(args.repeat + 1):
        for label, network, optimizer, batch, kernel in variants:
            _use_kernel(kernel)
            seconds = _step(network, optimizer, batch)
            if round_:  # the first round warms every variant up
                times[label].append(seconds)
    _use_kernel(None)
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8")
             if f in Path("/proc/cpuinfo").read_text().split()] if Path("/proc/cpuinfo").exists() else []
    megabytes = pixels.numel() / 1e6
    print(f"model {args.model} (engine {engine}), adapting {selection!r}, batch {tuple(pixels.shape)}, "
          f"torch threads {torch.get_num_threads()}, CPU flags {' '.join(flags) or 'unknown'}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}")
    baseline = statistics.median(times[variants[0][0]])
    print("| step | CPU ms (median) | MB/s per CPU s | price |\n|---|---:|---:|---:|")
    for label in times:
        seconds = statistics.median(times[label])
        print(f"| {label} | {seconds * 1000:.1f} | {megabytes / seconds:.2f} | {seconds / baseline:.2f}x |")


if __name__ == "__main__":
    main()
