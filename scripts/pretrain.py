"""Pretrain the shipped flows and export them into models/.

  python scripts/pretrain.py train --channels 3 --data data/train_rgb32.npy --steps 20000 --run runs/v1
  python scripts/pretrain.py train --channels 1 --data data/train_gray32.npy --steps 20000 --run runs/v1
  python scripts/pretrain.py export --run runs/v1 --name idf-sublattice-v1

`train` checkpoints to RUN/<gray|rgb>.safetensors every few hundred steps and
resumes from there, so an interrupted run loses little.  The corpus comes from
scripts/build_corpus.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from osoa_zip.models.registry import CHANNEL_PREFIXES, build_networks
from osoa_zip.models.training import evaluate, export, train

REPO = Path(__file__).resolve().parents[1]


def command_train(args) -> None:
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    config = {"hidden": args.hidden, "depth": args.depth, "levels": args.levels}
    (run / "config.json").write_text(json.dumps(config))
    prefix = CHANNEL_PREFIXES[args.channels]
    network = build_networks(config)[args.channels]
    weights, progress = run / f"{prefix}.safetensors", run / f"{prefix}.json"
    done = 0
    if weights.is_file():
        network.load_state_dict(load_file(str(weights)))
        done = json.loads(progress.read_text())["step"]
    tiles = np.load(args.data, mmap_mode="r")
    rng = np.random.default_rng(1234)
    held_out = np.asarray(tiles[rng.choice(len(tiles), 512, replace=False)])
    log = open(run / f"{prefix}.log", "a")

    def say(message: str) -> None:
        print(message, flush=True)
        log.write(message + "\n")
        log.flush()

    def checkpoint(step: int) -> None:
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
        progress.write_text(json.dumps({"step": done + step, "valid_bpsp": evaluate(network, held_out)}))

    remaining = args.steps - done
    if remaining > 0:
        say(f"training {prefix} from step {done} for {remaining} steps on {len(tiles)} tiles")
        train(network, np.asarray(tiles), remaining, batch_size=args.batch_size, lr=args.lr, seed=done,
              log=say, on_checkpoint=checkpoint, validation=held_out)


def command_export(args) -> None:
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    networks = build_networks(config)
    stats = {}
    for channels, network in networks.items():
        prefix = CHANNEL_PREFIXES[channels]
        network.load_state_dict(load_file(str(run / f"{prefix}.safetensors")))
        stats[prefix] = json.loads((run / f"{prefix}.json").read_text())
    models = REPO / "models"
    digest = export(models / f"{args.name}.safetensors", config, networks, models / "manifest.json",
                    args.name, args.description,
                    {"training": {"recipe": f"scripts/pretrain.py, {stats}", "data": args.data_note}})
    print(args.name, digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--channels", type=int, choices=[1, 3], required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--run", required=True)
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--hidden", type=int, default=48)
    t.add_argument("--depth", type=int, default=3)
    t.add_argument("--levels", type=int, default=3)
    t.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("export")
    e.add_argument("--run", required=True)
    e.add_argument("--name", required=True)
    e.add_argument("--description", default="")
    e.add_argument("--data-note", default="scripts/build_corpus.py training split (see data/split.json)")
    args = parser.parse_args()
    {"train": command_train, "export": command_export}[args.command](args)


if __name__ == "__main__":
    main()
