"""Both model families side by side: bits per sub-pixel frozen and adapted, speed, and the
classical codecs on the same images.

  python benchmarks/model_families.py --models idf-sublattice-v6 vae-hier-v3 \
      --sets tiles32 tiles64 fashion_mnist gray32 photos768 --limit 128 --baselines

Codes the first ``--limit`` images of each set through the OSOA engine exactly as an
archive would (images padded to even sides, cut into tiles, batched, the VAE's batches
chained on one bits-back stack; 1.6's defaults), but counts only the coded batches'
bits, without the container and without the archive's "store as files when the model
loses" fallback, so that models can be compared even where they lose to PNG.  Each
model adapts at the rate its manifest entry recommends (``osoa-zip models``) unless
``--learning-rate`` is given.

Per set and model it prints: bpsp with the model frozen and with OSOA; the frozen
model's bits over its own ``nll`` (the VAE's: a one-sample negative ELBO; the rest is
the first-coded tile's initial bits and the coder's state); and the MB/s of raw pixels
of the OSOA pass in each direction, in this process on one intra-op thread (the
decoder's output is checked against the images).  With ``--baselines``, PNG, WebP
lossless and JPEG XL lossless (effort 7) of the same images, one file each.  bpsp is
over the images' own sub-pixels (not the padded tiles').
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osoa_zip.adapt.defaults import adaptation_for
from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.bench import classical
from osoa_zip.exact.stack import set_gemm_threads
from osoa_zip.imaging.tiles import gather, pad_even, plan_batches
from osoa_zip.models.registry import load_model


def images_of(folder: Path, limit: int | None) -> list[Path]:
    return sorted(folder.glob("*.png"))[:limit]


def batches_of(paths: list[Path], config: AdaptationConfig) -> list[np.ndarray]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image)
        images.append(pad_even(pixels.reshape(pixels.shape[0], pixels.shape[1], -1)))
    plan = plan_batches([(i.shape[0], i.shape[1], i.shape[2]) for i in images], config.tile_size, config.batch_size_for)
    return [gather(batch, images) for batch in plan]


def _chains(adapter: OnlineAdapter, batches: list[np.ndarray]) -> list[list[np.ndarray]]:
    chain = adapter.chain_length  # the VAE lays chains of batches on one stack, as archives do
    return [batches[start:start + chain] for start in range(0, len(batches), chain)]


def code(model: str, batches: list[np.ndarray], config: AdaptationConfig) -> dict:
    """Bits of every batch coded as an archive would; with adaptation, also decoded back (timed)."""
    bundle = load_model(model)
    encoder = OnlineAdapter(bundle, config)
    started = time.perf_counter()
    coded = [item for chain in _chains(encoder, batches) for item in encoder.encode_chain(chain)]
    result = {"bits": sum(stats.bits for _, stats in coded), "encode_seconds": time.perf_counter() - started}
    if config.adapt:
        decoder = OnlineAdapter(bundle, config)
        started = time.perf_counter()
        for (data, _), tiles in zip(coded, batches):
            if not np.array_equal(decoder.decode(data, tiles.shape), tiles):
                raise SystemExit(f"{model}: a batch did not decode back to its tiles")
        decoder.end_run()
        result["decode_seconds"] = time.perf_counter() - started
    else:
        with torch.no_grad():
            result["nll"] = sum(float(bundle.network(tiles.shape[1]).nll(torch.from_numpy(tiles).to(torch.float64)))
                                for tiles in batches)
    return result


def baselines(paths: list[Path]) -> dict[str, int | None]:
    """Bytes of each per-image classical codec over the images (None: not installed here)."""
    sizes = {}
    for key in ("png", "webp", "jxl"):
        if classical.CODECS[key].missing():
            sizes[key] = None
            continue
        total = 0
        for path in paths:
            with Image.open(path) as image:
                image.load()
                total += len(classical._encode(key, image, classical.WEBP_METHOD))
        sizes[key] = total
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/eval"))
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--sets", nargs="+", default=["tiles32", "tiles64"])
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    parser.add_argument("--no-adapt-only", action="store_true")
    parser.add_argument("--parameters", default=AdaptationConfig.parameters,
                        help="which RGB parameters adapt (all, last, bias; AdaptationConfig.parameters)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="for every model (default: each model's recommended rate, see `osoa-zip models`)")
    parser.add_argument("--chain-batches", type=int, default=AdaptationConfig.chain_batches,
                        help="batches on one bits-back stack (VAE; 1: each batch alone, as before format 1.4)")
    parser.add_argument("--baselines", action="store_true",
                        help=f"also PNG, WebP lossless (method {classical.WEBP_METHOD}) and JPEG XL lossless")
    args = parser.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:  # as the command line runs the engine
        torch.set_num_threads(1)
        set_gemm_threads(min(2, len(os.sched_getaffinity(0))))
    print("| set | model | lr | frozen bpsp | OSOA bpsp | OSOA / frozen | frozen bits / nll | OSOA compress MB/s "
          "| decompress MB/s | PNG | WebP-LL | JPEG XL-LL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        paths = images_of(args.data / name, args.limit)
        subpixels = 0
        for path in paths:
            with Image.open(path) as image:
                subpixels += image.width * image.height * len(image.getbands())
        sizes = baselines(paths) if args.baselines else {}
        classic = " | ".join("—" if sizes.get(key) is None else f"{8 * sizes[key] / subpixels:.3f}"
                             for key in ("png", "webp", "jxl"))
        for model in args.models:
            rate = args.learning_rate or adaptation_for(model).learning_rate
            frozen_config = AdaptationConfig(adapt=False, chain_batches=args.chain_batches)
            batches = batches_of(paths, frozen_config)
            frozen = code(model, batches, frozen_config)
            row = [f"{frozen['bits'] / subpixels:.3f}"]
            if args.no_adapt_only:
                row += ["—", "—", f"{frozen['bits'] / frozen['nll']:.4f}", "—", "—"]
            else:
                adapted = code(model, batches, AdaptationConfig(learning_rate=rate, chain_batches=args.chain_batches,
                                                                 parameters=args.parameters))
                megabytes = subpixels / 1e6
                row += [f"{adapted['bits'] / subpixels:.3f}", f"{adapted['bits'] / frozen['bits']:.4f}",
                        f"{frozen['bits'] / frozen['nll']:.4f}", f"{megabytes / adapted['encode_seconds']:.3f}",
                        f"{megabytes / adapted['decode_seconds']:.3f}"]
            print(f"| {name} | {model} | {rate:g} | " + " | ".join(row) + f" | {classic} |", flush=True)


if __name__ == "__main__":
    main()
