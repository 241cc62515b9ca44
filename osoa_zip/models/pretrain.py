"""`osoa-zip pretrain`: train a base model on a folder of images and register it.

Training is float32 with quantisation-aware rounding (models/training.py);
the export is a safetensors checkpoint plus a manifest entry (name, family,
SHA-256, parameters, recipe, validation bpsp) beside it, which the exact
engine loads like any shipped model (put the folder in $OSOA_ZIP_MODELS).
Runs checkpoint to NAME.run/ every few hundred steps and resume from there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from .registry import (
    CHANNEL_PREFIXES,
    MANIFEST,
    ModelError,
    available_models,
    build_networks,
    families,
    family_class,
    load_model,
)
from .training import evaluate, export, spread_mixture, train, warm_start

IMAGE_SUFFIXES = (".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class PretrainSettings:
    family: str = "flow"
    steps: int = 4000
    tile_size: int = 32
    crops_per_image: int = 64
    batch_size: int = 32
    learning_rate: float = 2e-3
    hidden: int | None = None
    mixture_components: int | None = None
    seed: int = 0


def collect_tiles(data: Path, tile_size: int, crops_per_image: int, seed: int) -> dict[int, np.ndarray]:
    """Random tile_size crops of every image below ``data`` (or the tiles of an N x H x W x C .npy),
    by channel count: 1 for gray, 3 for colour (alpha is dropped)."""
    if data.suffix == ".npy":
        tiles = np.load(data)
        if tiles.ndim != 4 or tiles.dtype != np.uint8 or tiles.shape[3] not in CHANNEL_PREFIXES:
            raise ValueError(f"{data}: expected uint8 tiles N x H x W x C with C in (1, 3)")
        return {tiles.shape[3]: tiles}
    rng = np.random.default_rng(seed)
    found: dict[int, list[np.ndarray]] = {1: [], 3: []}
    for path in sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as image:
                gray = image.mode in ("1", "L", "LA", "I", "I;16")
                pixels = np.asarray(image.convert("L" if gray else "RGB"))
        except Exception:  # noqa: BLE001 — an unreadable file is simply not training data
            continue
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        height, width = pixels.shape[:2]
        if height < tile_size or width < tile_size:
            continue
        for _ in range(crops_per_image):
            top, left = rng.integers(0, height - tile_size + 1), rng.integers(0, width - tile_size + 1)
            found[pixels.shape[2]].append(pixels[top:top + tile_size, left:left + tile_size])
    return {channels: np.stack(tiles) for channels, tiles in found.items() if tiles}


def pretrain(data: Path, output: Path, settings: PretrainSettings, init_from: str | None = None,
             description: str = "", log: Callable[[str], None] = print) -> str:
    """Train (or resume), export ``output`` (.safetensors) and register it; return its SHA-256."""
    if settings.family not in families():
        raise ValueError(f"--family {settings.family}: this version knows {', '.join(families())}")
    output = output.with_suffix(".safetensors")
    name = output.stem
    if name in available_models():
        raise ModelError(f"a model named {name!r} exists already; shipped models are never changed "
                         f"(choose a new name)")
    tiles = collect_tiles(Path(data), settings.tile_size, settings.crops_per_image, settings.seed)
    if not tiles:
        raise ValueError(f"{data}: no images of at least {settings.tile_size}x{settings.tile_size} pixels")
    start = load_model(init_from) if init_from else None
    if start is not None and start.family != settings.family:
        raise ModelError(f"{init_from} is a {start.family} model, not {settings.family}")
    # A new model gets its family's default architecture (models/protocol.py); fine-tuning
    # (--init-from) keeps the starting model's own, except that --mixture-components may
    # turn a single-logistic model into a mixture (as v6 was made from v5), warm-started
    # at its own likelihood.
    config = dict(start.config if start is not None else family_class(settings.family).default_config)
    if settings.hidden and settings.hidden != config["hidden"]:
        if start is not None:
            raise ValueError(f"--hidden {settings.hidden}: {init_from} has {config['hidden']} hidden channels "
                             f"(fine-tuning keeps its architecture)")
        config["hidden"] = settings.hidden
    components = settings.mixture_components
    if components and components != config.get("mixture_components", 1):
        if start is not None and config.get("mixture_components", 1) != 1:
            raise ValueError(f"--mixture-components {components}: {init_from} is a mixture of "
                             f"{config['mixture_components']} already")
        config.pop("mixture_components", None)
        if components > 1:
            config["mixture_components"] = components
    run = output.with_suffix(".run")
    run.mkdir(parents=True, exist_ok=True)
    if (run / "config.json").is_file() and json.loads((run / "config.json").read_text()) != config:
        raise ValueError(f"{run} holds a run with another architecture; remove it or pick another name")
    (run / "config.json").write_text(json.dumps(config))
    torch.manual_seed(settings.seed)
    networks = build_networks(config)
    if start is not None:
        for channels, network in networks.items():
            state = {k: v.float() for k, v in start.network(channels).state_dict().items()}
            spread_mixture(network, warm_start(network, state), seed=settings.seed)
    networks = {channels: network.float() for channels, network in networks.items()}
    stats = {}
    for channels, network in networks.items():
        if channels not in tiles:
            log(f"no {CHANNEL_PREFIXES[channels]} images: that network keeps its "
                f"{'starting' if init_from else 'untrained'} weights")
            continue
        stats[CHANNEL_PREFIXES[channels]] = _train_one(network, tiles[channels], run / CHANNEL_PREFIXES[channels],
                                                       settings, log)
    extra = {"training": {"recipe": f"osoa-zip pretrain {settings} init_from={init_from}", "data": str(data),
                          "tiles": {CHANNEL_PREFIXES[c]: len(t) for c, t in tiles.items()}},
             "validation_bpsp": {prefix: s["valid_bpsp"] for prefix, s in stats.items()}}
    return export(output, config, networks, output.parent / MANIFEST, name,
                  description or f"pretrained by osoa-zip pretrain on {data}", extra)


def _train_one(network, tiles: np.ndarray, stem: Path, settings: PretrainSettings, log) -> dict:
    """Train one network with checkpoints (stem.safetensors / stem.json) and resume."""
    weights, progress = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    rng = np.random.default_rng(1234)
    held_out = tiles[rng.choice(len(tiles), min(256, max(1, len(tiles) // 10)), replace=False)]
    done = 0
    if weights.is_file():
        network.load_state_dict(load_file(str(weights)))
        done = json.loads(progress.read_text())["step"]

    def checkpoint(step: int) -> None:
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
        progress.write_text(json.dumps({"step": done + step, "valid_bpsp": evaluate(network, held_out)}))

    if settings.steps > done:
        log(f"training {stem.name} from step {done} to {settings.steps} on {len(tiles)} tiles")
        train(network, tiles, settings.steps - done, batch_size=settings.batch_size, lr=settings.learning_rate,
              seed=settings.seed + done, log=log, on_checkpoint=checkpoint,
              checkpoint_every=min(500, settings.steps - done), validation=held_out)
    elif not progress.is_file():
        checkpoint(0)
    return json.loads(progress.read_text())
