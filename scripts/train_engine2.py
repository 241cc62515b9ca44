"""Quantisation-aware training of a flow for engine 2, starting from an engine-1 checkpoint.

  python scripts/train_engine2.py train --channels 3 --init-from idf-sublattice-v6 --run runs/v7 \
      --data data/train_rgb64.npy --batch-size 16 --data data/train_rgb32.npy --batch-size 32 --mix 0.5,0.5 \
      --steps 3000 --lr 1e-4
  python scripts/train_engine2.py train --channels 1 --init-from idf-sublattice-v6 --run runs/v7 \
      --data data/train_gray32.npy --batch-size 32 --data data/train_fashion28.npy --batch-size 32 --mix 0.4,0.6 \
      --steps 3000 --lr 1e-4
  python scripts/train_engine2.py export --run runs/v7 --name idf-sublattice-v7 --description ...
  python scripts/train_engine2.py export --run runs/fast16/e2 --reuse rgb=idf-sublattice-v7 --name idf-fast-v1 ...
      # level -1's model: a small grey network beside v7's colour one (scripts/train_fast_grey.sh)

``train`` converts the shipped engine-1 network to engine 2 (models/quantise.py:
weights rounded onto their integer grids, activation scales from min/max on
--calibration training tiles, one bit finer), then fine-tunes it with Adam on
a cosine schedule *through engine 2's own integer forward and backward pass*
(exact/intlayers.py), in float32 outside the convolutions as pretraining is.
Every --checkpoint-every steps the whole network state (weights and scale
buffers) goes to RUN/<rgb|gray>.safetensors with the step in RUN/<rgb|gray>.json;
running the same command again resumes from there (a fresh cosine over the
remaining steps).  ``export`` writes the checkpoint (config = the source's
plus ``engine: 2``) into models/ and registers it in the manifest.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from osoa_zip.models.quantise import to_engine2  # noqa: E402
from osoa_zip.models.registry import (  # noqa: E402
    CHANNEL_PREFIXES,
    MANIFEST,
    NETWORK_OVERRIDES,
    build_networks,
    load_model,
    network_config,
)
from osoa_zip.models.training import evaluate, export, train  # noqa: E402


def _tiles(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _held_out(tiles: np.ndarray, count: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The last ``count`` tiles for validation, the rest for training (as pretrain.py splits)."""
    return np.asarray(tiles[:-count]), np.asarray(tiles[-count:])


def command_train(args) -> None:
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    prefix = CHANNEL_PREFIXES[args.channels]
    state_path, progress_path = run / f"{prefix}.safetensors", run / f"{prefix}.json"
    bundle = load_model(args.init_from)
    config = dict(bundle.config, engine=2)
    sources, held = zip(*(_held_out(_tiles(path)) for path in args.data))
    if state_path.is_file():
        network = build_networks(config)[args.channels]
        network.load_state_dict(load_file(str(state_path)))
        done = json.loads(progress_path.read_text())["step"]
        print(f"resuming {state_path} at step {done}", flush=True)
    else:
        side = min(min(s.shape[1:3]) for s in sources)  # one batch shape: crops of the smallest tiles
        calibration = np.concatenate([s[np.linspace(0, len(s) - 1, args.calibration // len(sources)).astype(int)]
                                      .transpose(0, 3, 1, 2)[:, :, :side, :side] for s in sources])
        network = to_engine2(bundle.network(args.channels), torch.from_numpy(np.ascontiguousarray(calibration)),
                             clip_bits=args.clip_bits)
        done = 0
    network = network.float()
    network.tables = bundle.network(args.channels).tables
    validation = {Path(path).stem: tiles for path, tiles in zip(args.data, held)}
    print("start " + "  ".join(f"{label} {evaluate(network, tiles):.4f}" for label, tiles in validation.items())
          + " bpsp (held-out training tiles, engine 2)", flush=True)
    remaining = args.steps - done
    if remaining <= 0:
        return
    started = time.time()

    def checkpoint(step: int) -> None:
        state = {key: value.detach().contiguous() for key, value in network.state_dict().items()}
        save_file(state, str(state_path))
        progress_path.write_text(json.dumps({"step": done + step, "seconds": time.time() - started,
                                             "init_from": args.init_from, "config": config}))

    sizes = args.batch_size if len(args.batch_size) == len(sources) else args.batch_size[:1] * len(sources)
    mix = [float(v) for v in args.mix.split(",")] if args.mix else None
    train(network, list(sources), remaining, batch_size=sizes, lr=args.lr, seed=args.seed + done,
          log=lambda message: print(message, flush=True), on_checkpoint=checkpoint,
          checkpoint_every=args.checkpoint_every, validation=validation, mix=mix)


def command_export(args) -> None:
    """Both networks from the run, or one reused from an installed model (--reuse rgb=MODEL,
    weight for weight).  Networks of different shapes share one config: the colour network's,
    with the grey one's differences as its own values (registry.network_config)."""
    run = Path(args.run)
    reused = dict(item.split("=", 1) for item in args.reuse)
    networks, configs = {}, {}
    for channels, prefix in CHANNEL_PREFIXES.items():
        if prefix in reused:
            bundle = load_model(reused[prefix])
            configs[prefix] = network_config(bundle.config, channels)
            networks[channels] = bundle.network(channels)
            continue
        progress = json.loads((run / f"{prefix}.json").read_text())
        configs[prefix] = progress["config"]
        network = build_networks(progress["config"])[channels]
        network.load_state_dict(load_file(str(run / f"{prefix}.safetensors")))
        networks[channels] = network
    config = dict(configs["rgb"])
    own = {key: value for key, value in configs["gray"].items() if config.get(key) != value}
    if own:
        config[NETWORK_OVERRIDES] = {"gray": own}
    models = Path(args.models_dir)
    digest = export(models / f"{args.name}.safetensors", config, networks, models / MANIFEST, args.name,
                    args.description, {"training": {"recipe": args.recipe}})
    print(f"{args.name}: {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    trainer = commands.add_parser("train")
    trainer.add_argument("--channels", type=int, choices=(1, 3), required=True)
    trainer.add_argument("--init-from", default="idf-sublattice-v6", help="an installed engine-1 flow")
    trainer.add_argument("--run", required=True)
    trainer.add_argument("--data", action="append", required=True, help="N x H x W x C uint8 tiles (.npy)")
    trainer.add_argument("--batch-size", type=int, action="append", default=None)
    trainer.add_argument("--mix", default=None, help="weights of the --data sources, e.g. 0.5,0.5")
    trainer.add_argument("--steps", type=int, default=3000)
    trainer.add_argument("--lr", type=float, default=1e-4)
    trainer.add_argument("--calibration", type=int, default=64, help="training tiles for the activation scales")
    trainer.add_argument("--clip-bits", type=int, default=1)
    trainer.add_argument("--checkpoint-every", type=int, default=100)
    trainer.add_argument("--threads", type=int, default=1)
    trainer.add_argument("--seed", type=int, default=0)
    exporter = commands.add_parser("export")
    exporter.add_argument("--run", required=True)
    exporter.add_argument("--name", required=True)
    exporter.add_argument("--description", required=True)
    exporter.add_argument("--recipe", default="")
    exporter.add_argument("--reuse", action="append", default=[], metavar="PREFIX=MODEL",
                          help="take that network (gray or rgb) from an installed model, e.g. rgb=idf-sublattice-v7")
    exporter.add_argument("--models-dir", default=str(REPO / "models"),
                          help="where the checkpoint and its manifest entry go (a candidate: any folder, "
                               "used through $OSOA_ZIP_MODELS)")
    args = parser.parse_args()
    if args.command == "train":
        args.batch_size = args.batch_size or [32]
        command_train(args)
    else:
        command_export(args)


if __name__ == "__main__":
    main()
