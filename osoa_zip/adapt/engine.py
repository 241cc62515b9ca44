"""One-Shot Online Adaptation, replayable.

Encoder and decoder both start from the pretrained weights θ0 (in the exact
float64 engine).  Batch t is coded under θ_{t-1}; then both sides take the
same k optimiser steps on batch t's negative log-likelihood to reach θ_t.
Because every step is bit-exact (see osoa_zip.exact), the decoder's θ_t is
the encoder's θ_t on any machine.  The adapted weights are never stored.

The model family (``bundle.family``) picks the coder of a batch: the flow
queues its symbols and lays them on a fresh ANS stack at the end; the VAE
pushes and pops one stack as it goes (bits-back, coding/bitsback.py).
Either way a batch is one independent byte string.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..coding.ans import Decoder, Encoder
from ..coding.bitsback import StackCoder
from ..exact import ENGINE
from ..exact.optim import ExactAdam
from ..models.registry import FlowBundle
from .config import AdaptationConfig


# family -> (encoder for a new batch, decoder of a batch's bytes)  [vae: added for the VAE family]
CODERS = {"flow": (Encoder, Decoder), "vae": (StackCoder, StackCoder)}


@dataclass
class BatchStatistics:
    bits: int
    subpixels: int
    seconds: float


class OnlineAdapter:
    """Holds θ_t per channel count and the optimiser state; one per archive."""

    def __init__(self, bundle: FlowBundle, config: AdaptationConfig) -> None:
        if config.optimizer != "adam":
            raise ValueError(f"unknown optimizer {config.optimizer!r}")
        if (config.tile_size % 2 or config.tile_size < 2 or config.batch_size < 1 or config.steps_per_batch < 0
                or config.segment_batches < 0):
            raise ValueError("tile size must be even and positive, batch size and steps positive")
        if bundle.family not in CODERS:
            raise ValueError(f"unknown model family {bundle.family!r}")
        self.config = config
        self._bundle = bundle
        self._new_encoder, self._new_decoder = CODERS[bundle.family]
        self._networks: dict = {}
        self._optimizers: dict = {}
        self._batches = 0

    def _network(self, channels: int):
        segment = self.config.segment_batches
        if segment and self._batches and self._batches % segment == 0:
            self._networks, self._optimizers = {}, {}  # a new segment starts from θ0
        self._batches += 1
        if channels not in self._networks:
            network = copy.deepcopy(self._bundle.network(channels))
            self._networks[channels] = network
            self._optimizers[channels] = ExactAdam(network.parameters(), self.config.learning_rate,
                                                   (self.config.beta1, self.config.beta2), self.config.epsilon)
        return self._networks[channels]

    def snapshot(self):
        """The whole adaptation state (weights and optimiser moments), to roll back to."""
        return copy.deepcopy((self._networks, self._optimizers, self._batches))

    def restore(self, state) -> None:
        self._networks, self._optimizers, self._batches = state

    def encode(self, tiles: np.ndarray) -> tuple[bytes, BatchStatistics]:
        """Code a B x C x H x W uint8 batch, then adapt on it."""
        started = time.perf_counter()
        pixels = torch.from_numpy(tiles).to(torch.float64)
        network = self._network(pixels.shape[1])
        encoder = self._new_encoder()
        network.encode(pixels, encoder)
        data = encoder.finish()
        self._adapt(pixels)
        return data, BatchStatistics(8 * len(data), tiles.size, time.perf_counter() - started)

    def decode(self, data: bytes, shape: tuple[int, int, int, int]) -> np.ndarray:
        """Decode one batch, then replay the encoder's adaptation on it."""
        network = self._network(shape[1])
        decoder = self._new_decoder(data)
        pixels = network.decode(decoder, shape)
        decoder.check_finished()
        if not bool(((pixels >= 0) & (pixels <= 255)).all()):
            raise ValueError("decoded pixels out of range")
        self._adapt(pixels)
        return pixels.to(torch.uint8).numpy()

    def _adapt(self, pixels: torch.Tensor) -> None:
        if not self.config.adapt:
            return
        channels = pixels.shape[1]
        network, optimizer = self._networks[channels], self._optimizers[channels]
        for _ in range(self.config.steps_per_batch):
            optimizer.zero_grad()
            network.nll(pixels).backward()
            optimizer.step()


__all__ = ["AdaptationConfig", "OnlineAdapter", "BatchStatistics", "ENGINE"]
