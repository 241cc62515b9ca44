"""The paper's baseline: fine-tune, then store the weights beside the data (Zhang et al., NeurIPS 2021).

At equal cost to OSOA: the same parameters the engine adapts take the same
optimiser steps (same exact Adam, learning rate, steps per batch) on the
same batches in the same order; the tuning pass *is* OnlineAdapter.encode
with the guard off, so nothing here re-implements the update.  Then:

* the tuned parameters are stored: float16 (or float32) values, in sorted
  name order per channel count, then xz -9e.  The decoder knows the
  architecture and which parameters adapt, so no names are stored.
* every batch is coded again with the *stored* model, frozen, by the exact
  engine: weights restored from the float16 values and rounded back onto the
  engine's weight grid, so the data size is what a decoder of this baseline
  would really get.  Decoding it back (restore_fine_tuned + decode) is timed
  as the baseline's decompression and checked against the pixels.
"""
from __future__ import annotations

import copy
import dataclasses
import lzma
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..adapt.engine import AdaptationConfig, OnlineAdapter
from ..exact.fixed import quantize_weight
from ..exact.layers import ExactConv2d
from ..models.registry import FlowBundle

XZ_PRESET = 9 | lzma.PRESET_EXTREME  # xz -9e
STORAGE = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


@dataclass
class StoredModel:
    """One way of storing the tuned weights, and the data coded with what it restores."""

    dtype: str
    weight_bytes: int                 # xz-compressed parameter values
    data_bytes: int = 0               # the batches coded with the restored model, frozen
    batch_bits: list[int] = field(default_factory=list)
    code_seconds: float = 0.0         # storing the weights (xz) + coding every batch
    payload: bytes = b""

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.data_bytes


@dataclass
class FineTuneResult:
    stored_values: int                # parameters stored (scalars)
    tune_seconds: float               # the tuning pass (it codes each batch too, as OSOA does)
    batch_subpixels: list[int]
    stores: dict[str, StoredModel]
    layout: dict[int, list[str]]      # channel count -> stored parameter names
    decode_seconds: float = 0.0       # float16: restore the weights, decode every batch
    decoded_exactly: bool = False


def _tuning_config(config: AdaptationConfig) -> AdaptationConfig:
    """OSOA's settings as plain fine-tuning: adapt, one model for the whole set, no guard."""
    changes = {"adapt": True, "segment_batches": 0}
    if "guard" in {f.name for f in dataclasses.fields(AdaptationConfig)}:
        changes["guard"] = False  # the guard may undo steps; fine-tuning keeps every one
    return dataclasses.replace(config, **changes)


def _frozen_config(config: AdaptationConfig) -> AdaptationConfig:
    return dataclasses.replace(config, adapt=False, segment_batches=0)


def _adapted_network(adapter: OnlineAdapter, channels: int) -> torch.nn.Module:
    """θ_T for a channel count the adapter has coded."""
    return adapter.adapted_network(channels)


def _stored_names(network: torch.nn.Module) -> list[str]:
    """What the engine adapts (it turns requires_grad off for the rest), sorted."""
    return sorted(name for name, p in network.named_parameters() if p.requires_grad)


def _grid_names(network: torch.nn.Module) -> set[str]:
    """Parameters the forward pass puts on the weight grid (convolution weights and biases)."""
    return {f"{prefix}.{name}" if prefix else name for prefix, module in network.named_modules()
            if isinstance(module, ExactConv2d) for name, _ in module.named_parameters(recurse=False)}


def store_weights(networks: dict[int, torch.nn.Module], dtype: str) -> bytes:
    """xz of the adapted parameters' values in `dtype`, channel counts ascending, names sorted.

    Grid parameters are stored as the engine uses them (on the weight grid),
    the others (the final prior's mean and log-scale) as they are.
    """
    pieces = []
    for channels in sorted(networks):
        network = networks[channels]
        grid, parameters = _grid_names(network), dict(network.named_parameters())
        for name in _stored_names(network):
            value = parameters[name].detach()
            value = quantize_weight(value) if name in grid else value
            pieces.append(value.numpy().astype(STORAGE[dtype]).tobytes())
    return lzma.compress(b"".join(pieces), preset=XZ_PRESET)


def restore_fine_tuned(bundle: FlowBundle, payload: bytes, dtype: str,
                       layout: dict[int, list[str]]) -> FlowBundle:
    """The decoder's side: θ0 with the stored values put back and rounded onto the weight grid.

    `layout` (channel count -> parameter names) is what a decoder derives from
    the architecture and the adaptation settings, so it is not stored.
    """
    raw = np.frombuffer(lzma.decompress(payload), STORAGE[dtype])
    networks, offset = dict(bundle.networks), 0
    for channels in sorted(layout):
        network = copy.deepcopy(bundle.network(channels))
        grid, parameters = _grid_names(network), dict(network.named_parameters())
        with torch.no_grad():
            for name in layout[channels]:
                parameter = parameters[name]
                values = raw[offset:offset + parameter.numel()]
                offset += parameter.numel()
                values = torch.from_numpy(values.astype(np.float64)).view_as(parameter)
                parameter.copy_(quantize_weight(values) if name in grid else values)
        networks[channels] = network
    if offset != raw.size:
        raise ValueError(f"stored weights hold {raw.size} values, the model takes {offset}")
    return FlowBundle(name=f"{bundle.name}+fine-tuned", sha256="", config=bundle.config, networks=networks)


def fine_tune_and_store(bundle: FlowBundle, config: AdaptationConfig, batches: list[np.ndarray],
                        dtypes: tuple[str, ...] = ("float16", "float32")) -> FineTuneResult:
    """Run the baseline on `batches` (from sets.model_batches)."""
    tuning = _tuning_config(config)
    started = time.perf_counter()
    tuner = OnlineAdapter(bundle, tuning)
    for batch in batches:
        tuner.encode(batch)  # codes, then takes the engine's steps on the batch
    tuned = {c: _adapted_network(tuner, c) for c in sorted({batch.shape[1] for batch in batches})}
    layout = {c: _stored_names(network) for c, network in tuned.items()}
    tune_seconds = time.perf_counter() - started
    result = FineTuneResult(stored_values=sum(dict(tuned[c].named_parameters())[name].numel()
                                              for c, names in layout.items() for name in names),
                            tune_seconds=tune_seconds,
                            batch_subpixels=[batch.size for batch in batches], stores={}, layout=layout)
    for dtype in dtypes:
        started = time.perf_counter()
        payload = store_weights(tuned, dtype)
        restored = restore_fine_tuned(bundle, payload, dtype, layout)
        coder = OnlineAdapter(restored, _frozen_config(config))
        coded = [coder.encode(batch)[0] for batch in batches]
        store = StoredModel(dtype, len(payload), sum(len(data) for data in coded),
                            [8 * len(data) for data in coded], time.perf_counter() - started, payload)
        result.stores[dtype] = store
        if dtype == "float16":
            started = time.perf_counter()
            decoder = OnlineAdapter(restore_fine_tuned(bundle, payload, dtype, layout),
                                    _frozen_config(config))
            decoded = [decoder.decode(data, batch.shape) for data, batch in zip(coded, batches)]
            result.decode_seconds = time.perf_counter() - started
            result.decoded_exactly = all(np.array_equal(a, b) for a, b in zip(decoded, batches))
    return result
