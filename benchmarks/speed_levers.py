"""Speed levers that change the output: bpsp against MB/s, for choosing defaults.

  python benchmarks/speed_levers.py [FOLDER ...] [--limit N]

For each folder (default data/eval/tiles64 and data/eval/fashion_mnist) and
each lever, codes the folder's batches as benchmarks/speed.py does and
prints bpsp of the coded batches (model bits only, no container) and MB/s of
raw pixels in both directions, and the CPU time per batch of all threads
(steadier than wall time on a shared machine; note the batch count differs
between batch sizes, so compare CPU time per *byte* there).  Levers:

  default          batch 8, all parameters, one step per batch
  batch16/batch32  larger batches (fewer, larger adaptation steps)
  last             adapt only each network's output layer and the final prior
  bias             adapt only the biases and the final prior
  every2           adapt after every other batch only
  no-adapt         the pretrained model frozen

"last", "bias" and "every2" are emulated here by freezing parameters /
skipping steps on OnlineAdapter (the engine's own flags for them are being
added separately); the emulation codes and decodes with the same rule, so
round trips are checked.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from speed import REPO, batches_of

from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.models.registry import DEFAULT_MODEL, load_model


class _Lever(OnlineAdapter):
    def __init__(self, bundle, config, selection: str = "all", every: int = 1) -> None:
        super().__init__(bundle, config)
        self.selection, self.every, self.seen = selection, every, 0

    def _network(self, channels):
        fresh = channels not in self._networks
        network = super()._network(channels)
        if fresh and self.selection != "all":
            for name, parameter in network.named_parameters():
                last = any(name.startswith(f"{stack}.convs.{len(module.convs) - 1}.")
                           for stack, module in network.named_modules() if hasattr(module, "convs"))
                keep = name.startswith("final_") or (last if self.selection == "last" else name.endswith(".bias"))
                parameter.requires_grad_(keep)
            optimizer = self._optimizers[channels]
            keep_ids = {id(p) for p in network.parameters() if p.requires_grad}
            optimizer.params = [p for p in optimizer.params if id(p) in keep_ids]
            optimizer.first = [m for m, p in zip(optimizer.first, network.parameters()) if id(p) in keep_ids]
            optimizer.second = [v for v, p in zip(optimizer.second, network.parameters()) if id(p) in keep_ids]
        return network

    def _adapting(self) -> bool:
        return super()._adapting() and self.seen % self.every == 0

    def _adapt(self, pixels, loss) -> None:
        super()._adapt(pixels, loss)
        self.seen += 1


LEVERS = {
    "default": (dict(), dict()),
    "batch16": (dict(batch_size=16), dict()),
    "batch32": (dict(batch_size=32), dict()),
    "last": (dict(), dict(selection="last")),
    "bias": (dict(), dict(selection="bias")),
    "every2": (dict(), dict(every=2)),
    "no-adapt": (dict(adapt=False), dict()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", default=[str(REPO / "data" / "eval" / "tiles64"),
                                                      str(REPO / "data" / "eval" / "fashion_mnist")])
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    bundle = load_model(DEFAULT_MODEL)
    print("| set | lever | bpsp | encode MB/s | decode MB/s | encode CPU ms/batch | decode CPU ms/batch |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.folders:
        for lever in args.levers.split(","):
            settings, emulation = LEVERS[lever]
            config = AdaptationConfig(**settings)
            batches = batches_of(Path(folder), config, args.limit)
            raw = sum(b.size for b in batches)
            encoder = _Lever(bundle, config, **emulation)
            started, cpu_started = time.perf_counter(), time.process_time()
            coded = [encoder.encode(tiles)[0] for tiles in batches]
            encode_seconds, encode_cpu = time.perf_counter() - started, time.process_time() - cpu_started
            decoder = _Lever(bundle, config, **emulation)
            started, cpu_started = time.perf_counter(), time.process_time()
            decoded = [decoder.decode(data, tiles.shape) for data, tiles in zip(coded, batches)]
            decode_seconds, decode_cpu = time.perf_counter() - started, time.process_time() - cpu_started
            if not all(np.array_equal(a, b) for a, b in zip(decoded, batches)):
                raise SystemExit(f"{lever}: decoded pixels differ from the input")
            bpsp = 8 * sum(len(d) for d in coded) / raw
            print(f"| {Path(folder).name} | {lever} | {bpsp:.4f} | {raw / 1e6 / encode_seconds:.3f} | "
                  f"{raw / 1e6 / decode_seconds:.3f} | {1000 * encode_cpu / len(batches):.0f} | "
                  f"{1000 * decode_cpu / len(batches):.0f} |", flush=True)


if __name__ == "__main__":
    main()
