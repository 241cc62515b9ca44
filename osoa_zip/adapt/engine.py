"""One-Shot Online Adaptation, replayable, never worse than frozen.

Encoder and decoder both start from the pretrained weights θ0 (in the exact
float64 engine).  Batch t is coded under θ_{t-1}; then both sides take the
same k optimiser steps on batch t's negative log-likelihood to reach θ_t.
Because every step is bit-exact (see osoa_zip.exact), the decoder's θ_t is
the encoder's θ_t on any machine.  The adapted weights are never stored.

Each coded batch starts with one flag byte.  With the guard on, the encoder
compares (by the model's own bit count) the adapted model with θ0 and codes
with the cheaper: FLAG_PRETRAINED codes this batch with θ0.  So adaptation
can cost at most a few bits per batch more than --no-adapt, however badly
an update goes.  The comparison costs a forward pass of θ0, so after θ0
loses clearly the encoder waits 1, 2, 4, then 8 batches before it asks
again (encoder-only: the flags tell the decoder everything); bits-back
models (the VAE) are compared on every batch.  Where only the last layers
adapt, θ0's pass runs only those: every pass over a batch shares one
``TrunkMemo`` (exact/trunk.py), which lets a later pass reuse the frozen
layers' activations of an earlier one (the guard's θ0 pass after the
adapted pass; on the decoder, the update's pass after θ0's decoding pass
of a FLAG_PRETRAINED batch; every step after the first).
After θ0 has won ``give_up_after`` comparisons in a row (format 1.1), the
encoder sets FLAG_GIVE_UP: that batch and every later batch of its channel
count in the segment are coded with θ0 and nothing adapts (data the model
already knows, e.g. Fashion-MNIST for a grey network trained on it, then
costs one forward pass per batch instead of three passes).
FLAG_ROLLBACK (undo the last update, weights and optimiser moments, before
coding) is still decoded: release 1.0.0 wrote it.  It is no longer written
because undoing updates cost more later than it saved (measured in
benchmarks/guard_variants.py).

The engine knows a model only through its family's contract
(models/protocol.py, ``CodingModel``): the family gives the coders (the flow
queues its symbols and lays them on a fresh ANS stack at the end; the VAE
pushes and pops one stack as it goes, bits-back, coding/bitsback.py), the
loss, the parameters that adapt and what the engine may do with it.
A batch is one independent byte string, except that a family that chains
batches (the VAE) lays up to ``chain_batches`` consecutive batches on one
stack (format 1.4, see ``encode_chain``): the decoder keeps that stack open
across them.
"""
from __future__ import annotations

import copy
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..exact import ENGINE
from ..exact.optim import ExactAdam
from ..exact.trunk import TrunkMemo, sharing
from ..layout import PartsError
from ..models.registry import FlowBundle
from .config import AdaptationConfig
from .defaults import adaptation_for
from .flags import (  # noqa: F401
    CHAIN_LENGTH_BYTES,
    FLAG_CHAIN_HEAD,
    FLAG_CHAINED,
    FLAG_GIVE_UP,
    FLAG_PRETRAINED,
    FLAG_ROLLBACK,
    FLAG_SEGMENT_START,
    KNOWN_FLAGS,
    declared_chain_length,
)
from .parts import settings_allow, settings_share

# Batches of a run handed to encode_chain at once by a family that does not chain them: each
# but the last is coded knowing the next, whose first part the worker is asked for early.
LOOK_AHEAD_BATCHES = 8
# The guard's back-off (encoder-only): θ0 must lose by this fraction of the
# adapted model's bits before a comparison is skipped, for at most this many batches.
PROBE_MARGIN = 0.01
# Last-layer adaptation (grey networks by default) makes small, steady updates whose
# gain is often below 1%: backing off from a 0.25% lead saved a third of the encoder's
# CPU on grey tiles at the same bytes (docs/PERFORMANCE.md; photos768, adapting all
# layers, was 0.2% larger with it, so the wider margin stays for "all" and "bias").
PROBE_MARGIN_LAST_LAYERS = 0.0025
MAX_PROBE_GAP = 8
# Families with ``guard_every_batch`` (the VAE) compare θ0 on every batch: their adaptation
# swings more from batch to batch (a single ELBO sample, all layers), and their forward pass is cheap.  With
# the back-off, vae-hier-v3 on photos768 coded one batch 6.7% larger than θ0 right after the
# adapted model had won by 2%, and the set 0.18% larger than --no-adapt.
PROBE_MARGIN_BITS_BACK = math.inf


class BatchError(ValueError):
    """A batch's flags or data cannot be replayed."""


@dataclass
class _Done:
    """A result computed in place, with the interface of a future."""

    value: bytes

    def result(self) -> bytes:
        return self.value


@dataclass
class _Choice:
    """A batch about to be coded (OnlineAdapter._choose)."""

    pixels: torch.Tensor
    channels: int
    track: "_Track"
    network: torch.nn.Module
    flags: int
    adapting: bool
    loss: torch.Tensor | None
    factors: object  # what the model pushes (None: the model codes the pixels itself)
    trunks: TrunkMemo | None  # the batch's frozen trunk activations, if the update makes more passes


@dataclass(frozen=True)
class _RequestedAhead:
    """The next batch's first part, asked of the worker before this batch's push is done and
    this process's step taken (``OnlineAdapter.encode``'s ``following``): what was sent, to
    check against what the batch's own request would be."""

    tiles: np.ndarray
    request: tuple


@dataclass(frozen=True)
class _AskedAhead:
    """The next batch's first part, asked of the worker while this one's second part decodes
    (``OnlineAdapter.decode``'s ``following``): what was sent, to check against the batch."""

    payload: bytes
    shape: tuple
    first: object
    pretrained: bool
    graph: bool


@dataclass
class _Planned:
    """A batch of a chain, decided and adapted on, waiting to be laid on the stack."""

    choice: _Choice
    weights: list | None  # the weights it is coded with (None: θ0's)
    seconds: float
    stack_bits: int = 0   # what coding it added to the stack


@dataclass
class _OpenChain:
    """Decoder: the stack of a chain being decoded, and how many of its batches are still to come."""

    coder: object  # the family's decoder, a stack (chains_batches)
    remaining: int


@dataclass
class BatchStatistics:
    bits: int
    subpixels: int
    seconds: float
    flags: int = 0
    # A frozen archive's batches: each tile's bits under θ0, from the coding pass
    # (CodingModel.factor_tile_bits; None if the family cannot tell).
    tile_bits: list[float] | None = None


@dataclass
class _Track:
    """The adaptation state for one channel count within a segment."""

    network: torch.nn.Module
    optimizer: ExactAdam
    batches: int = 0              # batches coded so far in this segment
    updated: bool = False         # the weights have left θ0
    previous: tuple | None = None  # state before the last update (to decode FLAG_ROLLBACK)
    probe_wait: int = 0           # encoder: batches to code before θ0 is compared again
    probe_gap: int = 0            # encoder: the current wait after θ0 lost
    probe_margin: float = PROBE_MARGIN  # encoder: the lead that lets θ0's comparison wait
    pretrained_wins: int = 0      # encoder: comparisons won by θ0 in a row
    gave_up: bool = False         # θ0 codes the rest of the segment; no more steps (FLAG_GIVE_UP)
    parts: object | None = None   # the worker process that adapts the first of the batches' parts (parts.py)
    parts_stepped: bool = False   # the worker took this batch's step already (it needed no decision of ours)


# The _Track fields besides the weights and moments, carried by export_state as they are.
_TRACK_COUNTERS = ("batches", "updated", "probe_wait", "probe_gap", "probe_margin", "pretrained_wins", "gave_up")


def _plain_track(track: _Track) -> dict:
    optimizer = track.optimizer
    values = _plain_state((optimizer.params, optimizer.first, optimizer.second,
                           optimizer.beta1_power, optimizer.beta2_power))
    values["previous"] = None if track.previous is None else _plain_state(track.previous)
    values.update({name: getattr(track, name) for name in _TRACK_COUNTERS})
    return values


def _plain_state(state: tuple) -> dict:
    """OnlineAdapter._state's tuple as numpy copies and floats."""
    weights, first, second, power1, power2 = state
    return {"weights": _arrays(weights), "first": _arrays(first), "second": _arrays(second),
            "beta1_power": float(power1), "beta2_power": float(power2)}


def _arrays(tensors: list) -> list[np.ndarray]:
    return [tensor.detach().numpy().copy() for tensor in tensors]


def _tensor_state(values: dict, like: list) -> tuple:
    """_plain_state's inverse, checked against the parameters ``like`` (shape and dtype)."""
    lists = []
    for key in ("weights", "first", "second"):
        arrays = values[key]
        if len(arrays) != len(like) or any(np.shape(a) != tuple(p.shape) for a, p in zip(arrays, like)):
            raise ValueError("an adaptation state does not fit the network")
        lists.append([torch.from_numpy(np.array(a, dtype=np.float64)).to(p.dtype) for a, p in zip(arrays, like)])
    return (*lists, float(values["beta1_power"]), float(values["beta2_power"]))


def _select_parameters(network: torch.nn.Module, selection: str) -> None:
    """Freeze what the selection leaves out (frozen layers cost no weight gradients)."""
    chosen = network.adaptable_parameters(selection)
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name in chosen)


def adapting_copy(pretrained: torch.nn.Module, config: AdaptationConfig, channels: int, frozen=()) -> tuple:
    """(a copy of θ0 whose parameters under the config's selection adapt, except those named in
    ``frozen``, and its exact Adam): a track's start, here and in the worker (parts.py)."""
    network = copy.deepcopy(pretrained)
    _select_parameters(network, config.parameters_for(channels))
    for name, parameter in network.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return network, ExactAdam(network.parameters(), config.learning_rate, (config.beta1, config.beta2),
                              config.epsilon)


def step_on(optimizer: ExactAdam, loss: torch.Tensor | None) -> None:
    """One step of a part's parameters from its loss; a part with no factor (None) still takes
    Adam's step, so that its powers stay those of the other part's."""
    optimizer.zero_grad()
    if loss is not None:
        loss.backward()
    optimizer.step()


@dataclass
class _PartsLoss:
    """A batch's loss when two processes run its parts: ``bits``, the whole batch's bit count
    (the terms of both parts stacked in the whole pass's order and summed: the same float
    as one process's loss), and ``parts_loss``, the second part's differentiable sum (or
    None if it has no factor), which this thread's step starts from."""

    bits: torch.Tensor
    parts_loss: torch.Tensor | None

    @classmethod
    def of(cls, first_terms: torch.Tensor, second_terms: list) -> "_PartsLoss":
        second = torch.stack(second_terms) if second_terms else first_terms.new_zeros(0)
        bits = torch.cat([first_terms, second.detach()]).sum()
        return cls(bits, second.sum() if second_terms else None)

    def detach(self) -> torch.Tensor:
        return self.bits


class OnlineAdapter:
    """Holds θ_t per channel count and the optimiser state; one per archive."""

    def __init__(self, bundle: FlowBundle, config: AdaptationConfig) -> None:
        self.config = adaptation_for(bundle.name, config)  # validated by AdaptationConfig itself
        self._bundle = bundle
        self._family = bundle.family_class
        self._tracks: dict[int, _Track] = {}
        self._batches = 0
        self._helper: ThreadPoolExecutor | None = None
        self._chain: _OpenChain | None = None  # decoder: a chain of batches being decoded
        # FLAG_ROLLBACK was written by release 1.0.0 alone, whose models all run on engine 1: a
        # decoder of any other engine keeps no copy of the state before each update (a rollback
        # there is refused as undoing an update that was never made).
        self._rollbacks = int(bundle.engine["version"]) == 1
        self._parts = None  # a parts.PartWorker that new tracks hand their batches' first parts to
        self._offered = None  # a parts.PartWorker offered, not yet ready (offer_parts)
        # With the worker, this thread's step on a batch waits until the worker has the next
        # batch's request (``_flush``), so that the two run at once: (track, loss) or None.
        self._deferred: tuple | None = None
        self._asked_ahead: _AskedAhead | None = None  # decoder: the next batch, sent to the worker
        self._requested_ahead: _RequestedAhead | None = None  # encoder: the same

    def can_use_parts(self) -> bool:
        """Whether ``offer_parts`` would take a worker: the family splits a batch, and one step per
        batch is taken without rollbacks (whose replay would need the worker's state too).
        Asked per image while a folder is read: the answer is kept."""
        answer = self.__dict__.get("_can_use_parts")
        if answer is None:
            family_splits = all(network.split_parameters() is not None
                                for network in self._bundle.networks.values())
            answer = self._can_use_parts = bool(
                settings_share(self.config) and not self._rollbacks and not self._family.chains_batches
                and family_splits)
        return answer

    def parts_would_take(self, channels: int) -> bool:
        """Whether a track of this channel count would hand its batches' first parts to a worker."""
        return self.can_use_parts() and settings_allow(self.config, channels)

    def offer_parts(self, worker) -> bool:
        """Let ``worker`` (adapt/parts.py) adapt the first part of every batch of the tracks that
        adapt every layer, beside this thread's second part: the same bytes, on two cores.  It is
        taken at the first batch after it is ready (``PartWorker.poll_ready``): until then this
        process codes whole batches, and the tracks it started are handed over then, weights and
        moments bit for bit.  A track that adapts its last layers (grey images by default)
        stays here: its backward pass is small and its finest level most of the work, so the
        worker cost more than it saved (gray32_2048: compress 1.1x, decompress 1.4x the wall
        time, docs/PERFORMANCE.md).  False: not taken (``can_use_parts``)."""
        if self._parts is not None or not self.can_use_parts():
            return False
        self._offered = worker
        return True

    def _take_offered(self) -> None:
        """At a batch's start: take the offered worker if it is ready now (one that did not start
        is left out)."""
        worker = self._offered
        try:
            ready = worker.poll_ready()
        except PartsError:
            worker.failed, self._offered = True, None
            return
        if ready:
            self._offered = None
            self._flush()
            self._parts = worker
            for channels, track in self._tracks.items():
                if track.parts is None and not track.gave_up and self.parts_would_take(channels):
                    self._hand_over(track, channels)

    def _hand_over(self, track: _Track, channels: int) -> None:
        """The worker takes the first part of ``track``'s parameters where this process got them
        (weights, Adam's moments and powers); this process keeps stepping the rest."""
        first_part = self._bundle.network(channels).split_parameters()[0]
        names = {id(parameter): name for name, parameter in track.network.named_parameters()}
        optimizer = track.optimizer
        theirs = [k for k, parameter in enumerate(optimizer.params) if names[id(parameter)] in first_part]
        track.parts = self._parts
        self._parts.open(channels, ([optimizer.params[k] for k in theirs], [optimizer.first[k] for k in theirs],
                                    [optimizer.second[k] for k in theirs], optimizer.beta1_power,
                                    optimizer.beta2_power))
        ours = sorted(set(range(len(optimizer.params))) - set(theirs))
        for k in theirs:
            optimizer.params[k].requires_grad_(False)
        kept = ExactAdam([optimizer.params[k] for k in ours], optimizer.lr, (optimizer.beta1, optimizer.beta2),
                         optimizer.eps)
        kept.first, kept.second = [optimizer.first[k] for k in ours], [optimizer.second[k] for k in ours]
        kept.beta1_power, kept.beta2_power = optimizer.beta1_power, optimizer.beta2_power
        track.optimizer = kept

    # -- state ---------------------------------------------------------------

    def starts_segment(self) -> bool:
        """Whether the next batch is the first of a segment (θ0 for every channel count)."""
        segment = self.config.segment_batches
        return self._batches == 0 or bool(segment and self._batches % segment == 0)

    @property
    def bundle(self) -> FlowBundle:
        """The pretrained model (θ0) this adapter starts every segment from."""
        return self._bundle

    @property
    def batches_seen(self) -> int:
        """The global index of the next batch (segments are counted from it)."""
        return self._batches

    def fresh_segment(self, batch_index: int) -> "OnlineAdapter":
        """An adapter at θ0 for the segment that starts at global batch ``batch_index``."""
        adapter = OnlineAdapter(self._bundle, self.config)
        adapter._batches = batch_index
        return adapter

    def skip_batch(self) -> None:
        """Count a batch that is not decoded (a refused group), so segment starts stay where they are."""
        self._flush()
        self._batches += 1
        self._chain = None

    def restart(self) -> None:
        """Start a new segment now (--salvage resumes decoding at a segment start)."""
        self._tracks, self._batches, self._chain, self._deferred = {}, 0, None, None

    def _track(self, channels: int) -> _Track:
        if self._offered is not None:
            self._take_offered()
        segment = self.config.segment_batches
        if segment and self._batches and self._batches % segment == 0:
            self._tracks, self._deferred = {}, None  # a new segment starts from θ0
        self._batches += 1
        if channels not in self._tracks:
            self._tracks[channels] = self._new_track(channels)
        track = self._tracks[channels]
        track.batches += 1
        return track

    def _new_track(self, channels: int) -> _Track:
        """θ0 for this channel count, with a fresh optimiser.  Without adaptation nothing ever
        changes the weights: θ0's own network codes, and the optimiser holds no parameters."""
        if not self.config.adapt:
            return _Track(self._bundle.network(channels), ExactAdam([], self.config.learning_rate))
        pretrained = self._bundle.network(channels)
        remote = self._parts is not None and self.parts_would_take(channels)
        if remote:  # the worker adapts the first part's parameters
            self._parts.open(channels)
        network, optimizer = adapting_copy(pretrained, self.config, channels,
                                           pretrained.split_parameters()[0] if remote else ())
        selection = self.config.parameters_for(channels)
        margin = PROBE_MARGIN_LAST_LAYERS if selection == "last" else PROBE_MARGIN
        if self._family.guard_every_batch:
            margin = PROBE_MARGIN_BITS_BACK
        return _Track(network, optimizer, probe_margin=margin, parts=self._parts if remote else None)

    @staticmethod
    def _state(track: _Track) -> tuple:
        optimizer = track.optimizer
        return ([p.detach().clone() for p in optimizer.params], [m.clone() for m in optimizer.first],
                [v.clone() for v in optimizer.second], optimizer.beta1_power, optimizer.beta2_power)

    @staticmethod
    def _load(track: _Track, state: tuple) -> None:
        weights, first, second, power1, power2 = state
        optimizer = track.optimizer
        with torch.no_grad():
            for target, source in zip(optimizer.params, weights):
                target.copy_(source)
        optimizer.first, optimizer.second = first, second
        optimizer.beta1_power, optimizer.beta2_power = power1, power2

    def adapted_network(self, channels: int) -> torch.nn.Module:
        """θ_t for this channel count (θ0 if no batch of it was seen in this segment); not for a
        track whose first part a worker adapts (this process holds only the second part's θ_t)."""
        self._flush()
        track = self._tracks.get(channels)
        if track is not None and track.parts is not None:
            raise ValueError("a worker process holds part of the adapted weights")
        return track.network if track else self._bundle.network(channels)

    def snapshot(self):
        """The whole adaptation state (weights and optimiser moments), to roll back to.
        θ0's networks, which nothing changes, are shared rather than copied; the worker
        keeps its own half (one snapshot at a time)."""
        self._flush()
        pretrained = [self._bundle.network(channels) for channels in self._tracks]
        shared = {id(network): network for network in pretrained}
        if self._parts is not None:
            shared[id(self._parts)] = self._parts
        tracks, batches = copy.deepcopy((self._tracks, self._batches), shared)
        return tracks, batches, None if self._parts is None else self._parts.snapshot()

    def restore(self, state) -> None:
        self._deferred = None  # a step of the state given up
        self._tracks, self._batches, worker_snapshot = state
        if worker_snapshot is not None:
            self._parts.restore(worker_snapshot)

    def export_state(self) -> dict:
        """The adaptation state between runs as plain values (numpy arrays, numbers, bools),
        so that another process with the same model can go on from here (``import_state``)
        without a pickled network: osoa_zip.cluster sends it to Dask workers."""
        if self._chain is not None:
            raise ValueError("a chain of batches is still open")
        self._flush()
        if any(track.parts is not None for track in self._tracks.values()):
            raise ValueError("a worker process holds part of the adaptation state")
        return {"batches": self._batches,
                "tracks": {channels: _plain_track(track) for channels, track in self._tracks.items()}}

    def import_state(self, state: dict) -> None:
        """Go on from ``export_state``'s values (exact: float64 arrays copied bit for bit)."""
        tracks = {}
        for channels, values in state["tracks"].items():
            track = self._new_track(int(channels))
            parameters = track.optimizer.params
            self._load(track, _tensor_state(values, parameters))
            previous = values["previous"]
            track.previous = None if previous is None else _tensor_state(previous, parameters)
            for name in _TRACK_COUNTERS:
                setattr(track, name, values[name])
            tracks[int(channels)] = track
        self._tracks, self._batches, self._chain = tracks, int(state["batches"]), None

    def _will_adapt(self, track: _Track, batches: int | None = None) -> bool:
        """Whether the track adapts on its batch number ``batches`` (default: the current one)."""
        config = self.config
        batches = track.batches if batches is None else batches
        return (config.adapt and config.steps_per_batch > 0 and not track.gave_up
                and (config.adapt_batches == 0 or batches <= config.adapt_batches))

    # -- coding --------------------------------------------------------------

    def encode(self, tiles: np.ndarray, count_tiles: np.ndarray | None = None,
               following: np.ndarray | None = None) -> tuple[bytes, BatchStatistics]:
        """Code a B x C x H x W uint8 batch (flag byte + stream), then adapt on it.  With
        ``count_tiles`` (B booleans), a frozen archive's statistics also hold the coded bits of
        those tiles (None for the others): triage judges their images by them.

        ``following``: the next batch of the run, which the next call codes.  With the worker,
        its first part is asked for as soon as this batch's decisions are taken: this process
        then takes its step on this batch while the helper thread pushes it, instead of
        waiting for the push and only then asking (``_request_ahead``)."""
        started = time.perf_counter()
        choice = self._choose(tiles)
        if choice.factors is not None:
            # Detached factors: the entropy coder can run while the update changes the weights.
            stream = self._beside(self._push, choice.network, choice.factors)
        else:
            encoder = self._family.new_encoder()
            choice.network.encode(choice.pixels, encoder)  # the model codes as it goes: before any update
            stream = _Done(encoder.finish())
        tile_bits = None
        if count_tiles is not None and np.any(count_tiles) and not self.config.adapt and choice.factors is not None:
            values = choice.network.factor_tile_bits(choice.factors, tiles.shape[0], count_tiles)
            if values is not None:
                tile_bits = [value if counted else None for value, counted in zip(values.tolist(), count_tiles)]
        if choice.adapting:
            self._adapt(choice.track, choice.pixels, choice.loss, choice.trunks)
        if following is not None and choice.track.parts is not None:
            self._request_ahead(following)
        data = bytes([choice.flags]) + stream.result()
        return data, BatchStatistics(8 * len(data), tiles.size, time.perf_counter() - started, choice.flags,
                                     tile_bits)

    def _parts_request(self, track: _Track, tiles: np.ndarray, adapting: bool, guarding: bool) -> tuple:
        """What a batch's first part asks of the worker (``PartWorker.analyse``'s arguments, but
        the pixels) and whether the worker steps at once (nothing this process decides can stop
        the step without the guard)."""
        network = self._bundle.network(tiles.shape[1]) if track.gave_up else track.network
        first, _ = network.parts(*tiles.shape[2:])
        with_loss = adapting or guarding
        return (tiles.shape[1], first, track.gave_up, adapting, with_loss, guarding, adapting and not guarding)

    def _request_ahead(self, tiles: np.ndarray) -> None:
        """Send the worker the next batch's first part now, if what its own ``_choose`` will ask
        is already known: the same track, in the same segment, with no worker being taken on
        meanwhile.  The guard's schedule is read without being advanced (``_guards``); then
        this process takes its deferred step, while the helper thread pushes."""
        track = self._tracks.get(tiles.shape[1])
        if track is None or track.parts is None or self._offered is not None or self.starts_segment():
            return
        adapting = self._will_adapt(track, track.batches + 1)
        guarding = self._guards(track, advance=False)
        request = self._parts_request(track, tiles, adapting, guarding)
        self._send_request(track, tiles, request)
        self._requested_ahead = _RequestedAhead(tiles, request)
        self._flush()

    @staticmethod
    def _send_request(track: _Track, tiles: np.ndarray, request: tuple) -> None:
        """Hand the worker a batch's first part, as ``_parts_request`` put it."""
        channels, first, pretrained, graph, loss, guard, step = request
        track.parts.analyse(channels, first, tiles, pretrained, graph, loss, guard, step=step)

    @property
    def chain_length(self) -> int:
        """How many consecutive batches ``encode_chain`` lays on one stack (1: each its own)."""
        return self.config.chain_batches if self._family.chains_batches else 1

    @property
    def batches_per_call(self) -> int:
        """How many consecutive batches of a run to hand ``encode_chain`` at once: a chain, for a
        family that chains batches; else LOOK_AHEAD_BATCHES, each coded knowing the next
        (``encode``'s ``following``)."""
        return self.chain_length if self._family.chains_batches else LOOK_AHEAD_BATCHES

    def encode_chain(self, batches: list[np.ndarray], count_tiles: Sequence[np.ndarray | None] | None = None
                     ) -> list[tuple[bytes, BatchStatistics]]:
        """Code consecutive batches of one segment, as ``encode`` does one by one
        (``count_tiles``: each batch's ``encode`` argument; a chain counts none).  A family
        that does not chain batches codes any number of them so, each knowing the next
        (``encode``'s ``following``).

        A family that chains batches (the VAE, bits-back) lays them on one
        stack, so that only the batch coded first pays for its latents without
        bits back.  The stack is last-in-first-out and the decoder meets the
        batches first to last, so the batches are coded last to first, each
        with the weights it was to be coded with: the encoder keeps one copy of
        the weights per batch of the chain (its memory is bounded by the
        chain's length).  The first batch's chunk holds the whole stream
        (FLAG_CHAIN_HEAD and the chain's length); the others hold their flags
        alone (FLAG_CHAINED).
        """
        if not self._family.chains_batches or len(batches) < 2:  # one by one, each knowing the next
            counts = [None] * len(batches) if count_tiles is None else count_tiles
            return [self.encode(tiles, counted, batches[index + 1] if index + 1 < len(batches) else None)
                    for index, (tiles, counted) in enumerate(zip(batches, counts))]
        if len(batches) > self.chain_length:
            raise ValueError(f"a chain of {len(batches)} batches is longer than chain_batches")
        planned: list[_Planned] = []
        for index, tiles in enumerate(batches):
            started = time.perf_counter()
            if index and self.starts_segment():
                raise ValueError("a chain of batches crosses a segment start")
            choice = self._choose(tiles)
            pretrained = self._bundle.network(choice.channels)
            weights = None if choice.network is pretrained else [p.detach().clone()
                                                                  for p in choice.network.parameters()]
            if choice.adapting:
                self._adapt(choice.track, choice.pixels, choice.loss, choice.trunks)
            planned.append(_Planned(choice, weights, time.perf_counter() - started))
        coder, scratch = self._family.new_encoder(), {}
        for index in reversed(range(len(planned))):
            started = time.perf_counter()
            batch = planned[index]
            network = (self._bundle.network(batch.choice.channels) if batch.weights is None
                       else self._scratch_network(scratch, batch.choice.channels, batch.weights))
            before = coder.num_bits()
            network.encode(batch.choice.pixels, coder, initial=index == len(planned) - 1)
            batch.seconds += time.perf_counter() - started
            batch.stack_bits = coder.num_bits() - before
        head = (bytes([planned[0].choice.flags | FLAG_CHAIN_HEAD]) + len(planned).to_bytes(CHAIN_LENGTH_BYTES, "little")
                + coder.finish())
        # Each chained batch is credited with what it added to the stack; the head with the rest.
        coded = [(head, 8 * len(head) - sum(batch.stack_bits for batch in planned[1:]))]
        coded += [(bytes([batch.choice.flags | FLAG_CHAINED]), 8 + batch.stack_bits) for batch in planned[1:]]
        return [(data, BatchStatistics(bits, batch.choice.pixels.numel(), batch.seconds, data[0]))
                for (data, bits), batch in zip(coded, planned)]

    def _scratch_network(self, scratch: dict, channels: int, weights: list) -> torch.nn.Module:
        """A copy of θ0's network (one per channel count and chain) loaded with ``weights``."""
        if channels not in scratch:
            pretrained = self._bundle.network(channels)
            scratch[channels] = copy.deepcopy(pretrained, {id(pretrained.tables): pretrained.tables})
        network = scratch[channels]
        with torch.no_grad():
            for parameter, value in zip(network.parameters(), weights):
                parameter.copy_(value)
        return network

    def _choose(self, tiles: np.ndarray) -> "_Choice":
        """Everything but the coding of a batch: its track, the network that codes it (the
        guard's choice), its flags, and the loss its first step starts from."""
        pixels = torch.from_numpy(tiles).to(torch.float64)
        channels = pixels.shape[1]
        segment_flag = FLAG_SEGMENT_START if self.starts_segment() else 0
        track = self._track(channels)
        adapting = self._will_adapt(track)
        guarding = self._guards(track)
        pretrained = self._bundle.network(channels)
        network = pretrained if track.gave_up else track.network
        # A memo where a second pass over the batch will come (exact/trunk.py).
        trunks = TrunkMemo() if guarding or (adapting and self.config.steps_per_batch > 1) else None
        if track.parts is not None:
            loss, factors, pretrained_pass = self._analyse_in_parts(track, tiles, pixels, adapting, guarding, trunks)
        else:
            with sharing(trunks):
                # One forward pass codes the batch, gives the guard its bit count and starts
                # the first step (the weights are the ones it steps from).
                with torch.set_grad_enabled(adapting):
                    loss, factors = self._analyse(network, pixels, adapting or guarding)
                # θ0's pass for the guard comes second, on this thread: where the trunks are frozen
                # it runs only what adapts (exact/trunk.py), far less CPU than a whole pass beside.
                pretrained_pass = self._analyse_frozen(pretrained, pixels) if guarding else None
        flags = 0
        if pretrained_pass is not None:
            pretrained_loss, pretrained_factors = pretrained_pass
            adapted_bits, pretrained_bits = float(loss.detach()), float(pretrained_loss)
            self._schedule_probe(track, adapted_bits, pretrained_bits)
            if pretrained_bits < adapted_bits:  # a tie keeps the adapted model
                network, factors, flags = pretrained, pretrained_factors, FLAG_PRETRAINED
                track.pretrained_wins += 1
                if self.config.give_up_after and track.pretrained_wins >= self.config.give_up_after:
                    flags |= FLAG_GIVE_UP
                    track.gave_up, adapting = True, False
            else:
                track.pretrained_wins = 0
        if track.parts is not None and not adapting:
            track.parts.drop(channels)
            track.parts_stepped = False
        if track.parts is not None and loss is not None:
            loss = loss.parts_loss  # what this thread's step starts from: the second part's
        flags |= segment_flag
        return _Choice(pixels, channels, track, network, flags, adapting, loss, factors, trunks)

    def _analyse_in_parts(self, track: _Track, tiles: np.ndarray, pixels: torch.Tensor, adapting: bool,
                          guarding: bool, trunks: TrunkMemo | None) -> tuple:
        """``_choose``'s passes with the worker: it runs the first part (and θ0's, for the guard)
        while this thread runs the second; then (loss, factors, θ0's (loss, factors) or None),
        each loss the whole batch's bit count, bit for bit (``_PartsLoss``)."""
        channels, (height, width) = pixels.shape[1], pixels.shape[2:]
        pretrained = self._bundle.network(channels)
        network = pretrained if track.gave_up else track.network
        _, second = network.parts(height, width)
        request = self._parts_request(track, tiles, adapting, guarding)
        *_, with_loss, _, step = request
        # Without the guard nothing can stop this batch's step: the worker takes it at once.
        track.parts_stepped = step
        asked, self._requested_ahead = self._requested_ahead, None
        if asked is None:
            self._send_request(track, tiles, request)
        elif asked.tiles is not tiles or asked.request != request:
            raise RuntimeError("the worker was asked ahead for another batch than this one")
        self._flush()  # the last batch's step, while the worker codes its part of this one
        with sharing(trunks):
            with torch.set_grad_enabled(adapting):
                terms, factors = network.analyse_part(pixels, second, with_loss)
            pretrained_part = None
            if guarding:
                with torch.no_grad():
                    pretrained_part = pretrained.analyse_part(pixels, second, True)
        theirs = track.parts.analysed()
        loss = _PartsLoss.of(theirs.terms, terms) if with_loss else None
        pretrained_pass = None
        if pretrained_part is not None:
            pretrained_pass = (_PartsLoss.of(theirs.pretrained_terms, pretrained_part[0]).bits,
                               theirs.pretrained_factors + pretrained_part[1])
        return loss, theirs.factors + factors, pretrained_pass

    @staticmethod
    def _analyse(network, pixels: torch.Tensor, with_loss: bool):
        """(loss or None, factors to push or None): CodingModel.analyse."""
        return network.analyse(pixels, with_loss=with_loss)

    def _beside(self, function, *arguments):
        """Run ``function`` on this adapter's helper thread (the second core); returns a future."""
        if self._helper is None:
            self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osoa-adapter")
        return self._helper.submit(function, *arguments)

    @classmethod
    def _analyse_frozen(cls, network, pixels: torch.Tensor):
        with torch.no_grad():
            return cls._analyse(network, pixels, True)

    def _push(self, network, factors) -> bytes:
        encoder = self._family.new_encoder()
        network.push(factors, encoder)
        return encoder.finish()

    def _guards(self, track: _Track, advance: bool = True) -> bool:
        """Whether the track's next batch is compared with θ0; ``advance``: count the batch
        against the back-off (``_choose``), else only read the schedule (``_request_ahead``)."""
        if not (self.config.guard and track.updated and not track.gave_up):
            return False
        return self._probe_due(track) if advance else track.probe_wait <= 0

    @staticmethod
    def _probe_due(track: _Track) -> bool:
        if track.probe_wait > 0:
            track.probe_wait -= 1
            return False
        return True

    @staticmethod
    def _schedule_probe(track: _Track, adapted_bits: float, pretrained_bits: float) -> None:
        """Back off (1, 2, 4, 8 batches) while θ0 loses by more than the margin; else ask every batch."""
        if pretrained_bits > adapted_bits * (1 + track.probe_margin):
            track.probe_gap = min(max(1, 2 * track.probe_gap), MAX_PROBE_GAP)
        else:
            track.probe_gap = 0
        track.probe_wait = track.probe_gap

    def decode(self, payload: bytes, shape: tuple[int, int, int, int],
               following: tuple[bytes, tuple] | None = None) -> np.ndarray:
        """Decode one batch (flag byte + stream), then replay the encoder's adaptation on it.

        ``following``: the next batch of the run (payload, shape), which the next call decodes.
        With the worker, its first part is asked for with this batch's when the worker's step on
        this batch needs nothing more from this process: the worker then decodes it while this
        process decodes this batch's second part and steps, instead of waiting for both."""
        if not payload:
            raise BatchError("empty batch")
        flags = payload[0]
        if flags & ~KNOWN_FLAGS:
            raise BatchError(f"unknown batch flags 0x{flags:02x}")
        if bool(flags & FLAG_SEGMENT_START) != self.starts_segment():
            raise BatchError("a batch's segment flag does not match the header's segment size")
        decoder, initial = self._batch_stream(flags, payload)
        channels = shape[1]
        track = self._track(channels)
        if flags & FLAG_ROLLBACK:
            if track.previous is None:
                raise BatchError("a batch undoes an update that was never made")
            self._load(track, track.previous)
            track.previous = None
        if flags & FLAG_GIVE_UP:
            if not flags & FLAG_PRETRAINED or track.gave_up:
                raise BatchError("a batch gives up adaptation it cannot give up")
            track.gave_up = True
        adapting = self._will_adapt(track)
        # The update's passes may reuse the decoding pass's frozen trunks (exact/trunk.py): a
        # FLAG_PRETRAINED batch is decoded with θ0, and every step after the first makes a pass.
        later = adapting and (bool(flags & FLAG_PRETRAINED) or self.config.steps_per_batch > 1)
        trunks = TrunkMemo() if later else None
        if track.parts is not None:
            pixels, loss = self._decode_in_parts(track, decoder, payload, shape, flags, adapting, following)
        else:
            pixels, loss = self._decode_whole(track, decoder, shape, flags, adapting, initial, trunks)
        if self._chain is None:
            decoder.check_finished()
        else:
            self._chain.remaining -= 1
            if self._chain.remaining == 0:  # the chain's last batch: its stream must be used up
                self._chain = None
                decoder.check_finished()
        if not bool(((pixels >= 0) & (pixels <= 255)).all()):
            raise BatchError("decoded pixels out of range")
        if adapting:
            # An archive may undo this update with its next batch (FLAG_ROLLBACK, written by 1.0.0).
            self._adapt(track, pixels, loss, trunks, keep_previous=self.config.guard and self._rollbacks)
        return pixels.to(torch.uint8).numpy()

    def _decode_whole(self, track: _Track, decoder, shape: tuple, flags: int, adapting: bool, initial: bool,
                      trunks: TrunkMemo | None) -> tuple:
        """(pixels, the loss the update starts from or None), all on this thread."""
        channels = shape[1]
        with sharing(trunks):
            if flags & FLAG_PRETRAINED or track.gave_up:
                return self._bundle.network(channels).decode(decoder, shape, initial), None
            if adapting:  # the decoding pass may also start the first step, as on the encoder
                return track.network.decode_with_loss(decoder, shape, initial)
            return track.network.decode(decoder, shape, initial), None

    def _decode_in_parts(self, track: _Track, decoder, payload: bytes, shape: tuple, flags: int,
                         adapting: bool, following: tuple[bytes, tuple] | None = None) -> tuple:
        """``_decode_whole`` with the worker: it pops the batch's first part from its own copy of the
        stream and hands this thread the image so far and the coder's position; this thread pops
        the second part from there.  Returns (pixels, the second part's loss or None)."""
        channels = shape[1]
        pretrained, network, (first, second), graph = self._decoding_parts(track, flags, shape, adapting)
        track.parts_stepped = graph  # the worker's step needs nothing more from this thread
        asked, self._asked_ahead = self._asked_ahead, None
        if asked is None:
            track.parts.decode(channels, first, payload[1:], shape, pretrained, graph, step=graph)
        elif (asked.payload is not payload or asked.shape != tuple(shape) or asked.first != first
              or asked.pretrained != pretrained or asked.graph != graph):
            raise RuntimeError("the worker was asked ahead for another batch than this one")
        if following is not None and (graph or not adapting):  # no later message of ours about this batch
            self._ask_ahead(track, *following)
        self._flush()  # the last batch's step, while the worker decodes its part of this one
        image, position = track.parts.decoded()
        decoder.resume(position)
        with torch.set_grad_enabled(graph):
            pixels, loss = network.decode_part(decoder, shape, second, image, graph)
        if adapting and pretrained:  # θ0 decoded it: the update's pass over the pixels, in two parts
            track.parts.adapt_on(channels, first, pixels.to(torch.uint8).numpy())
            with torch.enable_grad():
                terms, _ = track.network.analyse_part(pixels, second, True)
            loss = torch.stack(terms).sum() if terms else None
        return pixels, loss

    def _ask_ahead(self, track: _Track, payload: bytes, shape: tuple) -> None:
        """Send the worker the next batch's first part now, if what its own call will send is
        already known: the same track and segment, and flags that change nothing before it is
        decoded (no rollback, give-up, chain or segment start; those are asked as they come)."""
        if (not payload or payload[0] & ~FLAG_PRETRAINED  # no other flag: none of them can wait
                or self._offered is not None or self.starts_segment() or self._chain is not None
                or self._tracks.get(shape[1]) is not track):
            return
        pretrained, _, (first, _), graph = self._decoding_parts(track, payload[0], shape,
                                                                self._will_adapt(track, track.batches + 1))
        track.parts.decode(shape[1], first, payload[1:], shape, pretrained, graph, step=graph)
        self._asked_ahead = _AskedAhead(payload, tuple(shape), first, pretrained, graph)

    def _decoding_parts(self, track: _Track, flags: int, shape: tuple, adapting: bool) -> tuple:
        """A batch's decoding with the worker: (whether θ0 decodes it, the network that does,
        its (first, second) parts, whether the decoding pass keeps a graph for the step)."""
        pretrained = bool(flags & FLAG_PRETRAINED) or track.gave_up
        network = self._bundle.network(shape[1]) if pretrained else track.network
        return pretrained, network, network.parts(*shape[2:]), adapting and not pretrained

    def _flush(self) -> None:
        """Take this thread's deferred step (``_adapt`` with the worker), if one is waiting: before
        any pass with the weights it changes, and before anyone looks at the state."""
        if self._deferred is not None:
            track, loss = self._deferred
            self._deferred = None
            step_on(track.optimizer, loss)

    def _batch_stream(self, flags: int, payload: bytes) -> tuple:
        """(the coder a batch is decoded from, whether it was laid on an empty stack)."""
        if flags & FLAG_CHAINED:
            if self._chain is None or flags & FLAG_CHAIN_HEAD or len(payload) != 1:
                raise BatchError("a batch continues a chain of batches that is not there")
            if self.starts_segment():
                raise BatchError("a chain of batches crosses a segment start")
            return self._chain.coder, self._chain.remaining == 1
        self._end_chain()  # a batch that does not continue the open chain ends it early
        if not flags & FLAG_CHAIN_HEAD:
            return self._family.new_decoder(payload[1:]), True
        length = declared_chain_length(payload)
        if not self._family.chains_batches or not 2 <= length <= self.config.chain_batches:
            raise BatchError(f"a chain of {length} batches is not allowed here")
        coder = self._family.new_decoder(payload[1 + CHAIN_LENGTH_BYTES:])
        self._chain = _OpenChain(coder, length)
        return coder, False

    def end_run(self) -> None:
        """After the last batch of a run of batches (a group, or a segment in it): no chain may be open."""
        self._flush()
        self._end_chain()

    def _end_chain(self) -> None:
        if self._chain is not None:
            chain, self._chain = self._chain, None
            raise BatchError(f"a chain of batches ends {chain.remaining} batch(es) early")

    def _adapt(self, track: _Track, pixels: torch.Tensor, loss: torch.Tensor | None, trunks: TrunkMemo | None,
               keep_previous: bool = False) -> None:
        """The update's steps on a batch; ``trunks``: its earlier passes' frozen trunks (or None)."""
        if keep_previous:
            track.previous = self._state(track)
        network, optimizer = track.network, track.optimizer
        if track.parts is not None:  # one step (offer_parts): the worker's on the first part, this one's on the second
            if not track.parts_stepped:
                track.parts.step(pixels.shape[1])
            track.parts_stepped = False
            self._deferred = (track, loss)  # taken by _flush, once the worker has its next request
            track.updated = True
            return
        with sharing(trunks):
            for step in range(self.config.steps_per_batch):
                optimizer.zero_grad()
                (loss if step == 0 and loss is not None else network.nll(pixels)).backward()
                optimizer.step()
        track.updated = True


__all__ = ["AdaptationConfig", "OnlineAdapter", "BatchStatistics", "BatchError", "ENGINE",
           "FLAG_PRETRAINED", "FLAG_ROLLBACK", "FLAG_SEGMENT_START", "FLAG_GIVE_UP", "FLAG_CHAIN_HEAD", "FLAG_CHAINED"]
