"""Coding speed of the adaptation engine, both directions, without file I/O.

  python benchmarks/speed.py [FOLDER] [--model NAME] [--batch 8] [--tile 64] [--limit N]
                             [--lr 3e-4] [--steps 1] [--no-adapt]

Cuts the folder's images (default data/eval/tiles64) into the batches that
`osoa-zip compress` would code, then times OnlineAdapter.encode over all of
them and OnlineAdapter.decode over the coded batches (each from θ0), checks
that the decoded pixels are the input, and prints MB/s of raw pixels
(H*W*C bytes), ms per batch, bpsp of the coded batches, and a SHA-256 of the
coded bytes: two versions of the code that print the same digest wrote
byte-identical batches.  On a shared machine wall time is noisy; the CPU
time of all threads is steadier (with OMP_NUM_THREADS=1 it is the work done).
Model loading, PNG decoding and the container are not timed (see docs/PERFORMANCE.md for whole-CLI timings).
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from PIL import Image

from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.imaging.tiles import gather, pad_even, plan_batches
from osoa_zip.models.registry import DEFAULT_MODEL, load_model

REPO = Path(__file__).resolve().parents[1]


def batches_of(folder: Path, config: AdaptationConfig, limit: int | None) -> list[np.ndarray]:
    images = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in ("L", "LA") else "RGB")
            pixels = np.asarray(image)
        images.append(pixels[:, :, None] if pixels.ndim == 2 else pixels)
    padded = [pad_even(p) for p in images]
    plan = plan_batches([p.shape for p in images], config.tile_size, config.batch_size_for)
    tiles = [gather(batch, padded) for batch in plan]
    return tiles[:limit] if limit else tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(REPO / "data" / "eval" / "tiles64"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=AdaptationConfig.batch_size)
    parser.add_argument("--tile", type=int, default=AdaptationConfig.tile_size)
    parser.add_argument("--lr", type=float, default=None, help="default: the model's own (as compress)")
    parser.add_argument("--steps", type=int, default=AdaptationConfig.steps_per_batch)
    parser.add_argument("--no-adapt", action="store_true")
    parser.add_argument("--gemm-threads", type=int, default=1,
                        help="threads for the products of wide blocks (osoa_zip.exact.stack.set_gemm_threads)")
    parser.add_argument("--limit", type=int, default=None, help="code only the first N batches")
    args = parser.parse_args()
    from osoa_zip.exact.stack import set_gemm_threads
    set_gemm_threads(args.gemm_threads)
    config = AdaptationConfig(adapt=not args.no_adapt, batch_size=args.batch, tile_size=args.tile,
                              learning_rate=args.lr, steps_per_batch=args.steps)
    bundle = load_model(args.model)
    batches = batches_of(Path(args.folder), config, args.limit)
    raw = sum(b.size for b in batches)

    encoder = OnlineAdapter(bundle, config)
    started, cpu_started = time.perf_counter(), time.process_time()
    coded = [encoder.encode(tiles)[0] for tiles in batches]
    encode_seconds, encode_cpu = time.perf_counter() - started, time.process_time() - cpu_started

    decoder = OnlineAdapter(bundle, config)
    started, cpu_started = time.perf_counter(), time.process_time()
    decoded = [decoder.decode(data, tiles.shape) for data, tiles in zip(coded, batches)]
    decode_seconds, decode_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if not all(np.array_equal(a, b) for a, b in zip(decoded, batches)):
        raise SystemExit("decoded pixels differ from the input")

    digest = hashlib.sha256(b"".join(len(d).to_bytes(4, "little") + d for d in coded)).hexdigest()[:16]
    bits = 8 * sum(len(d) for d in coded)
    print(f"{Path(args.folder).name}: {len(batches)} batches, {raw / 1e6:.3f} MB raw, "
          f"{bits / raw:.4f} bpsp, coded sha256 {digest}")
    for name, seconds, cpu in (("encode", encode_seconds, encode_cpu), ("decode", decode_seconds, decode_cpu)):
        print(f"  {name}: {raw / 1e6 / seconds:.3f} MB/s, {1000 * seconds / len(batches):.0f} ms/batch "
              f"(CPU time of all threads: {1000 * cpu / len(batches):.0f} ms/batch)")


if __name__ == "__main__":
    main()
