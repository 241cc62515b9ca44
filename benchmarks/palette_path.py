"""Which path should palette indices and alpha planes take: the model, or xz beside it?

Palette: quantise photo tiles to 64 colours (half dithered) and compare
  * xz of the index planes (what the archive does, the PIDX chunk), with
  * the model coding the palette-expanded RGB (what a model path would do),
in bits per pixel.  Alpha: compare xz of alpha planes (ALPH) with the model
coding them as gray images.  Usage:

    python benchmarks/palette_path.py [--tiles data/eval/tiles64] [--count 48]
"""
from __future__ import annotations

import argparse
import io
import lzma
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from osoa_zip import compress
from osoa_zip.adapt.config import AdaptationConfig


def _model_bits(images: list[np.ndarray], folder: Path) -> int:
    folder.mkdir()
    for index, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{index:04d}.png", compress_level=0)
    output = io.BytesIO()
    summary = compress([folder], output, adaptation=AdaptationConfig())
    return summary.image_bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=Path, default=Path("data/eval/tiles64"))
    parser.add_argument("--count", type=int, default=48)
    args = parser.parse_args()
    paths = sorted(args.tiles.glob("*.png"))[:args.count]
    indices, expanded, alphas = [], [], []
    for number, path in enumerate(paths):
        rgb = Image.open(path).convert("RGB")
        dither = Image.Dither.FLOYDSTEINBERG if number % 2 else Image.Dither.NONE
        palette = rgb.quantize(64, dither=dither)
        indices.append(np.asarray(palette))
        expanded.append(np.asarray(palette.convert("RGB")))
        # A soft, object-like alpha: a thresholded, blurred luminance ramp.
        luminance = np.asarray(rgb.convert("L"), dtype=np.int32)
        alphas.append(np.where(luminance > np.median(luminance), 255, (luminance * 2).clip(0, 255)).astype(np.uint8))
    pixels = sum(i.size for i in indices)
    with tempfile.TemporaryDirectory() as scratch:
        model_palette = _model_bits(expanded, Path(scratch) / "palette")
        model_alpha = _model_bits(alphas, Path(scratch) / "alpha")
    xz_palette = 8 * len(lzma.compress(b"".join(i.tobytes() for i in indices), preset=9))
    xz_alpha = 8 * len(lzma.compress(b"".join(a.tobytes() for a in alphas), preset=9))
    print(f"{len(paths)} tiles from {args.tiles}, bits per pixel:")
    print(f"  palette indices: xz {xz_palette / pixels:.3f}  vs model on expanded RGB {model_palette / pixels:.3f}")
    print(f"  alpha planes:    xz {xz_alpha / pixels:.3f}  vs model as gray {model_alpha / pixels:.3f}")


if __name__ == "__main__":
    main()
