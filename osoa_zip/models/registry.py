"""Shipped checkpoints: found by stable name, verified by SHA-256, never pickled.

A checkpoint is one safetensors file holding a network per channel count
(``gray.*`` for L, ``rgb.*`` for RGB) plus the integer tables of the exact
core (``tables.*``); its metadata holds the architecture as JSON, whose
``family`` key names the model family (models/protocol.py) that builds the
networks: absent or ``flow`` for the sub-lattice flow (models/idf.py), ``vae``
for the bits-back VAE (models/vae.py).  A family registers itself with
``@register_family`` when its module is imported; this module imports every
family it ships.  The manifest (``models/manifest.json``) maps each name to
its file and hash.
Archives record name and hash, so a decoder loads exactly the weights the
encoder used or refuses with a clear message.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..exact.grid import ENGINES
from ..exact.logistic import LogisticTables
from . import idf, vae  # noqa: F401  (each module registers its family)
from .catalog import (  # noqa: F401  (the torch-free part, re-exported)
    DEFAULT_MODEL,
    MANIFEST,
    ModelError,
    available_models,
    model_dirs,
    recommended_learning_rate,
)
from .protocol import CodingModel, register_family, registered_families

CHANNEL_PREFIXES = {1: "gray", 3: "rgb"}
# The family of a config without a ``family`` key (every flow checkpoint since v1).
LEGACY_FAMILY = "flow"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def family_of(config: dict) -> str:
    """The family a checkpoint config names."""
    return config.get("family", LEGACY_FAMILY)


def families() -> list[str]:
    """The names of the families this version knows (registered with ``@register_family``), sorted."""
    return sorted(registered_families())


def family_class(name: str) -> type[CodingModel]:
    """The class of a family name (models/protocol.py)."""
    try:
        return registered_families()[name]
    except KeyError:
        raise ModelError(f"unknown model family {name!r} (this version knows {', '.join(families())})") from None


@dataclass
class FlowBundle:
    """The networks of one checkpoint, one per channel count, sharing tables."""

    name: str
    sha256: str
    config: dict
    networks: Mapping[int, CodingModel]

    @property
    def family(self) -> str:
        """The family's name (``flow``, ``vae``, ...): archives record it in HEAD."""
        return family_of(self.config)

    @property
    def engine(self) -> dict:
        """The exact engine's record (exact/grid.py ENGINES) its networks run on: archives carry it in HEAD."""
        return ENGINES[int(self.config.get("engine", 1))]

    @property
    def family_class(self) -> type[CodingModel]:
        """The family's class: what it allows the engine (chains, the guard's back-off) and its coders."""
        return family_class(self.family)

    def network(self, channels: int) -> CodingModel:
        try:
            return self.networks[channels]
        except KeyError:
            raise ModelError(f"model {self.name} has no network for {channels}-channel images") from None


# A checkpoint config's key for what one network has of its own: {"gray": {"hidden": 16, ...}}.
NETWORK_OVERRIDES = "networks"


def network_config(config: dict, channels: int) -> dict:
    """The config of the network for ``channels``: the checkpoint's, with that network's own
    values on top (``config["networks"][prefix]``).  Why: one bundle may pair networks of
    different sizes; level -1's model has a small grey network beside the default's colour one,
    because v7's colour network frozen is already fast and its grey one is not."""
    own = config.get(NETWORK_OVERRIDES, {}).get(CHANNEL_PREFIXES[channels], {})
    return {**{key: value for key, value in config.items() if key != NETWORK_OVERRIDES}, **own}


def unknown_config_keys(config: dict, family: type[CodingModel]) -> list[str]:
    """The keys of a checkpoint config (its networks' own values included) that this version's
    ``family`` does not know: a checkpoint that needs them cannot be built here."""
    unknown = set(config) - family.config_keys - {"family", NETWORK_OVERRIDES}
    for prefix, values in config.get(NETWORK_OVERRIDES, {}).items():
        if prefix not in CHANNEL_PREFIXES.values():
            unknown.add(f"{NETWORK_OVERRIDES}.{prefix}")
        unknown |= {f"{NETWORK_OVERRIDES}.{prefix}.{key}" for key in set(values) - family.config_keys}
    return sorted(unknown)


def build_networks(config: dict) -> dict[int, CodingModel]:
    """The networks a config describes, built by its family's ``from_config``."""
    cls = family_class(family_of(config))
    return {channels: cls.from_config(channels, network_config(config, channels)) for channels in CHANNEL_PREFIXES}


def load_model(name: str, expected_sha256: str | None = None) -> FlowBundle:
    """Load and verify a checkpoint; the networks come back in float64 (exact engine)."""
    models = available_models()
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ModelError(f"model {name!r} is not installed (installed: {known})")
    entry = models[name]
    path = Path(entry["directory"]) / entry["file"]
    if not path.is_file():
        raise ModelError(f"model {name!r}: checkpoint {path} is missing (expected SHA-256 {entry['sha256']})")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ModelError(f"model {name!r}: checkpoint {path} has SHA-256 {actual}, "
                         f"manifest expects {entry['sha256']}")
    if expected_sha256 is not None and actual != expected_sha256:
        raise ModelError(f"archive needs model {name!r} with SHA-256 {expected_sha256}, "
                         f"installed one has {actual}")
    return load_checkpoint(path, name=name, sha256=actual)


def load_checkpoint(path: Path, name: str, sha256: str) -> FlowBundle:
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as reader:
        metadata = reader.metadata() or {}
    config = json.loads(metadata["config"])
    family = family_class(family_of(config))
    unknown = unknown_config_keys(config, family)
    if unknown:
        raise ModelError(f"model {name!r} needs architecture features this version lacks: {unknown}")
    tables = LogisticTables.from_tensors({key.split(".", 1)[1]: value for key, value in tensors.items()
                                          if key.startswith("tables.")})

    def build(channels: int) -> CodingModel:
        network = family.from_config(channels, network_config(config, channels))
        prefix = CHANNEL_PREFIXES[channels] + "."
        network.load_state_dict({key[len(prefix):]: value for key, value in tensors.items()
                                 if key.startswith(prefix)})
        network.to(torch.float64)
        network.tables = tables
        return network

    return FlowBundle(name=name, sha256=sha256, config=config, networks=LazyNetworks(CHANNEL_PREFIXES, build))


class LazyNetworks(Mapping):
    """A checkpoint's networks, each built and loaded the first time it is asked for.

    Why: building a network (its convs' grids) and loading its weights is about half of a
    model load, and a folder of grey images never asks for the colour network, nor a folder
    of photos for the grey one.  Segments on other threads may ask at once: one lock
    builds each network once.
    """

    def __init__(self, channels: Mapping[int, str], build: Callable[[int], CodingModel]) -> None:
        self._channels, self._build = tuple(channels), build
        self._built: dict[int, CodingModel] = {}
        self._lock = threading.Lock()

    def __getitem__(self, channels: int) -> CodingModel:
        if channels not in self._channels:
            raise KeyError(channels)
        with self._lock:
            if channels not in self._built:
                self._built[channels] = self._build(channels)
            return self._built[channels]

    def __iter__(self) -> Iterator[int]:
        return iter(self._channels)

    def __len__(self) -> int:
        return len(self._channels)


def save_checkpoint(path: Path, config: dict, networks: dict[int, CodingModel]) -> str:
    """Write weights (float32) and integer tables; return the file's SHA-256."""
    mixture = int(config.get("mixture_components", 1)) > 1
    tensors = {f"tables.{key}": value for key, value in LogisticTables.build(mixture=mixture).items()}
    for channels, network in networks.items():
        for key, value in network.state_dict().items():
            tensors[f"{CHANNEL_PREFIXES[channels]}.{key}"] = value.detach().to(torch.float32).contiguous()
    # One metadata key: safetensors writes several in no fixed order, and the same
    # weights must always give the same file (and SHA-256).
    save_file(tensors, str(path), metadata={"config": json.dumps(config, sort_keys=True)})
    return sha256_file(path)


__all__ = ["CHANNEL_PREFIXES", "DEFAULT_MODEL", "MANIFEST", "NETWORK_OVERRIDES", "CodingModel", "FlowBundle",
           "ModelError", "available_models", "build_networks", "families", "family_class", "family_of",
           "load_checkpoint", "load_model", "model_dirs", "network_config", "recommended_learning_rate",
           "register_family", "save_checkpoint", "sha256_file"]
