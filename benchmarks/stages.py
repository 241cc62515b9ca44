"""Where a batch's time goes: CPU ms per stage of what OnlineAdapter does, one thread.

  python benchmarks/stages.py FOLDER [--model NAME] [--limit N] [--batch-size 8]
                              [--batch-pixels 16384] [--params all|last|bias]

Stages, per batch (medians would hide the slow batches, so these are means):
forward without a graph (what coding with θ0 costs), `analyse` (the coding pass
with its graph, what adapting starts from), `push` (the entropy coder on the
analysed factors), `decode` (the decoder's pass without a graph: its forward
and popping, on the pushed bytes), `backward` and exact Adam.  The network adapts as the engine's
would (no guard).  CPU time of this thread only, so other jobs on the machine
barely move it.  A bits-back VAE has no separate coding pass: its `push` stage is
the whole bits-back encode (networks included) and `analyse` its `nll`.

Then the entropy coder alone, per symbol (every latent value coded: sub-pixels,
and a VAE's latents): `coder push` is the CPU time inside the coder's push
functions and the final ANS pass (``Encoder.finish``, ``StackCoder.push``),
`coder pop` the time inside its pop functions, both while the stages above run.
The line ends with a SHA-256 of the coded bytes: two versions of the code that
print the same digest wrote the same bytes.  The first ``--warm-up`` batches (1)
are coded and adapted on but not timed: they fill the coder's per-model tables
once (tens of ms, what every later batch reuses).
"""
from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import sys
import time
from pathlib import Path

import torch

import osoa_zip

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from speed import batches_of  # noqa: E402

from osoa_zip.adapt.config import PARAMETER_SELECTIONS, AdaptationConfig  # noqa: E402
from osoa_zip.adapt.defaults import adaptation_for  # noqa: E402
from osoa_zip.adapt.engine import _select_parameters  # noqa: E402
from osoa_zip.coding import bitsback, logistic_coder, mixture_coder  # noqa: E402
from osoa_zip.coding.ans import Decoder, Encoder  # noqa: E402
from osoa_zip.exact.optim import ExactAdam  # noqa: E402
from osoa_zip.models.registry import DEFAULT_MODEL, load_model  # noqa: E402

STAGES = ("forward", "analyse", "push", "decode", "backward", "adam")
PUSHES = (logistic_coder.push_factors, logistic_coder.push_factor, mixture_coder.push_mixture_factors)
POPS = (logistic_coder.pop_factor, mixture_coder.pop_mixture_factor)


class CoderClock:
    """CPU time and symbols inside the entropy coder's entry points, as the models call them.

    The models import the coder's functions by name, so each model module's names are
    rebound to timed wrappers (the coder's internal calls stay untimed: nothing counts
    twice); the final ANS passes are methods, wrapped on their classes.
    """

    def __init__(self) -> None:
        self.seconds = {"push": 0.0, "pop": 0.0}
        self.symbols = {"push": 0, "pop": 0}
        for module in [m for name, m in sys.modules.items() if name.startswith("osoa_zip.models")]:
            for name, value in vars(module).copy().items():
                if any(value is f for f in PUSHES):
                    setattr(module, name, self._timed("push", value, self._pushed))
                elif any(value is f for f in POPS):
                    setattr(module, name, self._timed("pop", value, lambda args, kwargs, result: result.numel()))
        Encoder.finish = self._timed("push", Encoder.finish)
        bitsback.StackCoder.push = self._timed("push", bitsback.StackCoder.push)

    @staticmethod
    def _pushed(args, kwargs, result) -> int:
        if isinstance(args[2], list):  # (encoder, tables, factors)
            return sum(f[0].numel() for f in args[2])
        return args[2].numel()  # (encoder, tables, values, ...)

    def _timed(self, kind: str, function, count=None):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.process_time()
            result = function(*args, **kwargs)
            self.seconds[kind] += time.process_time() - started
            if count is not None:
                self.symbols[kind] += count(args, kwargs, result)
            return result
        return timed

    def report(self) -> str:
        return "  ".join(f"coder {kind} {1e6 * self.seconds[kind] / max(1, self.symbols[kind]):.3f} us/symbol "
                         f"({self.symbols[kind]} symbols)" for kind in ("push", "pop"))


def _push(network, factors) -> bytes:
    encoder = Encoder()
    network.push(factors, encoder)
    return encoder.finish()


def _bits_back_push(network, pixels) -> bytes:
    coder = bitsback.StackCoder()
    network.encode(pixels, coder)
    return coder.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--limit", type=int, default=None, help="only the first N batches")
    parser.add_argument("--warm-up", type=int, default=1, help="batches run first and not timed")
    parser.add_argument("--batch-size", type=int, default=AdaptationConfig.batch_size)
    parser.add_argument("--batch-pixels", type=int, default=AdaptationConfig.batch_pixels)
    parser.add_argument("--params", choices=PARAMETER_SELECTIONS, default=None,
                        help="parameter selection (default: the engine's for the folder's channel count)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = adaptation_for(args.model, AdaptationConfig(batch_size=args.batch_size, batch_pixels=args.batch_pixels))
    batches = batches_of(args.folder, config, args.limit)
    channels = batches[0].shape[1]
    bundle = load_model(args.model)
    network = copy.deepcopy(bundle.network(channels))
    # Bits-back families code from the pixels on a stack (their analyse returns no factors).
    bits_back = not hasattr(network, "analyse") or getattr(type(network), "new_encoder", None) is bitsback.StackCoder
    selection = args.params or config.parameters_for(channels)
    _select_parameters(network, selection)
    optimizer = ExactAdam(network.parameters(), config.learning_rate, (config.beta1, config.beta2), config.epsilon)
    spent = dict.fromkeys(STAGES, 0.0)
    clock = CoderClock()
    digest = hashlib.sha256()

    def timed(stage, function, *arguments):
        started = time.process_time()
        result = function(*arguments)
        spent[stage] += time.process_time() - started
        return result

    for index, batch in enumerate(batches):
        if index == args.warm_up:  # the warm-up batches' times do not count
            spent = dict.fromkeys(STAGES, 0.0)
            clock.seconds, clock.symbols = dict.fromkeys(clock.seconds, 0.0), dict.fromkeys(clock.symbols, 0)
        pixels = torch.from_numpy(batch).to(torch.float64)
        if bits_back:
            with torch.no_grad():
                timed("forward", network.nll, pixels)
            loss = timed("analyse", network.nll, pixels)
            with torch.no_grad():
                data = timed("push", _bits_back_push, network, pixels)
                decoded = timed("decode", network.decode, bitsback.StackCoder(data), pixels.shape)
        else:
            with torch.no_grad():
                timed("forward", network.analyse, pixels, True)
            loss, factors = timed("analyse", network.analyse, pixels, True)
            data = timed("push", _push, network, factors)
            with torch.no_grad():
                decoded = timed("decode", network.decode, Decoder(data), pixels.shape)
        assert torch.equal(decoded, pixels)
        digest.update(len(data).to_bytes(4, "little") + data)
        optimizer.zero_grad()
        timed("backward", loss.backward)
        timed("adam", optimizer.step)
    sizes = sorted({b.shape[0] for b in batches})
    timed_batches = max(1, len(batches) - args.warm_up)
    print(f"{args.folder.name} ({args.model}): {len(batches)} batches of {sizes} tiles {batches[0].shape[2:]}, "
          f"{channels} channel(s), parameters {selection!r}; CPU ms per batch after {args.warm_up} warm-up:")
    print("  " + "  ".join(f"{stage} {1000 * spent[stage] / timed_batches:.1f}" for stage in STAGES))
    print(f"  {clock.report()}  coded sha256 {digest.hexdigest()[:16]}  "
          f"(osoa_zip from {Path(osoa_zip.__file__).parent})")


if __name__ == "__main__":
    main()
