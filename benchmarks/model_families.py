"""Model-coded bpsp of the flow and the VAE, frozen and adapted, on the same batches.

  python benchmarks/model_families.py --models idf-sublattice-v2 vae-conv-v1 --sets tiles32 tiles64

Codes every image of each set through the OSOA engine exactly as an archive
would (images padded to even sides, cut into tiles, batched; default tile
size and batch size), but reports only the coded batches' bits per
sub-pixel, without the container and without the archive's "store as files
when the model loses" fallback, so that models can be compared even where
they lose to PNG.  With the model frozen it also prints the model's ``nll``
summed over the batches (the VAE's: a one-sample negative ELBO), to compare
bytes written with the loss, and for the VAE the estimated cost of its
initial bits (the first-coded tile of each chain of batches on one stack,
``--chain-batches``, is coded without bits back).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.imaging.tiles import gather, pad_even, plan_batches
from osoa_zip.exact.logistic import nll_bits
from osoa_zip.models.registry import load_model


def batches_of(folder: Path, config: AdaptationConfig, limit: int | None) -> list[np.ndarray]:
    images = []
    for path in sorted(folder.glob("*.png"))[:limit]:
        with Image.open(path) as image:
            pixels = np.asarray(image)
        images.append(pad_even(pixels.reshape(pixels.shape[0], pixels.shape[1], -1)))
    plan = plan_batches([(i.shape[0], i.shape[1], i.shape[2]) for i in images], config.tile_size, config.batch_size_for)
    return [gather(batch, images) for batch in plan]


def measure(model: str, batches: list[np.ndarray], config: AdaptationConfig) -> dict:
    """Coded bits per sub-pixel; with the model frozen, also its nll (the same weights code)."""
    bundle = load_model(model)
    adapter = OnlineAdapter(bundle, config)
    bits = nll = 0
    started = time.perf_counter()
    chain = adapter.chain_length  # the VAE lays chains of batches on one stack, as archives do
    for start in range(0, len(batches), chain):
        bits += sum(stats.bits for _, stats in adapter.encode_chain(batches[start:start + chain]))
    subpixels = sum(tiles.size for tiles in batches)
    seconds = time.perf_counter() - started
    if config.adapt:
        return {"bpsp": bits / subpixels, "nll_bpsp": float("nan"), "bytes_over_nll": float("nan"),
                "initial_bpsp": float("nan"), "seconds": seconds}
    initial = 0.0
    with torch.no_grad():
        for index, tiles in enumerate(batches):
            network = bundle.network(tiles.shape[1])
            pixels = torch.from_numpy(tiles).to(torch.float64)
            nll += float(network.nll(pixels))
            first_coded = index % chain == chain - 1 or index == len(batches) - 1  # a chain's last batch
            if bundle.family == "vae" and first_coded:  # its last tile gets no bits back: ~ -log q(z|x) more
                mean, log_scale = network.posterior(pixels[-1:])
                z = network._sample(mean, log_scale, pixels[-1:])
                initial += float(nll_bits(z, mean, log_scale, network.tables).sum())
    return {"bpsp": bits / subpixels, "nll_bpsp": nll / subpixels, "bytes_over_nll": bits / nll,
            "initial_bpsp": initial / subpixels, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/eval"))
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--sets", nargs="+", default=["tiles32", "tiles64"])
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    parser.add_argument("--no-adapt-only", action="store_true")
    parser.add_argument("--learning-rate", type=float, default=AdaptationConfig.learning_rate)
    parser.add_argument("--chain-batches", type=int, default=AdaptationConfig.chain_batches,
                        help="batches on one bits-back stack (VAE; 1: each batch alone, as before format 1.4)")
    args = parser.parse_args()
    print("| set | model | adapt | coded bpsp | nll bpsp | bytes / nll | VAE first-tile -log q bpsp | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        for model in args.models:
            for adapt in ([False] if args.no_adapt_only else [False, True]):
                config = AdaptationConfig(adapt=adapt, learning_rate=args.learning_rate,
                                          chain_batches=args.chain_batches)
                result = measure(model, batches_of(args.data / name, config, args.limit), config)
                print(f"| {name} | {model} | {'OSOA' if adapt else 'frozen'} | {result['bpsp']:.3f} | "
                      f"{result['nll_bpsp']:.3f} | {result['bytes_over_nll']:.4f} | {result['initial_bpsp']:.4f} | "
                      f"{result['seconds']:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
