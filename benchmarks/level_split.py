"""Can a second process take half of an adapting batch?  The flow's levels, split across two processes.

  python benchmarks/level_split.py FOLDER [--limit 128] [--model NAME] [--rounds 2] [--ahead 2]

Why: one adapting batch is a chain (code under θ_{t-1}, backward, exact Adam) that threads
cannot share: about half of its CPU is Python holding the GIL (two threads, each on its own
stream of batches, ran only ~1.2x faster than one; two processes ran 2x).  But a
sub-lattice flow's levels are independent where it matters:

* on the encoder's side the pixels give every level's input (the image at the next
  coarser scale), so each level's couplings can run on their own;
* each level's NLL terms reach only its own predictor (a predictor serves every level from
  its index on), and exact Adam is elementwise per parameter;
* on the decoder's side the coarse levels come first on the batch's ANS stack, and only
  the coarse predictors' weights are needed to pop them.

So this process can own the finest level (predictor 0, about half the work of an RGB
batch) and a worker process the coarser levels with the final prior, each with its own
parameters, gradients and Adam moments: no gradient ever crosses.  Measured on the
engine's work per batch, without the guard, the container or the files:

* ``one`` / ``decode one``: this process does every level, as ``OnlineAdapter`` does;
* ``split``: the worker (spawned: it imports torch itself) gets each batch's pixels and
  returns its factors as raw bytes (no pickle) while this process codes level 0;
* ``decode split``: the worker pops the prior and the coarse levels from the batch's
  stream and returns the coarse image and the coder's (position, state); this process
  pops level 0 from there.  The worker's next batch needs only its own weights, so it
  runs ahead by up to ``--ahead`` batches in both directions.

Every row prints a SHA-256 of the factors (encoder; in the order the decoder meets them) or
of the decoded pixels (decoder; the input's is printed first), and of the weights after the
last batch: the split is only worth building into the engine if they are the same.  Wall
seconds are of the whole loop; CPU seconds add the worker's.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from speed import batches_of  # noqa: E402

from osoa_zip.adapt.config import AdaptationConfig  # noqa: E402
from osoa_zip.adapt.defaults import adaptation_for  # noqa: E402
from osoa_zip.adapt.engine import _select_parameters  # noqa: E402
from osoa_zip.coding.ans import Decoder, Encoder  # noqa: E402
from osoa_zip.coding.mixture_coder import pop_mixture_factor  # noqa: E402
from osoa_zip.exact.fixed import quantize_activation  # noqa: E402
from osoa_zip.exact.optim import ExactAdam  # noqa: E402
from osoa_zip.models.idf import (  # noqa: E402
    PIXEL_CENTER,
    context,
    level_sizes,
    merge_sublattices,
    next_along,
    pad_to_even,
    sublattices,
)
from osoa_zip.models.registry import DEFAULT_MODEL, load_model  # noqa: E402


def level_inputs(network, pixels: torch.Tensor) -> list[torch.Tensor]:
    """y at every scale, finest first: what ``_traverse`` rebuilds level by level on the
    encoder's side, where every ``take`` returns the known target."""
    ys = [pixels]
    for _ in range(len(level_sizes(pixels.shape[2], pixels.shape[3], network.deep_levels)) - 1):
        ys.append(sublattices(pad_to_even(ys[-1]))[0])
    return ys


def prior(network, final_shape) -> tuple:
    """(mean, log_scale, logits, offset) of the final prior's factor, as ``_traverse`` starts (mixtures)."""
    dtype = network.final_mean.dtype
    mean = (quantize_activation(network.final_mean) + PIXEL_CENTER).view(1, -1, 1, 1).expand(final_shape)
    log_scale = quantize_activation(network.final_log_scale).view(1, -1, 1, 1).expand(final_shape)
    components = (network.components, *final_shape)
    return (mean.unsqueeze(0).expand(components), log_scale.unsqueeze(0).expand(components),
            torch.zeros(components, dtype=dtype), torch.zeros(final_shape, dtype=dtype))


def couple_level(network, level: int, s0: torch.Tensor, take) -> tuple:
    """One level's two couplings, as ``_traverse`` runs them: (s1, s2, s3) given s0."""
    predictor = network._predictor(level)
    base = torch.cat([(s0 + next_along(s0, 3)) * 0.5, (s0 + next_along(s0, 2)) * 0.5], dim=1)
    s1, s2 = network._coupling(predictor.edges, context(s0), base, take, (level, "edges")).chunk(2, dim=1)
    base = (s1 + next_along(s1, 2) + s2 + next_along(s2, 3)) * 0.25
    return s1, s2, network._coupling(predictor.centres, context(s0, s1, s2), base, take, (level, "centres"))


def analyse_levels(network, pixels: torch.Tensor, levels: list, with_loss: bool = True):
    """``SubLatticeFlow.analyse`` restricted to ``levels`` (ints, and "final" for the prior):
    the same couplings on the same inputs, so the same factors and loss terms."""
    pixels = pixels.to(network.final_mean.dtype)
    targets = network._targets(pixels)
    terms, factors = [], []

    def take(key, mean, log_scale, logits, offset):
        target = network._target(targets, key)
        latents = target - offset
        bounds = network._bounds(offset)
        factors.append((latents.detach(), mean.detach(), log_scale.detach(),
                        *(() if logits is None else (logits.detach(),)), *bounds))
        if with_loss:
            terms.append(network._nll(latents, mean, log_scale, logits, bounds).sum())
        return target

    ys = level_inputs(network, pixels)
    n_levels = len(ys) - 1
    if "final" in levels:
        take(("final",), *prior(network, ys[-1].shape))
    for level in reversed(range(n_levels)):
        if level in levels:
            couple_level(network, level, ys[level + 1], take)
    loss = torch.stack(terms).sum() if with_loss and terms else None
    return loss, factors


def decode_levels(network, decoder, shape, levels: list, y: torch.Tensor | None = None):
    """``SubLatticeFlow._decode`` (with its loss) restricted to ``levels``, coarsest first:
    "final" and the coarse levels from nothing, or the finest levels from ``y``, the image at
    the scale just above them.  Returns (y after the last level, loss)."""
    terms = []

    def take(key, mean, log_scale, logits, offset):
        bounds = network._bounds(offset)
        latents = pop_mixture_factor(decoder, network.tables, mean.detach(), log_scale.detach(), logits.detach(),
                                     *bounds)
        target = latents + offset.detach()
        terms.append(network._nll(target - offset, mean, log_scale, logits, bounds).sum())
        return target

    batch, channels, height, width = shape
    sizes = level_sizes(height, width, network.deep_levels)
    if "final" in levels:
        y = take(("final",), *prior(network, (batch, channels, *sizes[-1])))
    for level in reversed(range(len(sizes) - 1)):
        if level in levels:
            y = merge_sublattices(y, *couple_level(network, level, y, take))[:, :, :sizes[level][0], :sizes[level][1]]
    return y, torch.stack(terms).sum()


def part_parameters(network, levels: list) -> set[str]:
    """The names of the parameters only these levels use (a predictor serves every level from
    its index on: ``_predictor``)."""
    used = {min(level, len(network.levels) - 1) for level in levels if level != "final"}
    names = {f"levels.{index}." for index in used}
    chosen = {name for name, _ in network.named_parameters() if any(name.startswith(p) for p in names)}
    if "final" in levels:
        chosen |= {"final_mean", "final_log_scale"}
    return chosen


def adapting_network(bundle, channels: int, config: AdaptationConfig, owned: set[str] | None):
    network = copy.deepcopy(bundle.network(channels))
    _select_parameters(network, config.parameters_for(channels))
    if owned is not None:
        for name, parameter in network.named_parameters():
            if name not in owned:
                parameter.requires_grad_(False)
    optimizer = ExactAdam(network.parameters(), config.learning_rate, (config.beta1, config.beta2), config.epsilon)
    return network, optimizer


def step(network, optimizer, loss) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def factor_bytes(factors) -> list[bytes]:
    return [tensor.contiguous().numpy().tobytes() for factor in factors for tensor in factor]


def weights_digest(network, owned: set[str] | None = None) -> dict[str, str]:
    return {name: hashlib.sha256(p.detach().numpy().tobytes()).hexdigest()[:16]
            for name, p in network.named_parameters() if owned is None or name in owned}


# -- the worker ---------------------------------------------------------------------------

def worker_main(connection, model: str, channels: int, levels: list) -> None:
    torch.set_num_threads(1)
    bundle = load_model(model)
    config = adaptation_for(model, AdaptationConfig())
    network, optimizer = adapting_network(bundle, channels, config, None)
    owned = part_parameters(network, levels)
    network, optimizer = adapting_network(bundle, channels, config, owned)
    connection.send_bytes(b"ready")
    cpu = 0.0
    while True:
        message = connection.recv_bytes()
        if message == b"stop":
            connection.send_bytes(json.dumps({"cpu": cpu, "weights": weights_digest(network, owned)}).encode())
            return
        started = time.process_time()
        if message[:1] == b"D":  # decode the coarse levels of one batch: (shape, stream) -> (y, position)
            header_length = int.from_bytes(message[1:5], "little")
            shape = json.loads(message[5:5 + header_length])
            decoder = Decoder(message[5 + header_length:])
            y, loss = decode_levels(network, decoder, shape, levels)
            position, state = decoder._coder.pos()
            connection.send_bytes(json.dumps([list(y.shape), int(position), int(state)]).encode() + b"\n"
                                  + y.to(torch.uint8).numpy().tobytes())
            step(network, optimizer, loss)
            cpu += time.process_time() - started
            continue
        header_length = int.from_bytes(message[:4], "little")
        shape = json.loads(message[4:4 + header_length])
        pixels = torch.from_numpy(np.frombuffer(message[4 + header_length:], dtype=np.uint8).reshape(shape).copy())
        loss, factors = analyse_levels(network, pixels.to(torch.float64), levels)
        arrays = [tensor.contiguous().numpy() for factor in factors for tensor in factor]
        header = json.dumps({"factors": [len(f) for f in factors],
                             "arrays": [[str(a.dtype), list(a.shape)] for a in arrays]}).encode()
        connection.send_bytes(len(header).to_bytes(4, "little") + header + b"".join(a.tobytes() for a in arrays))
        step(network, optimizer, loss)
        cpu += time.process_time() - started


def unpack_factors(message: bytes) -> list[tuple]:
    header_length = int.from_bytes(message[:4], "little")
    header = json.loads(message[4:4 + header_length])
    at, arrays = 4 + header_length, []
    for dtype, shape in header["arrays"]:
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        arrays.append(torch.from_numpy(np.frombuffer(message[at:at + count], dtype=dtype).reshape(shape).copy()))
        at += count
    factors, index = [], 0
    for length in header["factors"]:
        factors.append(tuple(arrays[index:index + length]))
        index += length
    return factors


# -- the two ways -------------------------------------------------------------------------

def run_one(bundle, model, batches, config) -> tuple[str, dict, float, float]:
    network, optimizer = adapting_network(bundle, batches[0].shape[1], config, None)
    digest = hashlib.sha256()
    wall, cpu = time.perf_counter(), time.process_time()
    for tiles in batches:
        loss, factors = network.analyse(torch.from_numpy(tiles).to(torch.float64), True)
        for chunk in factor_bytes(factors):
            digest.update(chunk)
        step(network, optimizer, loss)
    return digest.hexdigest()[:16], weights_digest(network), time.perf_counter() - wall, time.process_time() - cpu


def run_split(bundle, model, batches, config, ahead: int) -> tuple[str, dict, float, float]:
    channels = batches[0].shape[1]
    levels_here = [0]
    probe = bundle.network(channels)
    n_levels = len(level_sizes(batches[0].shape[2], batches[0].shape[3], probe.deep_levels)) - 1
    levels_there = ["final"] + list(range(1, n_levels))
    context_ = multiprocessing.get_context("spawn")
    here, there = context_.Pipe()
    worker = context_.Process(target=worker_main, args=(there, model, channels, levels_there), daemon=True)
    worker.start()
    assert here.recv_bytes() == b"ready"
    owned = part_parameters(probe, levels_here)
    network, optimizer = adapting_network(bundle, channels, config, owned)
    digest = hashlib.sha256()

    def send(tiles):
        header = json.dumps(list(tiles.shape)).encode()
        here.send_bytes(len(header).to_bytes(4, "little") + header + tiles.tobytes())

    wall, cpu = time.perf_counter(), time.process_time()
    sent = 0
    for index, tiles in enumerate(batches):
        while sent < len(batches) and sent <= index + ahead:
            send(batches[sent])
            sent += 1
        loss, factors = analyse_levels(network, torch.from_numpy(tiles).to(torch.float64), levels_here)
        coarse = unpack_factors(here.recv_bytes())
        for chunk in factor_bytes(coarse) + factor_bytes(factors):  # the decoder meets the coarse levels first
            digest.update(chunk)
        step(network, optimizer, loss)
    here.send_bytes(b"stop")
    report = json.loads(here.recv_bytes())
    elapsed, spent = time.perf_counter() - wall, time.process_time() - cpu
    worker.join()
    weights = {**weights_digest(network, owned), **report["weights"]}
    return digest.hexdigest()[:16], weights, elapsed, spent + report["cpu"]


def encode_streams(bundle, batches, config) -> list[bytes]:
    """The batches coded as the engine codes them (every batch under the adapted weights)."""
    network, optimizer = adapting_network(bundle, batches[0].shape[1], config, None)
    streams = []
    for tiles in batches:
        loss, factors = network.analyse(torch.from_numpy(tiles).to(torch.float64), True)
        encoder = Encoder()
        network.push(factors, encoder)
        streams.append(encoder.finish())
        step(network, optimizer, loss)
    return streams


def decode_one(bundle, batches, streams, config) -> tuple[str, dict, float, float]:
    network, optimizer = adapting_network(bundle, batches[0].shape[1], config, None)
    digest = hashlib.sha256()
    wall, cpu = time.perf_counter(), time.process_time()
    for tiles, stream in zip(batches, streams):
        decoder = Decoder(stream)
        pixels, loss = network.decode_with_loss(decoder, tiles.shape)
        decoder.check_finished()
        digest.update(pixels.to(torch.uint8).numpy().tobytes())
        step(network, optimizer, loss)
    return digest.hexdigest()[:16], weights_digest(network), time.perf_counter() - wall, time.process_time() - cpu


def decode_split(bundle, model, batches, streams, config, ahead: int) -> tuple[str, dict, float, float]:
    """The worker pops the prior and the coarse levels, hands this process the coarse image and
    the coder's (position, state); this process pops level 0 from there.  The worker's next batch
    needs only its own weights, so it decodes ahead while this process finishes a batch."""
    channels = batches[0].shape[1]
    probe = bundle.network(channels)
    n_levels = len(level_sizes(batches[0].shape[2], batches[0].shape[3], probe.deep_levels)) - 1
    context_ = multiprocessing.get_context("spawn")
    here, there = context_.Pipe()
    worker = context_.Process(target=worker_main, args=(there, model, channels, ["final"] + list(range(1, n_levels))),
                              daemon=True)
    worker.start()
    assert here.recv_bytes() == b"ready"
    owned = part_parameters(probe, [0])
    network, optimizer = adapting_network(bundle, channels, config, owned)
    digest = hashlib.sha256()

    def send(index):
        header = json.dumps(list(batches[index].shape)).encode()
        here.send_bytes(b"D" + len(header).to_bytes(4, "little") + header + streams[index])

    wall, cpu = time.perf_counter(), time.process_time()
    sent = 0
    for index, (tiles, stream) in enumerate(zip(batches, streams)):
        while sent < len(batches) and sent <= index + ahead:
            send(sent)
            sent += 1
        reply = here.recv_bytes()
        header, raw = reply.split(b"\n", 1)
        shape, position, state = json.loads(header)
        coarse = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()).to(torch.float64)
        decoder = Decoder(stream)
        decoder._coder.seek(position, state)
        pixels, loss = decode_levels(network, decoder, tiles.shape, [0], coarse)
        decoder.check_finished()
        digest.update(pixels.to(torch.uint8).numpy().tobytes())
        step(network, optimizer, loss)
    here.send_bytes(b"stop")
    report = json.loads(here.recv_bytes())
    elapsed, spent = time.perf_counter() - wall, time.process_time() - cpu
    worker.join()
    return (digest.hexdigest()[:16], {**weights_digest(network, owned), **report["weights"]}, elapsed,
            spent + report["cpu"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--limit", type=int, default=64, help="batches")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ahead", type=int, default=1, help="batches the worker may run ahead (0: lock step)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = adaptation_for(args.model, AdaptationConfig())
    batches = batches_of(args.folder, config, args.limit)
    bundle = load_model(args.model)
    run_one(bundle, args.model, batches[:2], config)  # warm-up: numba, oneDNN's kernels
    streams = encode_streams(bundle, batches, config)
    print(f"pixels sha256 {hashlib.sha256(b''.join(b.tobytes() for b in batches)).hexdigest()[:16]}")
    for round_ in range(args.rounds):
        for name, run in (("one", lambda: run_one(bundle, args.model, batches, config)),
                          ("split", lambda: run_split(bundle, args.model, batches, config, args.ahead)),
                          ("decode one", lambda: decode_one(bundle, batches, streams, config)),
                          ("decode split", lambda: decode_split(bundle, args.model, batches, streams, config,
                                                                args.ahead))):
            digest, weights, wall, cpu = run()
            weights_sum = hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:16]
            print(f"round {round_ + 1} {name:12s}: {len(batches)} batches, wall {wall:6.2f} s, CPU {cpu:6.2f} s, "
                  f"{1000 * wall / len(batches):5.1f} ms/batch; {'pixels' if name.startswith('decode') else 'factors'} "
                  f"{digest}, weights {weights_sum}", flush=True)


if __name__ == "__main__":
    main()
