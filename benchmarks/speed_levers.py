"""Speed levers that change the output: bpsp against CPU, for choosing defaults and formats.

  python benchmarks/speed_levers.py [FOLDER ...] [--images N] [--levers default,half,...]

For each folder (default data/eval/tiles64 and data/eval/photos768) and each lever, codes the
folder's batches in this process as benchmarks/speed.py does (one thread, no worker), decodes
them with the same rule and checks the pixels, and prints:

  * bpsp of the coded batches (the model's bits, no container) and its change against
    ``default``, and the share of adaptation's gain (default against ``no-adapt``) it keeps;
  * CPU ms per batch of the passes the lever needs once built into the engine, one thread,
    the mean over the batches but the first: the coding pass (with the graph of what steps),
    the backward pass and Adam, without the entropy coder.  (The emulation below pays an
    extra pass; this column does not.)  Levers that change the batch size change the number
    of batches: compare their CPU per batch with that in mind.

Levers:

  default     one step a batch on every tile (the engine's default)
  half        the step's loss over every other tile of the batch (tiles 0, 2, 4, ...)
  quarter     the same over every fourth tile
  every2      a step after every other batch only
  pixels64k   batch_pixels 65536: twice the small tiles to a batch, half the steps
  last        only the last layers adapt (the engine's --adapt-params last)
  no-adapt    the pretrained model frozen

``half``, ``quarter`` and ``every2`` are not settings of any format: they are emulated by an
OnlineAdapter whose update takes its loss from a separate pass over the chosen tiles (or
skips the step), on the encoder and the decoder alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import REPO, batches_of  # noqa: E402

from osoa_zip.adapt.config import AdaptationConfig  # noqa: E402
from osoa_zip.adapt.defaults import adaptation_for  # noqa: E402
from osoa_zip.adapt.engine import OnlineAdapter, adapting_copy  # noqa: E402
from osoa_zip.models.registry import DEFAULT_MODEL, load_model  # noqa: E402


class _Lever(OnlineAdapter):
    """An adapter whose update steps on every ``stride``-th tile, after every ``every``-th batch."""

    def __init__(self, bundle, config, stride: int = 1, every: int = 1) -> None:
        super().__init__(bundle, config)
        self.stride, self.every = stride, every

    def _adapt(self, track, pixels, loss, trunks, keep_previous: bool = False) -> None:
        if track.batches % self.every:
            return
        if self.stride > 1:  # the step's loss over the chosen tiles, from a pass of its own
            pixels, loss, trunks = pixels[::self.stride], None, None
        super()._adapt(track, pixels, loss, trunks, keep_previous)


LEVERS = {  # (AdaptationConfig settings, _Lever options)
    "default": ({}, {}),
    "half": ({}, {"stride": 2}),
    "quarter": ({}, {"stride": 4}),
    "every2": ({}, {"every": 2}),
    "pixels64k": ({"batch_pixels": 65536}, {}),
    "last": ({"parameters": "last"}, {}),
    "no-adapt": ({"adapt": False}, {}),
}


def _batches(folder: Path, config: AdaptationConfig, images: int | None) -> list[np.ndarray]:
    """The batches of the folder's first ``images`` images (all: None), planned with ``config``:
    every lever codes the same pixels, whatever its batch size."""
    if images is None:
        return batches_of(folder, config, None)
    with tempfile.TemporaryDirectory() as scratch:
        for path in sorted(folder.glob("*.png"))[:images]:
            os.symlink(path.resolve(), Path(scratch) / path.name)
        return batches_of(Path(scratch), config, None)


def _pass_cpu(bundle, config, batches: list, stride: int, every: int) -> float:
    """Mean CPU ms a batch of the lever's passes as the engine would run them: the coding pass
    over the batch, keeping the graph of the tiles that step, then their backward and Adam."""
    channels = batches[0].shape[1]
    network, optimizer = adapting_copy(bundle.network(channels), config, channels)
    times = []
    for index, tiles in enumerate(batches):
        pixels = torch.from_numpy(tiles).to(torch.float64)
        steps = config.adapt and index % every == 0
        started = time.thread_time()
        if not steps:
            with torch.no_grad():
                network.analyse(pixels, with_loss=False)
        else:
            loss, _ = network.analyse(pixels[::stride], with_loss=True)
            kept = torch.ones(len(pixels), dtype=torch.bool)
            kept[::stride] = False
            if kept.any():
                with torch.no_grad():
                    network.analyse(pixels[kept], with_loss=False)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times.append(time.thread_time() - started)
    return 1000 * statistics.mean(times[1:] or times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", default=[str(REPO / "data" / "eval" / "tiles64"),
                                                      str(REPO / "data" / "eval" / "photos768")])
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--images", type=int, default=None, help="the first N images of each folder")
    args = parser.parse_args()
    levers = args.levers.split(",")
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        parser.error(f"unknown levers {unknown} (known: {', '.join(LEVERS)})")
    torch.set_num_threads(1)
    bundle = load_model(DEFAULT_MODEL)
    print("| set | lever | batches | bpsp | size against default | adaptation's gain kept | CPU ms a batch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for folder in args.folders:
        rows = {}  # lever -> (batches, bits, raw sub-pixels, CPU ms a batch)
        for lever in levers:
            settings, options = LEVERS[lever]
            config = adaptation_for(bundle.name, AdaptationConfig(**settings))
            batches = _batches(Path(folder), config, args.images)
            encoder, decoder = _Lever(bundle, config, **options), _Lever(bundle, config, **options)
            coded = [encoder.encode(tiles)[0] for tiles in batches]
            if not all(np.array_equal(decoder.decode(data, tiles.shape), tiles) for data, tiles in zip(coded, batches)):
                raise SystemExit(f"{lever}: decoded pixels differ from the input")
            cpu = _pass_cpu(bundle, config, batches, options.get("stride", 1), options.get("every", 1))
            rows[lever] = (len(batches), 8 * sum(len(data) for data in coded), sum(b.size for b in batches), cpu)
        default, frozen = rows.get("default"), rows.get("no-adapt")
        for lever, (count, bits, raw, cpu) in rows.items():
            against = f"{100 * (bits / default[1] - 1):+.2f}%" if default else ""
            kept = ""
            if default and frozen and frozen[1] != default[1]:
                kept = f"{100 * (frozen[1] - bits) / (frozen[1] - default[1]):.0f}%"
            print(f"| {Path(folder).name} | {lever} | {count} | {bits / raw:.4f} | {against} | {kept} | {cpu:.0f} |",
                  flush=True)

if __name__ == "__main__":
    main()
