"""A second process for the first part of every adapting batch: two cores on one segment.

Why: an adapting batch is a chain (code under θ_{t-1}, backward, exact Adam) that threads
cannot share, because about half of its CPU is Python holding the GIL (two threads on two
independent streams of batches ran ~1.2x faster than one, two processes 2x).  A family
with ``split_parameters`` cuts each batch into two ``parts`` that share no parameter (the
flow: the prior with the coarse levels, and the finest level), and exact Adam is
elementwise per parameter, so the first part can live in another process with its own
copy of the weights it owns, its own gradients and its own Adam moments.  Nothing but
pixels, coded bytes, factors and loss terms cross, and every one of them is the value one
process computes, so the archive is the same bytes, and a decoder the same pixels and
weights, with or without the worker (tests/test_parts.py).  Before the first group, compress
has it measure θ0's bits on triage's samples (``measure``), the same values by the same
function (tests/test_triage_worker.py).

The engine (adapt/engine.py) drives the worker batch by batch: it sends what to compute
before computing its own part, and reads the answer when it needs it, so both parts run at
once.  Messages are bytes: a JSON header and raw arrays, never pickle.  The worker loads
the model by name and checks its SHA-256, as the parent did.  A worker that fails sends its
error and stops; the parent raises it (``PartsError``), or the coder's own exception for a
damaged stream, so a broken archive reads the same either way.
"""
from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import heap
from ..forking import ForkedChild, alone, fork_child
from ..layout import PartsError
from ..wire import pack_message, unpack_message

READY = "ready"
ENCODING, DECODING = "encode", "decode"  # the parent's direction: what the worker warms up
# A worker is started for an image group whose batches that it would take half of hold
# MIN_SUBPIXELS sub-pixels or more: ~21 batches of sixteen 32 x 32 RGB tiles, or ~5 of four
# 128 x 128 ones.  A worker saves ~35 ms a batch of RGB tiles (its share grows with the batch's
# work); it takes ~1-2 s to import torch and load the model, beside this process's own start-up
# and reading (~2.4 s of CPU in all), and until it is ready this process codes whole batches.
# At this size decompress took 0.83x the time of one process on the mixed folder of
# benchmarks/mixed_folder.py (~2.9 M such sub-pixels) and 0.87x on data/eval/tiles64 (1.6 M),
# for 1.3-1.45x the CPU.  decompress and test start it at the first such group, before they
# load the model; compress before it loads the model for sources with enough image bytes
# (pack.EARLY_WORKER_BYTES: it measures triage's samples first), else as soon as the images
# read so far hold MIN_SUBPIXELS.  A worker that runs takes every group it can.
MIN_SUBPIXELS = 1 << 20
# Both pipes to the worker are widened to this where the system lets it (Linux's default
# limit for a process is 1 MiB): an analysed batch of sixteen 32 x 32 RGB tiles is a ~0.2 MB
# answer as coded intervals (~1.2 MB as factors), which a 64 kB pipe passes in several turns
# of the two processes; and a request carries its batch's tiles (~0.1 MB for 32 such tiles),
# which a 64 kB pipe takes only once the worker reads it, after its step.
PIPE_BYTES = 1 << 20
FORK = True  # a worker for a loaded model is forked where it safely can be (tests turn it off)
# Errors the worker passes on by name, raised again in the parent as what they were (a
# damaged batch then reads as it does in one process: "batch N does not decode (...)").
_PASSED_ON = ("CorruptStream", "BatchError", "ValueError")


def _factor_arrays(network, factors: list, intervals: bool) -> tuple[dict, list[np.ndarray]]:
    """A part's factors as sent: their coded intervals where the parent can push those and the
    network works them out (``coded_intervals``), else every factor's tensors."""
    if intervals:
        try:
            coded = network.coded_intervals(factors)
        except ValueError:  # a parameter off its table: the parent's push raises it, as one process does
            coded = None
        if coded is not None:
            return {"intervals": [coded.outside, coded.massless]}, [coded.start, coded.end]
    return {"counts": [len(f) for f in factors]}, [t.detach().contiguous().numpy() for f in factors for t in f]


def _factors_of(sent: dict, arrays: list[np.ndarray]) -> list:
    """The factors ``_factor_arrays`` sent: a CodedIntervals for the part, or the factors."""
    if "intervals" in sent:
        from ..coding.mixture_coder import CodedIntervals
        outside, massless = sent["intervals"]
        return [CodedIntervals(arrays[0], arrays[1], outside, massless)]
    import torch
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    factors, at = [], 0
    for count in sent["counts"]:
        factors.append(tuple(tensors[at:at + count]))
        at += count
    return factors


@dataclass
class Analysed:
    """The worker's part of a batch: its loss terms (float64, 1-D) and factors, and θ0's if asked."""
    terms: object
    factors: list
    pretrained_terms: object = None
    pretrained_factors: list | None = None


class _Pipe:
    """Length-prefixed messages over a pair of byte streams (a child's stdin and stdout)."""

    def __init__(self, reading, writing) -> None:
        self.reading, self.writing = reading, writing

    def send_bytes(self, data: bytes) -> None:
        self.writing.write(len(data).to_bytes(8, "little"))
        self.writing.write(data)
        self.writing.flush()

    def recv_bytes(self) -> bytes:
        head = self.reading.read(8)
        if len(head) < 8:
            raise EOFError("the other process closed its end")
        size = int.from_bytes(head, "little")
        data = self.reading.read(size)
        if len(data) < size:
            raise EOFError("the other process closed its end")
        return data

    def has_message(self) -> bool:
        """Whether a message has started to arrive (so ``recv_bytes`` will not wait for it to start)."""
        import select
        return bool(select.select([self.reading], [], [], 0)[0])

    def close(self) -> None:
        for stream in (self.reading, self.writing):
            try:
                stream.close()
            except OSError:
                pass


class _SentBeside:
    """The worker's end of a ``_Pipe`` whose messages are written by a thread of their own, in order.

    Why: an answer is written into a pipe that the parent drains only when it needs the
    answer, after its own part of the batch.  Written here, an answer larger than the pipe
    holds (a batch's factors: ~1.2 MB) keeps the worker in ``write``, its step waiting behind
    it (10-15 ms a batch measured); written beside, the step runs while the parent reads.
    ``close`` writes what is queued and stops the thread; a parent that has gone away ends the
    writing (its error is raised at the next send, and the worker's next read meets the end of
    its input)."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="osoa-parts-sender", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.pipe.send_bytes(data)
                except (OSError, ValueError) as error:  # ValueError: a closed stream
                    self._error = error

    def send_bytes(self, data: bytes) -> None:
        if self._error is not None:
            raise EOFError(f"the other process closed its end ({self._error})")
        self._queue.put(data)

    def recv_bytes(self) -> bytes:
        return self.pipe.recv_bytes()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def _widen(stream) -> None:
    """Let ``stream``'s pipe hold PIPE_BYTES, where the system allows (else it stays as it is)."""
    try:
        import fcntl
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


def settings_share(config) -> bool:
    """Whether the adaptation settings let a worker share batches at all: adapting, one step per
    batch (a second step's pass would need the worker's weights)."""
    return config.adapt and config.steps_per_batch == 1


def settings_allow(config, channels: int) -> bool:
    """Whether the adaptation settings alone let a worker take batches of this channel count:
    ``settings_share``, every layer adapting.  The model decides the rest
    (``OnlineAdapter.parts_would_take``); a decoder asks this before it loads the model, to
    start the worker beside that load."""
    return settings_share(config) and config.parameters_for(channels) == "all"


def start_worker(adapter, decoding: bool) -> "PartWorker | None":
    """A worker for ``adapter``'s model and settings, starting (``attach`` gives it to the
    adapter), or None if the adapter cannot use one.  ``decoding``: the adapter decodes (the
    worker warms up its decoder's pass too)."""
    if not adapter.can_use_parts():
        return None
    return PartWorker(adapter.bundle.name, adapter.bundle.sha256, adapter.config.to_header(), decoding,
                      adapter.bundle)


def can_fork() -> bool:
    """Whether a worker started now would be forked from this process (``PartWorker``): the
    system forks, and no other thread runs (a forked child has only the thread that forked; a
    lock another thread held then would stay held in it)."""
    return FORK and alone()


def subpixels_taken(batches: list, takes: Callable[[int], bool]) -> int:
    """The sub-pixels of the planned ``batches`` (imaging.tiles.Batch) whose channel counts a
    worker ``takes``: what a command weighs against MIN_SUBPIXELS before it starts one."""
    return sum(math.prod(batch.shape) for batch in batches if takes(batch.channels))


def attach(worker: "PartWorker | None", adapter, subpixels: int) -> None:
    """Offer a started worker to the adapter that is about to code or decode a group in order
    whose batches that the worker would take hold ``subpixels`` sub-pixels, if any: once it
    runs, it pays from its first batch (on the mixed folder of benchmarks/mixed_folder.py,
    ~2.9 M such sub-pixels, compress took 0.85-0.96x the time with it).  The adapter does not wait
    for it: it takes it at the first batch after the worker is ready
    (``OnlineAdapter.offer_parts``).  A worker that fails to start is left out (the same bytes)."""
    if worker is None or worker.failed or not subpixels:
        return
    adapter.offer_parts(worker)


class PartWorker:
    """The parent's handle on the worker: one per adapter, used by one thread at a time.

    Given the parent's loaded model (``bundle``) where ``can_fork``, the worker is a fork of
    this process: it has torch and the model already (a worker of its own imports torch and
    loads the model again, ~1.3-1.6 CPU s, ready ~0.5 s later), and it copies nothing until
    either process writes.  Else it is ``python -m osoa_zip.adapt.parts`` (a plain child
    process: it imports this package, not the parent's main module).  Either way its messages
    go over two pipes, and what it writes to stderr goes to a file that an error quotes."""

    def __init__(self, model: str, sha256: str, config_header: dict, decoding: bool, bundle=None) -> None:
        self._stderr = tempfile.TemporaryFile()
        if bundle is not None and can_fork():
            self._process, reading, writing = _forked(bundle, config_header, decoding, self._stderr)
        else:
            package_root = str(Path(__file__).resolve().parents[2])
            environment = dict(os.environ)
            environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
            self._process = subprocess.Popen(
                [sys.executable, "-m", "osoa_zip.adapt.parts", model, sha256, json.dumps(config_header),
                 DECODING if decoding else ENCODING],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=environment)
            reading, writing = self._process.stdout, self._process.stdin
        _widen(reading)
        _widen(writing)
        self._connection = _Pipe(reading, writing)
        self._ready = False
        self.failed = False  # it did not start: nobody uses it
        self.snapshots = 0

    def poll_ready(self) -> bool:
        """Whether the worker is ready (started and warmed up), without waiting for it; a worker
        that did not start raises PartsError."""
        if not self._ready and self._connection.has_message():
            self.wait_ready()
        return self._ready

    def wait_ready(self) -> None:
        if not self._ready:
            header, _ = self._receive()
            if header.get("op") != READY:
                raise PartsError("the worker process did not start")
            self._ready = True

    # -- messages --------------------------------------------------------------------------
    def _send(self, header: dict, arrays: list[np.ndarray] = ()) -> None:
        try:
            self._connection.send_bytes(pack_message(header, list(arrays)))
        except (OSError, EOFError) as error:
            raise PartsError(f"the worker process stopped ({error})") from None

    def _receive(self) -> tuple[dict, list[np.ndarray]]:
        try:
            header, arrays = unpack_message(self._connection.recv_bytes())
        except (OSError, EOFError):
            raise PartsError(f"the worker process stopped{self._last_words()}") from None
        if "error" in header:
            kind, message = header["error"], header["message"]
            if kind in _PASSED_ON:
                from ..coding.ans import CorruptStream
                from .engine import BatchError
                passed = {"CorruptStream": CorruptStream, "BatchError": BatchError, "ValueError": ValueError}
                raise passed[kind](message)
            raise PartsError(f"the worker process failed: {kind}: {message}")
        return header, arrays

    def _last_words(self) -> str:
        """What the stopped worker said last on stderr, as ': ...' (or its exit code)."""
        code = self._process.wait(timeout=5) if self._process.poll() is None else self._process.returncode
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return f": {lines[-1].strip()}" if lines else f" (exit code {code})"

    def open(self, channels: int, state: tuple | None = None) -> None:
        """A track for this channel count at θ0 (a new one replaces the old), or, with ``state``
        (weights, first and second moments of the first part's parameters that adapt, in the
        worker's order, and the two powers of the betas), where another track has got to."""
        if state is None:
            self._send({"op": "open", "channels": channels})
            return
        weights, first, second, power1, power2 = state
        self._send({"op": "open", "channels": channels, "powers": [power1, power2], "count": len(weights)},
                   [t.detach().numpy() for t in (*weights, *first, *second)])

    def analyse(self, channels: int, part, pixels: np.ndarray, pretrained: bool, graph: bool, loss: bool,
                guard: bool, step: bool = False) -> None:
        """Start the first part of a batch: with θ0's weights or the track's (``pretrained``), its
        graph kept for a step (``graph``), its loss terms (``loss``), and θ0's pass too (``guard``).
        ``step``: the track's step follows at once, after the answer (as ``step`` would).  With
        the compiled loops here, its factors may come back as their coded intervals."""
        from ..coding import native
        self._send({"op": "analyse", "channels": channels, "part": _plain(part), "pretrained": pretrained,
                    "graph": graph, "loss": loss, "guard": guard, "step": step,
                    "intervals": native.available()}, [pixels])

    def analysed(self) -> Analysed:
        import torch
        header, arrays = self._receive()
        split = header["split"]
        result = Analysed(torch.from_numpy(arrays[0].copy()), _factors_of(header["factors"], arrays[1:split]))
        if header.get("guard"):
            result.pretrained_terms = torch.from_numpy(arrays[split].copy())
            result.pretrained_factors = _factors_of(header["pretrained_factors"], arrays[split + 1:])
        return result

    def step(self, channels: int) -> None:
        """The track's step on its last graph (backward and exact Adam), or Adam's counters alone
        if that part had no factor."""
        self._send({"op": "step", "channels": channels})

    def drop(self, channels: int) -> None:
        """Forget the track's last graph (no step on this batch)."""
        self._send({"op": "drop", "channels": channels})

    def decode(self, channels: int, part, stream: bytes, shape: tuple, pretrained: bool, graph: bool,
               step: bool = False) -> None:
        """Start decoding the first part of a batch from its stream (``step``: as ``analyse``)."""
        self._send({"op": "decode", "channels": channels, "part": _plain(part), "shape": list(shape),
                    "pretrained": pretrained, "graph": graph, "step": step}, [np.frombuffer(stream, dtype=np.uint8)])

    def decoded(self) -> tuple:
        """(the first part's image, float64, and the coder's position after it)."""
        import torch
        header, arrays = self._receive()
        return torch.from_numpy(arrays[0].copy()).to(torch.float64), tuple(header["position"])

    def measure(self, channels: int, tiles: np.ndarray) -> None:
        """Ask for θ0's bits of each of one triage pass's ``tiles`` (models.protocol.tile_bits_of:
        the values the parent would measure); ``measured`` reads them, in the order asked."""
        self._send({"op": "tile_bits", "channels": channels}, [tiles])

    def measured(self) -> np.ndarray:
        _, arrays = self._receive()
        return arrays[0]

    def has_answer(self) -> bool:
        """Whether an answer has started to arrive (reading it will not wait for the worker)."""
        return self._connection.has_message()

    def adapt_on(self, channels: int, part, pixels: np.ndarray) -> None:
        """The track's graph of a decoded batch (coded with θ0: its decoding pass gave none)."""
        self._send({"op": "adapt_on", "channels": channels, "part": _plain(part)}, [pixels])

    def snapshot(self) -> int:
        """Keep the worker's tracks as they are now (one snapshot at a time); returns its number."""
        self.snapshots += 1
        self._send({"op": "snapshot", "number": self.snapshots})
        return self.snapshots

    def restore(self, number: int) -> None:
        self._send({"op": "restore", "number": number})

    def close(self) -> None:
        """Stop the worker.  Answers nobody will read are not waited for: with our end of its
        output closed, a worker blocked writing one (a full pipe, after an error or an
        interrupt here) fails at once and ends, instead of after the timeout."""
        if self._process.poll() is None:
            try:
                self._connection.send_bytes(pack_message({"op": "stop"}, []))
            except (OSError, EOFError):
                pass
            try:
                self._connection.reading.close()
            except OSError:
                pass
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._connection.close()
        self._stderr.close()


def _forked(bundle, config_header: dict, decoding: bool, stderr) -> tuple:
    """Fork the worker (forking.py): (its process, the parent's reading and writing ends of
    its pipes).  The child's descriptors 1 and 2 go to ``stderr``, away from the parent's output.

    Both processes then warm up side by side (numba's kernels, torch's first calls): the
    parent needs the same kernels for its own part, and would otherwise load them in its first
    batch, after waiting for the worker's answers to triage."""
    from_parent, to_worker = os.pipe()  # (reading end, writing end)
    from_worker, to_parent = os.pipe()

    def serve() -> None:
        os.dup2(stderr.fileno(), 2)
        os.dup2(2, 1)
        sys.stdout = sys.stderr  # a stray print must not reach the parent's output
        pipe = _Pipe(os.fdopen(from_parent, "rb"), os.fdopen(to_parent, "wb"))
        _serve(pipe, bundle.name, bundle.sha256, config_header, decoding, bundle)
        sys.stderr.flush()

    pid = fork_child(serve, (from_parent, to_parent, stderr.fileno()))
    os.close(from_parent)
    os.close(to_parent)
    process, reading, writing = ForkedChild(pid), os.fdopen(from_worker, "rb"), os.fdopen(to_worker, "wb")
    try:
        _warm_up(bundle, decoding)
    except BaseException:  # (an interrupt, say) no worker is left behind
        process.kill()
        process.wait()
        reading.close()
        writing.close()
        raise
    return process, reading, writing


def _plain(part) -> list:
    return sorted(part, key=str)


def _part(values: list) -> frozenset:
    return frozenset(values)


# -- the worker process ---------------------------------------------------------------------

class _Track:
    """The worker's half of one channel count's track."""

    def __init__(self, bundle, config, channels: int) -> None:
        from .engine import adapting_copy
        self.pretrained = bundle.network(channels)
        # The command's process adapts the second part's parameters.
        self.network, self.optimizer = adapting_copy(self.pretrained, config, channels,
                                                     self.pretrained.split_parameters()[1])
        self.loss = None


def _serve(pipe: _Pipe, model: str, sha256: str, config_header: dict, decoding: bool, bundle=None) -> None:
    """The worker's loop: one message at a time, in order; the first error is sent and ends it.
    Every answer is written before it returns.  ``bundle``: the model, loaded (a forked worker)."""
    connection = _SentBeside(pipe)
    try:
        import torch
        torch.set_num_threads(1)
        from ..torch_loading import load_model
        from .config import AdaptationConfig
        from .defaults import adaptation_for
        if bundle is None:
            bundle = load_model(model, sha256)
        config = adaptation_for(bundle.name, AdaptationConfig.from_header(config_header))  # as OnlineAdapter
        _warm_up(bundle, decoding)
        connection.send_bytes(pack_message({"op": READY, "pid": os.getpid()}, []))
        _Server(bundle, config, connection).run()
    except EOFError:  # the parent went away
        pass
    except Exception as error:  # noqa: BLE001 (sent to the parent, which raises it)
        try:
            connection.send_bytes(pack_message({"error": type(error).__name__, "message": str(error)}, []))
        except (OSError, EOFError):
            pass
    finally:
        connection.close()


def _warm_up(bundle, decoding: bool) -> None:
    """A throwaway pass and backward of the first part over one 16 x 16 tile, on a copy of each
    network that splits, and for a decoder the decoder's pass over what it coded: numba's
    kernels load and torch's first calls are paid before the worker says it is ready (its first
    batch took ~0.6 s instead of ~50 ms).  The parent codes whole batches until then.  Nothing
    of it is kept."""
    import copy

    import torch
    for channels, network in bundle.networks.items():
        if network.split_parameters() is None:
            continue
        scratch = copy.deepcopy(network, {id(network.tables): network.tables})  # the coder's rows stay cached
        part = scratch.parts(16, 16)[0]
        pixels = torch.full((1, channels, 16, 16), 128.0, dtype=torch.float64)
        terms, factors = scratch.analyse_part(pixels, part, True)
        torch.stack(terms).sum().backward()
        if decoding:
            encoder = scratch.new_encoder()
            scratch.push(factors, encoder)
            _, loss = scratch.decode_part(scratch.new_decoder(encoder.finish()), tuple(pixels.shape), part)
            loss.backward()


class _Server:
    def __init__(self, bundle, config, connection) -> None:
        self.bundle, self.config, self.connection = bundle, config, connection
        self.tracks: dict[int, _Track] = {}
        self.saved: tuple[int, dict] | None = None

    def run(self) -> None:
        while True:
            header, arrays = unpack_message(self.connection.recv_bytes())
            operation = header["op"]
            if operation == "stop":
                return
            getattr(self, "_" + operation)(header, arrays)

    def _reply(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.connection.send_bytes(pack_message(header, arrays))

    def _open(self, header: dict, arrays) -> None:
        track = self.tracks[header["channels"]] = _Track(self.bundle, self.config, header["channels"])
        if "powers" in header:  # a track the parent started alone, handed over (bit for bit)
            import torch

            from .engine import OnlineAdapter
            count = header["count"]
            tensors = [torch.from_numpy(array.copy()) for array in arrays]
            if count != len(track.optimizer.params) or len(tensors) != 3 * count:
                raise PartsError("a handed-over track does not fit this model")
            OnlineAdapter._load(track, (tensors[:count], tensors[count:2 * count], tensors[2 * count:],
                                        *header["powers"]))

    def _analyse(self, header: dict, arrays) -> None:
        import torch

        from ..exact.trunk import TrunkMemo, sharing
        track = self.tracks[header["channels"]]
        part, pixels = _part(header["part"]), torch.from_numpy(arrays[0].copy()).to(torch.float64)
        network = track.pretrained if header["pretrained"] else track.network
        with sharing(TrunkMemo() if header["guard"] else None):
            with torch.set_grad_enabled(header["graph"]):
                terms, factors = network.analyse_part(pixels, part, header["loss"] or header["graph"])
            if header["graph"]:
                track.loss = torch.stack(terms).sum() if terms else None
            intervals = header.get("intervals", False)
            sent, factor_arrays = _factor_arrays(network, factors, intervals)
            out = [_terms_array(terms), *factor_arrays]
            reply = {"factors": sent, "split": len(out), "guard": header["guard"]}
            if header["guard"]:
                with torch.no_grad():
                    pretrained_terms, pretrained_factors = track.pretrained.analyse_part(pixels, part, True)
                reply["pretrained_factors"], arrays_0 = _factor_arrays(track.pretrained, pretrained_factors,
                                                                       intervals)
                out += [_terms_array(pretrained_terms), *arrays_0]
        self._reply(reply, out)
        if header["step"]:
            self._step(header, arrays)

    def _step(self, header: dict, arrays) -> None:
        from .engine import step_on
        track = self.tracks[header["channels"]]
        step_on(track.optimizer, track.loss)
        track.loss = None

    def _drop(self, header: dict, arrays) -> None:
        self.tracks[header["channels"]].loss = None

    def _decode(self, header: dict, arrays) -> None:
        import torch

        from ..coding.ans import Decoder
        track = self.tracks[header["channels"]]
        network = track.pretrained if header["pretrained"] else track.network
        decoder = Decoder(arrays[0].tobytes())
        try:
            image, loss = network.decode_part(decoder, tuple(header["shape"]), _part(header["part"]), None,
                                              header["graph"])
        except Exception as error:  # noqa: BLE001 (a damaged stream: the parent raises the same)
            self._reply({"error": type(error).__name__, "message": str(error)}, [])
            return
        if header["graph"]:
            track.loss = loss
        self._reply({"position": list(decoder.position())}, [image.detach().to(torch.uint8).numpy()])
        if header["step"]:
            self._step(header, arrays)

    def _tile_bits(self, header: dict, arrays) -> None:
        from ..models.protocol import tile_bits_of
        self._reply({"op": "bits"}, [tile_bits_of(self.bundle.network(header["channels"]), arrays[0])])

    def _adapt_on(self, header: dict, arrays) -> None:
        import torch
        track = self.tracks[header["channels"]]
        pixels = torch.from_numpy(arrays[0].copy()).to(torch.float64)
        with torch.enable_grad():
            terms, _ = track.network.analyse_part(pixels, _part(header["part"]), True)
        track.loss = torch.stack(terms).sum() if terms else None

    def _snapshot(self, header: dict, arrays) -> None:
        from .engine import OnlineAdapter
        states = {channels: OnlineAdapter._state(track) for channels, track in self.tracks.items()}
        self.saved = (header["number"], states)

    def _restore(self, header: dict, arrays) -> None:
        import copy

        from .engine import OnlineAdapter
        if self.saved is None or self.saved[0] != header["number"]:
            raise PartsError("a snapshot to restore is not there")
        states = self.saved[1]
        self.tracks = {channels: track for channels, track in self.tracks.items() if channels in states}
        for channels, state in states.items():
            if channels not in self.tracks:
                self.tracks[channels] = _Track(self.bundle, self.config, channels)
            track = self.tracks[channels]
            OnlineAdapter._load(track, copy.deepcopy(state))  # the moments change in place later
            track.loss = None


def _terms_array(terms: list) -> np.ndarray:
    import torch
    if not terms:
        return np.zeros(0, dtype=np.float64)
    return torch.stack(terms).detach().numpy()


def main(arguments: list[str]) -> None:
    """``python -m osoa_zip.adapt.parts MODEL SHA256 CONFIG encode|decode``: serve the parent on
    stdin/stdout."""
    model, sha256, config, direction = arguments
    heap.keep_freed_blocks()
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the messages
    _serve(_Pipe(sys.stdin.buffer, stdout), model, sha256, json.loads(config), direction == DECODING)
    # The parent waits for this exit: skip the interpreter's tear-down of torch (~0.6 s), which
    # has nothing to save (every message is sent; stderr goes to the parent's file, flushed here).
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
