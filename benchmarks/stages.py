"""Where a batch's time goes: CPU ms per stage of what OnlineAdapter does, one thread.

  python benchmarks/stages.py FOLDER [--batch-size 8] [--batch-pixels 16384] [--params all|last|bias]

Stages, per batch (medians would hide the slow batches, so these are means):
forward without a graph (what coding with θ0 costs), `analyse` (the coding pass
with its graph, what adapting starts from), `push` (the entropy coder on the
analysed factors), `decode` (the decoder's pass without a graph: its forward
and popping, on the pushed bytes), `backward` and exact Adam.  The network adapts as the engine's
would (no guard).  CPU time of this thread only, so other jobs on the machine
barely move it.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from speed import batches_of  # noqa: E402

from osoa_zip.adapt.config import PARAMETER_SELECTIONS, AdaptationConfig  # noqa: E402
from osoa_zip.adapt.defaults import adaptation_for  # noqa: E402
from osoa_zip.adapt.engine import _select_parameters  # noqa: E402
from osoa_zip.coding.ans import Decoder, Encoder  # noqa: E402
from osoa_zip.exact.optim import ExactAdam  # noqa: E402
from osoa_zip.models.registry import DEFAULT_MODEL, load_model  # noqa: E402

STAGES = ("forward", "analyse", "push", "decode", "backward", "adam")


def _push(network, factors) -> bytes:
    encoder = Encoder()
    network.push(factors, encoder)
    return encoder.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=AdaptationConfig.batch_size)
    parser.add_argument("--batch-pixels", type=int, default=AdaptationConfig.batch_pixels)
    parser.add_argument("--params", choices=PARAMETER_SELECTIONS, default=None,
                        help="parameter selection (default: the engine's for the folder's channel count)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = adaptation_for(args.model, AdaptationConfig(batch_size=args.batch_size, batch_pixels=args.batch_pixels))
    batches = batches_of(args.folder, config, None)
    channels = batches[0].shape[1]
    bundle = load_model(args.model)
    network = copy.deepcopy(bundle.network(channels))
    selection = args.params or config.parameters_for(channels)
    _select_parameters(network, selection)
    optimizer = ExactAdam(network.parameters(), config.learning_rate, (config.beta1, config.beta2), config.epsilon)
    spent = dict.fromkeys(STAGES, 0.0)

    def timed(stage, function, *arguments):
        started = time.process_time()
        result = function(*arguments)
        spent[stage] += time.process_time() - started
        return result

    for batch in batches:
        pixels = torch.from_numpy(batch).to(torch.float64)
        with torch.no_grad():
            timed("forward", network.analyse, pixels, True)
        loss, factors = timed("analyse", network.analyse, pixels, True)
        data = timed("push", _push, network, factors)
        with torch.no_grad():
            decoded = timed("decode", network.decode, Decoder(data), pixels.shape)
        assert torch.equal(decoded, pixels)
        optimizer.zero_grad()
        timed("backward", loss.backward)
        timed("adam", optimizer.step)
    sizes = sorted({b.shape[0] for b in batches})
    print(f"{args.folder.name}: {len(batches)} batches of {sizes} tiles {batches[0].shape[2:]}, "
          f"{channels} channel(s), parameters {selection!r}; CPU ms per batch:")
    print("  " + "  ".join(f"{stage} {1000 * spent[stage] / len(batches):.1f}" for stage in STAGES))


if __name__ == "__main__":
    main()
