"""Pretraining of the flows and VAEs: float32, quantization-aware, checkpointing as it goes.

Training is float32 for speed; the forward pass already uses the grids of
the exact core (weights rounded, activations floored, straight-through
gradients), so the exported weights behave the same in the float64 engine.
Randomness here (crops, flips, init, the VAE's latent samples) never reaches
a decoder.  Both families train on ``network.nll`` (the VAE's is its
negative ELBO).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..exact.logistic import LogisticTables
from .mixture import extra_outputs
from .registry import (
    CHANNEL_PREFIXES,
    CodingModel,
    build_networks,
    family_class,
    family_of,
    save_checkpoint,
)


def batches(tiles: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Endless random batches (N,C,H,W float32) with random flips."""
    while True:
        picked = tiles[rng.integers(0, len(tiles), batch_size)]
        if rng.random() < 0.5:
            picked = picked[:, :, ::-1]
        yield torch.from_numpy(np.ascontiguousarray(picked.transpose(0, 3, 1, 2))).float()


def mixed_batches(sources: list[np.ndarray], batch_sizes: list[int], weights: list[float],
                  rng: np.random.Generator):
    """Endless batches from several tile arrays (e.g. 32x32 photo crops and 28x28 Fashion-MNIST).

    A batch has one shape, so each step draws one source (with probability
    proportional to its weight) and a whole batch from it, with its own batch
    size; with one source this is ``batches``, draw for draw.
    """
    if len(sources) == 1:
        yield from batches(sources[0], batch_sizes[0], rng)
        return
    p = np.asarray(weights, np.float64) / np.sum(weights)
    streams = [batches(tiles, size, rng) for tiles, size in zip(sources, batch_sizes)]
    while True:
        yield next(streams[int(rng.choice(len(streams), p=p))])


def evaluate(network: CodingModel, tiles: np.ndarray, batch_size: int = 64) -> float:
    """Bits per sub-pixel of the float model on held-out tiles."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(tiles), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(tiles[start:start + batch_size].transpose(0, 3, 1, 2))).float()
            total += float(network.nll(x))
    return total / tiles.size


def train(network: CodingModel, tiles: np.ndarray | list[np.ndarray], steps: int,
          batch_size: int | list[int] = 32, lr: float = 2e-3, seed: int = 0, log=print, on_checkpoint=None,
          checkpoint_every: int = 500, validation: np.ndarray | dict[str, np.ndarray] | None = None,
          mix: list[float] | None = None) -> CodingModel:
    """Adam with a cosine schedule; ``on_checkpoint(step)`` runs every checkpoint_every steps.

    ``tiles`` may be a list of arrays of different tile shapes, drawn per batch
    with weights ``mix`` (default equal) and per-source ``batch_size`` (a list,
    or one size for all); ``validation`` may be {label: tiles}, each reported.
    """
    sources = tiles if isinstance(tiles, list) else [tiles]
    sizes = batch_size if isinstance(batch_size, list) else [batch_size] * len(sources)
    weights = mix if mix is not None else [1.0] * len(sources)
    if not len(sources) == len(sizes) == len(weights):
        raise ValueError(f"{len(sources)} tile sources, {len(sizes)} batch sizes, {len(weights)} weights")
    rng = np.random.default_rng(seed)
    network.tables = LogisticTables.from_tensors(LogisticTables.build(mixture=True))
    network.train()
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    started = time.time()
    running = None
    for step, x in zip(range(1, steps + 1), mixed_batches(sources, sizes, weights, rng)):
        optimiser.zero_grad()
        loss = network.nll(x) / x.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % checkpoint_every == 0 or step == steps:
            message = f"step {step}/{steps} train {running:.3f} bpsp  {time.time() - started:.0f}s"
            if isinstance(validation, dict):
                message += "  valid " + "  ".join(f"{label} {evaluate(network, held):.3f}"
                                                  for label, held in validation.items()) + " bpsp"
            elif validation is not None:
                message += f"  valid {evaluate(network, validation):.3f} bpsp"
            log(message)
            if on_checkpoint is not None:
                on_checkpoint(step)
    return network


def export(path: Path, config: dict, networks: dict[int, CodingModel], manifest: Path, name: str,
           description: str, extra: dict) -> str:
    """Write the checkpoint and (re)register it in the manifest; return its hash."""
    digest = save_checkpoint(path, config, networks)
    entries = json.loads(manifest.read_text()) if manifest.is_file() else {"models": {}}
    family = family_of(config)
    entries["models"][name] = {
        "file": path.name, "sha256": digest, "family": family, "architecture": family_class(family).architecture,
        "config": config, "description": description, "engine": int(config.get("engine", 1)),
        "parameters": sum(p.numel() for n in networks.values() for p in n.parameters()), **extra}
    manifest.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return digest


@torch.no_grad()
def warm_start(network: CodingModel, state: dict[str, torch.Tensor], new_prefixes: tuple[str, ...] = ()
               ) -> list[str]:
    """Load weights of a smaller-output ancestor (e.g. v1 into v2); return the widened keys.

    Tensors of the same shape are copied.  A tensor that is wider along its
    first (output) dimension, as the last conv of each coupling is when v2
    adds cross-channel coefficients, takes the ancestor's rows and zeros for
    the new ones.  Zero coefficients make ``channel_coupling`` compute what
    v1 did (same offsets, means and scales), so training starts from v1's
    likelihood; ``mean_remainder`` then only adds the rounding remainder of
    each translation to the mean.  Parameters whose names start with one of
    ``new_prefixes`` (modules the ancestor lacks, e.g. a VAE's top latent
    level) keep their initialisation.
    """
    own = network.state_dict()
    missing = sorted(key for key in set(own) - set(state) if not key.startswith(new_prefixes))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"warm start: missing {missing}, unexpected {unexpected}")
    widened = []
    for key, target in own.items():
        if key not in state:
            continue  # a new module's parameter (new_prefixes)
        source = state[key].to(target.dtype)
        if source.shape == target.shape:
            target.copy_(source)
        elif source.shape[1:] == target.shape[1:] and source.shape[0] < target.shape[0]:
            target.zero_()
            target[:source.shape[0]] = source
            widened.append(key)
        else:
            raise ValueError(f"warm start: {key} has shape {tuple(source.shape)}, need {tuple(target.shape)}")
    return widened


# Initial (mean shift, log-scale shift, logit) of extra mixture components when a
# single-logistic checkpoint warm-starts a mixture: a wide outlier component and a
# narrow one, each weighing e**-2 of component 0, so that they start apart.
MIXTURE_START = ((0.0, 1.0, -2.0), (0.0, -0.5, -2.0), (0.0, 2.0, -3.0))


@torch.no_grad()
def spread_mixture(network, widened: list[str], seed: int = 0) -> int:
    """Give the widened output rows of a mixture network distinct starting components.

    ``warm_start`` leaves the rows it appended zero, which makes every extra
    component a copy of component 0 (the same likelihood, but the copies would
    get the same gradients forever).  Their biases are set from MIXTURE_START
    and their weights get small random values.  The layers are the family's
    ``mixture_layers`` (the flow: every coupling's last layer; the VAE: the
    generative network's last layer).  Returns the number of layers changed.
    """
    if network.components == 1:
        return 0
    layers = network.mixture_layers()
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    for conv, predicted in layers:
        if f"{_name_of(network, conv)}.bias" not in widened:
            continue
        first = conv.bias.shape[0] - extra_outputs(network.components) * predicted
        for k in range(network.components - 1):
            for j, value in enumerate(MIXTURE_START[k % len(MIXTURE_START)]):
                conv.bias[first + (3 * k + j) * predicted:first + (3 * k + j + 1) * predicted] = value
        noise = torch.randn(conv.weight[first:].shape, generator=generator) * 1e-3
        conv.weight[first:] = noise.to(conv.weight.dtype)
        changed += 1
    return changed


def _name_of(network: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, candidate in network.named_modules() if candidate is module)


__all__ = ["train", "evaluate", "export", "build_networks", "CHANNEL_PREFIXES", "warm_start",
           "spread_mixture"]
