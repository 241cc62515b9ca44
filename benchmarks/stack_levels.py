"""CPU ms per batch of engine 2's integer conv stacks, by level (spatial size), forward and backward.

  python benchmarks/stack_levels.py FOLDER [--model NAME] [--limit 10] [--warm-up 2]

Why: a compiled whole-stack path for the coarse levels (issue 15) can save at most what those
levels' stacks cost now; this prints that ceiling.  Each `IntConvStack._forward` and
`IntConvStack.backward` is timed (CPU time of this thread, one thread) and keyed by its
output's spatial size, its conv count and output channels; the network analyses, back-propagates
and takes an exact Adam step per batch as the engine does (no guard), and the total of those is
printed for scale.  The first ``--warm-up`` batches are run but not timed.
"""
from __future__ import annotations

import argparse
import collections
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from speed import batches_of  # noqa: E402

from osoa_zip.adapt.config import AdaptationConfig  # noqa: E402
from osoa_zip.adapt.defaults import adaptation_for  # noqa: E402
from osoa_zip.adapt.engine import _select_parameters  # noqa: E402
from osoa_zip.exact import intconv  # noqa: E402
from osoa_zip.exact.optim import ExactAdam  # noqa: E402
from osoa_zip.models.registry import DEFAULT_MODEL, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--warm-up", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    seconds: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    sizes: dict[int, int] = {}
    forward, backward = intconv.IntConvStack._forward, intconv.IntConvStack.backward

    def key(stack, direction: str, size: int) -> tuple:
        return size, direction, len(stack.convs), tuple(conv.weight.shape[0] for conv in stack.convs)

    def timed_forward(stack, x, *rest, **options):
        start = time.thread_time()
        result = forward(stack, x, *rest, **options)
        sizes[id(result[1])] = size = result[0].ints.shape[1]
        seconds[key(stack, "forward", size)] += time.thread_time() - start
        calls[key(stack, "forward", size)] += 1
        return result

    def timed_backward(stack, saved, grad, *rest, **options):
        size = sizes.get(id(saved), 0)  # the spatial size of the forward that saved these (0: unknown)
        start = time.thread_time()
        result = backward(stack, saved, grad, *rest, **options)
        seconds[key(stack, "backward", size)] += time.thread_time() - start
        calls[key(stack, "backward", size)] += 1
        return result

    intconv.IntConvStack._forward, intconv.IntConvStack.backward = timed_forward, timed_backward
    config = adaptation_for(args.model, AdaptationConfig())
    batches = batches_of(args.folder, config, args.limit + args.warm_up)
    channels = batches[0].shape[1]
    network = copy.deepcopy(load_model(args.model).network(channels))
    _select_parameters(network, config.parameters_for(channels))
    optimizer = ExactAdam(network.parameters(), config.learning_rate, (config.beta1, config.beta2), config.epsilon)
    total, timed = 0.0, 0
    for index, batch in enumerate(batches):
        if index == args.warm_up:
            seconds.clear()
            calls.clear()
        start = time.thread_time()
        optimizer.zero_grad()
        loss, _ = network.analyse(torch.from_numpy(batch).to(torch.float64), True)
        loss.backward()
        optimizer.step()
        if index >= args.warm_up:
            total, timed = total + time.thread_time() - start, timed + 1
    print(f"{timed} batches of {tuple(batches[0].shape)}: analyse + backward + Adam {total / timed * 1e3:.1f} ms")
    print("size  pass      convs  outputs       calls/batch  ms/batch")
    for entry, spent in sorted(seconds.items()):
        size, direction, count, outputs = entry
        print(f"{size:>4}  {direction:<8}  {count:>5}  {str(outputs):<12}  {calls[entry] / timed:>11.1f}"
              f"  {spent / timed * 1e3:>8.2f}")


if __name__ == "__main__":
    main()
