"""The slice's results table: OSOA vs --no-adapt vs PNG and WebP lossless, and MB/s both ways.

  python benchmarks/slice_table.py [--data data/eval] [--model NAME] [--limit N]

The evaluation folders come from scripts/build_corpus.py (photo tiles from
photos never used in training; Fashion-MNIST test images, never trained on).
All codecs run side by side in one process on the same files; bpsp counts
the whole archive (container, file table and all) against H*W*C.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import png_bytes, webp_lossless_bytes  # noqa: E402

from osoa_zip.adapt.engine import AdaptationConfig  # noqa: E402
from osoa_zip.archive import compress, decompress  # noqa: E402
from osoa_zip.models.registry import DEFAULT_MODEL  # noqa: E402

SETS = {"photo tiles 32x32 (RGB)": "tiles32", "Fashion-MNIST test (28x28 L)": "fashion_mnist"}


def _subset(folder: Path, limit: int | None, into: Path) -> Path:
    files = sorted(folder.glob("*.png"))[:limit]
    into.mkdir()
    for path in files:
        shutil.copy(path, into / path.name)
    return into


def _osoa(folder: Path, model: str, config: AdaptationConfig) -> tuple[int, float, float]:
    buffer = io.BytesIO()
    started = time.perf_counter()
    compress([folder], buffer, model, config)
    encode_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as restored:
        buffer.seek(0)
        started = time.perf_counter()
        decompress(buffer, Path(restored))
        decode_seconds = time.perf_counter() - started
    return len(buffer.getvalue()), encode_seconds, decode_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/eval"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    args = parser.parse_args()
    rows = []
    for label, name in SETS.items():
        with tempfile.TemporaryDirectory() as work:
            folder = _subset(args.data / name, args.limit, Path(work) / name)
            files = sorted(folder.glob("*.png"))
            subpixels = sum(np.asarray(Image.open(p)).size for p in files)
            png = sum(png_bytes(p) for p in files)
            webp_sizes = [webp_lossless_bytes(p) for p in files]
            webp = None if None in webp_sizes else sum(webp_sizes)
            adapted, encode_s, decode_s = _osoa(folder, args.model, AdaptationConfig())
            frozen, frozen_encode_s, _ = _osoa(folder, args.model, AdaptationConfig(adapt=False))
        rows.append((label, len(files), adapted * 8 / subpixels, frozen * 8 / subpixels, png * 8 / subpixels,
                     webp * 8 / subpixels if webp is not None else None, subpixels / encode_s / 1e6, subpixels / decode_s / 1e6, subpixels / frozen_encode_s / 1e6))
    print(f"model {args.model}; bpsp = archive bits / (H*W*C); MB/s of raw pixels\n")
    print("| set | images | OSOA bpsp | --no-adapt bpsp | PNG bpsp | WebP-LL bpsp | OSOA vs no-adapt | OSOA vs PNG "
          "| OSOA vs WebP | OSOA compress MB/s | OSOA decompress MB/s | no-adapt compress MB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, count, osoa, frozen, png, webp, enc, dec, frozen_enc in rows:
        webp_cells = f"{webp:.3f} | " if webp else "skipped | "
        versus_webp = f"{100 * (osoa / webp - 1):+.1f}%" if webp else "-"
        print(f"| {label} | {count} | {osoa:.3f} | {frozen:.3f} | {png:.3f} | {webp_cells}"
              f"{100 * (osoa / frozen - 1):+.1f}% | {100 * (osoa / png - 1):+.1f}% | {versus_webp} "
              f"| {enc:.3f} | {dec:.3f} | {frozen_enc:.3f} |")


if __name__ == "__main__":
    main()
