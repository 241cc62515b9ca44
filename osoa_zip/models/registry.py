"""Shipped checkpoints: found by stable name, verified by SHA-256, never pickled.

A checkpoint is one safetensors file holding a network per channel count
(``gray.*`` for L, ``rgb.*`` for RGB) plus the integer tables of the exact
core (``tables.*``); its metadata holds the architecture as JSON, whose
``family`` key names the kind of network: absent or ``flow`` for the
sub-lattice flow (models/idf.py), ``vae`` for the bits-back VAE
(models/vae.py).  The manifest (``models/manifest.json``) maps each name to
its file and hash.
Archives record name and hash, so a decoder loads exactly the weights the
encoder used or refuses with a clear message.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..exact.logistic import LogisticTables
from .catalog import (  # noqa: F401  (the torch-free part, re-exported)
    DEFAULT_MODEL,
    MANIFEST,
    ModelError,
    available_models,
    model_dirs,
    recommended_learning_rate,
)
from .idf import SubLatticeFlow
from .vae import ConvVAE

CHANNEL_PREFIXES = {1: "gray", 3: "rgb"}
# Architecture keys this version understands; a checkpoint naming another one
# was made by a newer version and is refused rather than misread.
CONFIG_KEYS = {"hidden", "depth", "levels", "channel_coupling", "mean_remainder", "family", "latent_channels",
               "deep_levels", "edge_bins", "mixture_components", "top_latent_channels"}
FAMILIES = ("flow", "vae")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FlowBundle:
    """The networks of one checkpoint, one per channel count, sharing tables."""

    name: str
    sha256: str
    config: dict
    networks: dict[int, SubLatticeFlow | ConvVAE]

    @property
    def family(self) -> str:
        """``flow`` or ``vae``: how batches are coded (archives record it in HEAD)."""
        return self.config.get("family", "flow")

    def network(self, channels: int) -> SubLatticeFlow | ConvVAE:
        try:
            return self.networks[channels]
        except KeyError:
            raise ModelError(f"model {self.name} has no network for {channels}-channel images") from None


def build_networks(config: dict) -> dict[int, SubLatticeFlow | ConvVAE]:
    """The networks a config describes.

    ``family: vae`` gives the bits-back VAE (``hidden``, ``latent_channels``,
    ``mixture_components`` for a mixture likelihood with edge bins, and
    ``top_latent_channels`` for a second, top latent level).

    ``channel_coupling`` and ``mean_remainder`` (v2) add cross-channel
    conditioning to the RGB network (the gray one is unaffected);
    ``deep_levels`` (v3) takes the sub-lattice levels down to 1 x 1;
    ``edge_bins`` (v4) gives the pixel range's tails to the edge bins;
    ``mixture_components`` (v6) makes every sub-lattice factor a mixture of
    that many logistics.  Configs
    without them (v1, the tiny test model) build exactly the networks they
    always did.
    """
    family = config.get("family", "flow")
    if family == "vae":
        return {channels: ConvVAE(channels, config["hidden"], config["latent_channels"],
                                  mixture_components=int(config.get("mixture_components", 1)),
                                  top_latent_channels=int(config.get("top_latent_channels", 0)))
                for channels in CHANNEL_PREFIXES}
    if family != "flow":
        raise ModelError(f"unknown model family {family!r} (this version knows {', '.join(FAMILIES)})")
    return {channels: SubLatticeFlow(channels, config["hidden"], config["depth"], config["levels"],
                                     channel_coupling=bool(config.get("channel_coupling", False)),
                                     mean_remainder=bool(config.get("mean_remainder", False)),
                                     deep_levels=bool(config.get("deep_levels", False)),
                                     edge_bins=bool(config.get("edge_bins", False)),
                                     mixture_components=int(config.get("mixture_components", 1)))
            for channels in CHANNEL_PREFIXES}


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
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ModelError(f"model {name!r} needs architecture features this version lacks: {sorted(unknown)}")
    tables = LogisticTables.from_tensors({key.split(".", 1)[1]: value for key, value in tensors.items()
                                          if key.startswith("tables.")})
    networks = build_networks(config)
    for channels, network in networks.items():
        prefix = CHANNEL_PREFIXES[channels] + "."
        state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        network.load_state_dict(state)
        network.to(torch.float64)
        network.tables = tables
    return FlowBundle(name=name, sha256=sha256, config=config, networks=networks)


def save_checkpoint(path: Path, config: dict, networks: dict[int, SubLatticeFlow]) -> str:
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
