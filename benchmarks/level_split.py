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
from osoa_zip.adapt.engine import adapting_copy  # noqa: E402
from osoa_zip.adapt.parts import _factor_arrays, _factors_of  # noqa: E402
from osoa_zip.coding.ans import Decoder, Encoder  # noqa: E402
from osoa_zip.models.registry import DEFAULT_MODEL, load_model  # noqa: E402
from osoa_zip.wire import pack_message, unpack_message  # noqa: E402


def adapting_network(bundle, channels: int, config: AdaptationConfig, owned: set[str] | None):
    """A track's start as the engine makes it, adapting only ``owned`` (None: everything)."""
    pretrained = bundle.network(channels)
    frozen = () if owned is None else {name for name, _ in pretrained.named_parameters()} - set(owned)
    return adapting_copy(pretrained, config, channels, frozen)


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
    """The worker's loop; messages are osoa_zip.adapt.parts's (a JSON header and raw arrays)."""
    torch.set_num_threads(1)
    levels = frozenset(levels)
    bundle = load_model(model)
    config = adaptation_for(model, AdaptationConfig())
    owned = bundle.network(channels).part_parameters(levels)
    network, optimizer = adapting_network(bundle, channels, config, owned)
    connection.send_bytes(pack_message({"op": "ready"}, []))
    cpu = 0.0
    while True:
        header, arrays = unpack_message(connection.recv_bytes())
        if header["op"] == "stop":
            connection.send_bytes(pack_message({"cpu": cpu, "weights": weights_digest(network, owned)}, []))
            return
        started = time.process_time()
        if header["op"] == "decode":  # the coarse levels of one batch: (shape, stream) -> (image, position)
            decoder = Decoder(arrays[0].tobytes())
            y, loss = network.decode_part(decoder, header["shape"], levels)
            connection.send_bytes(pack_message({"position": list(decoder.position())}, [y.to(torch.uint8).numpy()]))
        else:  # "analyse": pixels -> factors
            pixels = torch.from_numpy(arrays[0].copy()).to(torch.float64)
            terms, factors = network.analyse_part(pixels, levels)
            loss = torch.stack(terms).sum()
            sent, factor_arrays = _factor_arrays(network, factors, False)  # the factors themselves
            connection.send_bytes(pack_message(sent, factor_arrays))
        step(network, optimizer, loss)
        cpu += time.process_time() - started


def start_worker(model: str, channels: int, levels) -> tuple:
    """A spawned worker for ``levels`` and this side's end of its pipe (levels go as a list)."""
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    worker = context.Process(target=worker_main, args=(there, model, channels, sorted(levels, key=str)), daemon=True)
    worker.start()
    if unpack_message(here.recv_bytes())[0].get("op") != "ready":
        raise RuntimeError("the worker did not start")
    return here, worker


def stop_worker(here, worker) -> dict:
    """Stop the worker; its report: CPU seconds and its parameters' digests."""
    here.send_bytes(pack_message({"op": "stop"}, []))
    report = unpack_message(here.recv_bytes())[0]
    worker.join()
    return report


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


def split_halves(bundle, model, batches, config) -> tuple:
    """(pipe to the worker, its process, this side's levels, the parameters it owns, its
    adapting network and optimiser) for batches of the first batch's shape."""
    channels = batches[0].shape[1]
    probe = bundle.network(channels)
    levels_there, levels_here = probe.parts(*batches[0].shape[2:])
    here, worker = start_worker(model, channels, levels_there)
    owned = probe.part_parameters(levels_here)
    return (here, worker, levels_here, owned, *adapting_network(bundle, channels, config, owned))


def run_split(bundle, model, batches, config, ahead: int) -> tuple[str, dict, float, float]:
    here, worker, levels_here, owned, network, optimizer = split_halves(bundle, model, batches, config)
    digest = hashlib.sha256()

    def send(tiles):
        here.send_bytes(pack_message({"op": "analyse"}, [tiles]))

    wall, cpu = time.perf_counter(), time.process_time()
    sent = 0
    for index, tiles in enumerate(batches):
        while sent < len(batches) and sent <= index + ahead:
            send(batches[sent])
            sent += 1
        terms, factors = network.analyse_part(torch.from_numpy(tiles).to(torch.float64), levels_here)
        loss = torch.stack(terms).sum()
        header, arrays = unpack_message(here.recv_bytes())
        coarse = _factors_of(header, arrays)
        for chunk in factor_bytes(coarse) + factor_bytes(factors):  # the decoder meets the coarse levels first
            digest.update(chunk)
        step(network, optimizer, loss)
    elapsed, spent = time.perf_counter() - wall, time.process_time() - cpu
    report = stop_worker(here, worker)
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
    here, worker, levels_here, owned, network, optimizer = split_halves(bundle, model, batches, config)
    digest = hashlib.sha256()

    def send(index):
        here.send_bytes(pack_message({"op": "decode", "shape": list(batches[index].shape)},
                              [np.frombuffer(streams[index], dtype=np.uint8)]))

    wall, cpu = time.perf_counter(), time.process_time()
    sent = 0
    for index, (tiles, stream) in enumerate(zip(batches, streams)):
        while sent < len(batches) and sent <= index + ahead:
            send(sent)
            sent += 1
        header, arrays = unpack_message(here.recv_bytes())
        coarse = torch.from_numpy(arrays[0].copy()).to(torch.float64)
        decoder = Decoder(stream)
        decoder.resume(tuple(header["position"]))
        pixels, loss = network.decode_part(decoder, tiles.shape, levels_here, coarse)
        decoder.check_finished()
        digest.update(pixels.to(torch.uint8).numpy().tobytes())
        step(network, optimizer, loss)
    elapsed, spent = time.perf_counter() - wall, time.process_time() - cpu
    report = stop_worker(here, worker)
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
