"""Choose the default adaptation settings on data kept apart from evaluation.

  python benchmarks/tune_adaptation.py [--model NAME] [--rates 3e-4,1e-3,3e-3] [--batch-sizes 16]

Tuning sets (built here, under data/tune/): the first 512 Fashion-MNIST
*training* images (the evaluation uses test images) and the last 256 tiles
of the RGB training corpus.  Needs data/ from scripts/build_corpus.py; the
Fashion-MNIST training file is unpacked from the .deb cached there.
"""
from __future__ import annotations

import argparse
import gzip
import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from osoa_zip.adapt.engine import AdaptationConfig
from osoa_zip.archive import compress
from osoa_zip.models.registry import DEFAULT_MODEL

DATA = Path("data")


def _fashion_train(count: int) -> np.ndarray:
    deb = next((DATA / "cache").glob("dataset-fashion-mnist_*.deb"))
    archive = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("train-images-idx3-ubyte.gz"))
        raw = gzip.decompress(tar.extractfile(member).read())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:count]


def _folder(name: str, images) -> Path:
    folder = DATA / "tune" / name
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for index, pixels in enumerate(images):
            Image.fromarray(pixels.squeeze()).save(folder / f"{index:04d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--rates", default="3e-4,1e-3,3e-3")
    parser.add_argument("--batch-sizes", default="16")
    parser.add_argument("--steps", default="1")
    args = parser.parse_args()
    sets = {"fashion_mnist_train": _folder("fashion_mnist_train", _fashion_train(512)),
            "train_tiles32": _folder("train_tiles32", np.load(DATA / "train_rgb32.npy", mmap_mode="r")[-256:])}
    for name, folder in sets.items():
        subpixels = sum(np.asarray(Image.open(p)).size for p in folder.glob("*.png"))

        def bpsp(config: AdaptationConfig, folder=folder, subpixels=subpixels) -> float:
            buffer = io.BytesIO()
            compress([folder], buffer, args.model, config)
            return len(buffer.getvalue()) * 8 / subpixels

        print(f"{name}: no-adapt {bpsp(AdaptationConfig(adapt=False)):.4f} bpsp", flush=True)
        for batch_size in map(int, args.batch_sizes.split(",")):
            for steps in map(int, args.steps.split(",")):
                for rate in map(float, args.rates.split(",")):
                    config = AdaptationConfig(learning_rate=rate, batch_size=batch_size, steps_per_batch=steps)
                    print(f"{name}: lr {rate:g} batch {batch_size} steps {steps}: {bpsp(config):.4f} bpsp", flush=True)


if __name__ == "__main__":
    main()
