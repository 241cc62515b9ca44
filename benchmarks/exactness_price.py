"""The price of exactness: one adaptation step, exact core vs plain float32.

  python benchmarks/exactness_price.py [--model NAME] [--batch 16] [--tile 64] [--repeat 5]

Same network, same batch (real photo tiles from data/eval/tiles64, or the
bundled examples): forward + backward + Adam step in the exact float64
fixed-point engine (what osoa-zip replays) against float32 with torch's Adam
(what an inexact implementation would do).  Median of --repeat runs.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osoa_zip.exact.optim import ExactAdam
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


def _time_step(network, optimizer, pixels, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        optimizer.zero_grad()
        network.nll(pixels).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    exact = copy.deepcopy(load_model(args.model).network(3))
    plain = copy.deepcopy(exact).to(torch.float32)
    pixels = _batch(args.batch, args.tile)
    exact_seconds = _time_step(exact, ExactAdam(exact.parameters(), 1e-4), pixels.double(), args.repeat)
    plain_seconds = _time_step(plain, torch.optim.Adam(plain.parameters(), 1e-4), pixels.float(), args.repeat)
    megabytes = pixels.numel() / 1e6
    print(f"model {args.model}, batch {tuple(pixels.shape)}, torch threads {torch.get_num_threads()}")
    print(f"exact float64 step:  {exact_seconds * 1000:.0f} ms  ({megabytes / exact_seconds:.2f} MB/s)")
    print(f"float32 step:        {plain_seconds * 1000:.0f} ms  ({megabytes / plain_seconds:.2f} MB/s)")
    print(f"price of exactness:  {exact_seconds / plain_seconds:.2f}x")


if __name__ == "__main__":
    main()
