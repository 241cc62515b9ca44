"""What edge bins are worth: a model's exact NLL with and without them, on the same weights.

    python benchmarks/edge_bins.py                          # v3's weights, every evaluation set
    python benchmarks/edge_bins.py --model idf-sublattice-v4 --limit 512

Edge bins (config ``edge_bins``, exact/logistic.py) give the logistic's tails
beyond the pixel range to the bins at 0 and 255.  Switching the flag on a
network trained without it measures what the likelihood alone gains, before
any training with it.  Prints bits per sub-pixel (model bits only, no
container) per set.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osoa_zip.models.registry import load_model

REPO = Path(__file__).resolve().parents[1]
SETS = ("tiles32", "tiles64", "fashion_mnist", "gray32")


def _batches(folder: Path, limit: int, batch: int = 16):
    """Same-shaped images in batches of B x C x H x W float64 (the sets hold one shape each)."""
    arrays = [np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))[:limit]]
    arrays = [a[:, :, None] if a.ndim == 2 else a for a in arrays]
    for start in range(0, len(arrays), batch):
        yield torch.from_numpy(np.stack(arrays[start:start + batch])).permute(0, 3, 1, 2).to(torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="idf-sublattice-v3")
    parser.add_argument("--data", default=str(REPO / "data" / "eval"))
    parser.add_argument("--limit", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_model(args.model)
    print(f"{'set':14} {'without':>8} {'with':>8}  saving")
    for name in SETS:
        bits = {False: 0.0, True: 0.0}
        subpixels = 0
        for batch in _batches(Path(args.data) / name, args.limit):
            for edge_bins in bits:
                network = copy.copy(bundle.network(batch.shape[1]))  # shares the weights
                network.edge_bins = edge_bins
                with torch.no_grad():
                    bits[edge_bins] += float(network.nll(batch))
            subpixels += batch.numel()
        without, with_edges = bits[False] / subpixels, bits[True] / subpixels
        print(f"{name:14} {without:8.4f} {with_edges:8.4f}  {100 * (1 - with_edges / without):5.2f}%")


if __name__ == "__main__":
    main()
