"""Pretrain the shipped flows and export them into models/.

  python scripts/pretrain.py train --channels 3 --data data/train_rgb32.npy --steps 20000 --run runs/v1
  python scripts/pretrain.py train --channels 1 --data data/train_gray32.npy --steps 20000 --run runs/v1
  python scripts/pretrain.py export --run runs/v1 --name idf-sublattice-v1

v2 (cross-channel conditioning for RGB, warm-started from v1; gray reused from v1):

  python scripts/pretrain.py train --channels 3 --data data/train_rgb32.npy --steps 14000 --run runs/v2 \
      --channel-coupling --mean-remainder --init-from runs/v1/rgb.safetensors
  python scripts/pretrain.py export --run runs/v2 --reuse gray=runs/v1 --name idf-sublattice-v2

v3 (v2's architecture plus deep levels, --deep-levels: the sub-lattice levels go on down to 1x1,
adding no parameters; both networks warm-started from v2's weights, read straight out of the
shipped checkpoint; RGB on 64x64 and 32x32 photo crops, gray on gray photo crops mixed with the
Fashion-MNIST *training* split, whose test split stays evaluation only):

  python scripts/build_corpus.py --out data/   # train_rgb64.npy, train_fashion28.npy too
  python scripts/pretrain.py train --channels 3 --data data/train_rgb64.npy --batch-size 16 \
      --data data/train_rgb32.npy --batch-size 32 --mix 0.6,0.4 --steps 7000 --lr 5e-4 --run runs/v3rgb \
      --channel-coupling --mean-remainder --init-from models/idf-sublattice-v2.safetensors
  python scripts/pretrain.py train --channels 1 --data data/train_gray32.npy --batch-size 32 \
      --data data/train_fashion28.npy --batch-size 32 --mix 0.5,0.5 --steps 9000 --lr 1e-3 --run runs/v3gray \
      --init-from models/idf-sublattice-v2.safetensors
  python scripts/pretrain.py train --channels 3 --data data/train_rgb64.npy --batch-size 16 \
      --data data/train_rgb32.npy --batch-size 32 --mix 0.5,0.5 --steps 3000 --lr 3e-4 --run runs/v3deep \
      --channel-coupling --mean-remainder --deep-levels --init-from runs/v3rgb/rgb.safetensors
  python scripts/pretrain.py train --channels 1 --data data/train_gray32.npy --batch-size 32 \
      --data data/train_fashion28.npy --batch-size 32 --mix 0.5,0.5 --steps 3000 --lr 5e-4 --run runs/v3deep \
      --channel-coupling --mean-remainder --deep-levels --init-from runs/v3gray/gray.safetensors
  (the same with --mix 0.3,0.7 --steps 5000: resumes runs/v3deep's gray network for 2000 more steps)
  python scripts/pretrain.py export --run runs/v3deep --name idf-sublattice-v3 \
      --description ... --recipe-note ... --data-note ...   # as in models/manifest.json

  As shipped, the deep RGB run started from runs/v3rgb's step-5000 checkpoint (copied while that
  run went on); with several --data, each step draws one source by the --mix weights and a whole
  batch of that source's --batch-size (a batch has one tile shape); a resume starts a fresh cosine
  over the remaining steps.  Leaning the gray mix towards Fashion-MNIST costs gray photo tiles a
  little (eval gray32 +0.7% against v2) for much on Fashion-MNIST (-14%).

v4 (v3 plus edge bins, --edge-bins: the logistic tails beyond [0, 255] go to the bins at 0 and
255; no new parameters, so both networks warm-start from v3's shipped weights).  Gray, on the
corpus of 26 training photos (build_corpus.py before commit ef99c47):

  python scripts/pretrain.py train --channels 1 --data data/train_gray32.npy --batch-size 32 \
      --data data/train_fashion28.npy --batch-size 32 --mix 0.3,0.7 --steps 4000 --lr 5e-4 --run runs/v4 \
      --channel-coupling --mean-remainder --deep-levels --edge-bins --init-from models/idf-sublattice-v3.safetensors
  (the same without --init-from and with --steps 24000: resumes for 20000 more steps)

RGB: 3000 steps the same way on 26 photos (--data data/train_rgb64.npy --batch-size 16 --data
data/train_rgb32.npy --batch-size 32 --mix 0.5,0.5 --lr 3e-4), resumed towards 15000 and stopped
at its step-7500 checkpoint; then on the corpus of 47 training photos (build_corpus.py from
commit ef99c47 on, built into data2/):

  python scripts/pretrain.py train --channels 3 --data data2/train_rgb64.npy --batch-size 16 \
      --data data2/train_rgb32.npy --batch-size 32 --mix 0.5,0.5 --steps 8000 --lr 3e-4 --run runs/v4b \
      --channel-coupling --mean-remainder --deep-levels --edge-bins --init-from runs/v4/rgb.safetensors
  python scripts/pretrain.py export --run runs/v4 --reuse rgb=runs/v4b --name idf-sublattice-v4 ...

  Continuing on the same 26 photos made the evaluation tiles worse (float NLL, tiles64: 2.4034
  after 3000 steps, 2.4125 at step 7500); the 47 photos made them better (2.367 at step 5500).

v5 (v4's architecture and weights, trained on: both networks on the 47-photo corpus in data2/,
grey with more photo tiles in its mix; 1 thread each, side by side, 28 and 12 minutes):

  FLAGS="--channel-coupling --mean-remainder --deep-levels --edge-bins \
         --init-from models/idf-sublattice-v4.safetensors --threads 1"
  python scripts/pretrain.py train --channels 3 --data data2/train_rgb64.npy --batch-size 16 \
      --data data2/train_rgb32.npy --batch-size 32 --mix 0.5,0.5 --steps 18000 --lr 2e-4 --run runs/v5 $FLAGS
  python scripts/pretrain.py train --channels 1 --data data2/train_gray32.npy --batch-size 32 \
      --data data2/train_fashion28.npy --batch-size 32 --mix 0.4,0.6 --steps 16000 --lr 3e-4 --run runs/v5 $FLAGS
  python scripts/pretrain.py export --run runs/v5 --name idf-sublattice-v5 ...   # as in models/manifest.json

v6 (v5 plus mixtures of three logistics): the recipe is in models/manifest.json.

Tried after v6, not shipped (release 1.5): v6's RGB network trained 18000 more steps
(3069 s on 2 threads) with 128x128 crops in its mix, grey network unchanged:

  python scripts/build_corpus.py --out data2 --large-crops    # data2/train_rgb128.npy
  python scripts/pretrain.py train --channels 3 --data data2/train_rgb64.npy --batch-size 16 \
      --data data2/train_rgb32.npy --batch-size 32 --data data2/train_rgb128.npy --batch-size 4 \
      --mix 0.35,0.3,0.35 --steps 18000 --lr 2e-4 --run runs/v7 --channel-coupling --mean-remainder \
      --deep-levels --edge-bins --mixture-components 3 --init-from models/idf-sublattice-v6.safetensors --threads 2

  Held-out crops (float NLL): rgb64 2.624 -> 2.616, rgb32 2.643 -> 2.637, rgb128 2.515.
  Whole archives against v6 (bytes, adapted / frozen): tiles32 -0.12% / -0.27%, tiles64
  -0.22% / -0.39%, photos768 -0.37% / -0.40%: too little for a new shipped checkpoint.

VAE (bits-back, osoa_zip/models/vae.py):

  python scripts/pretrain.py train --family vae --hidden 48 --latent-channels 16 --channels 3 \
      --data data/train_rgb32.npy --steps 12000 --run runs/vae1
  python scripts/pretrain.py export --run runs/vae1 --name vae-conv-v1

vae-hier-v3 (release 1.6: v2 plus a top latent level, warm-started from v2; 34 minutes,
one thread per network, side by side):

  FLAGS="--family vae --hidden 48 --latent-channels 16 --mixture-components 3 \
         --top-latent-channels 8 --run runs/hvae3 --init-from models/vae-conv-v2.safetensors --threads 1"
  python scripts/pretrain.py train --channels 3 --data data2/train_rgb32.npy --batch-size 32 \
      --data data2/train_rgb64.npy --batch-size 16 --mix 0.5,0.5 --steps 6000 --lr 5e-4 $FLAGS
  python scripts/pretrain.py train --channels 1 --data data2/train_gray32.npy --batch-size 32 \
      --data data2/train_fashion28.npy --batch-size 32 --mix 0.5,0.5 --steps 4000 --lr 5e-4 $FLAGS
  (then the same two with --steps 14000 / 8000 and --lr 3e-4: they resume from runs/hvae3)
  python scripts/pretrain.py export --run runs/hvae3 --name vae-hier-v3 ...   # as in models/manifest.json

  A control run without --top-latent-channels (runs/vae2ctl, the first 6000 / 4000 steps)
  coded 1.3-3.7% larger than the hierarchical model at the same point (docs/MODELS.md).

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
from osoa_zip.models.training import evaluate, export, spread_mixture, train, warm_start

REPO = Path(__file__).resolve().parents[1]


def initial_weights(path: str, prefix: str) -> dict:
    """Weights to warm-start from: a run's <prefix>.safetensors, or a shipped checkpoint
    (models/*.safetensors, keys ``gray.*``/``rgb.*``/``tables.*``) whose ``prefix`` network is taken."""
    state = load_file(path)
    if any(key.startswith(("gray.", "rgb.")) for key in state):
        state = {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + ".")}
    return state


def command_train(args) -> None:
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    if args.family == "vae":
        config = {"family": "vae", "hidden": args.hidden, "latent_channels": args.latent_channels}
        if args.top_latent_channels:
            config["top_latent_channels"] = args.top_latent_channels
    else:
        config = {"hidden": args.hidden, "depth": args.depth, "levels": args.levels}
    if args.channel_coupling:
        config["channel_coupling"] = True
    if args.mean_remainder:
        config["mean_remainder"] = True
    if args.deep_levels:
        config["deep_levels"] = True
    if args.edge_bins:
        config["edge_bins"] = True
    if args.mixture_components > 1:
        config["mixture_components"] = args.mixture_components
    if (run / "config.json").is_file() and json.loads((run / "config.json").read_text()) != config:
        raise SystemExit(f"{run} was started with another architecture: {(run / 'config.json').read_text()}")
    (run / "config.json").write_text(json.dumps(config))
    prefix = CHANNEL_PREFIXES[args.channels]
    torch.manual_seed(args.seed)
    network = build_networks(config)[args.channels]
    weights, progress = run / f"{prefix}.safetensors", run / f"{prefix}.json"
    done = 0
    if weights.is_file():
        network.load_state_dict(load_file(str(weights)))
        done = json.loads(progress.read_text())["step"]
    elif args.init_from:
        widened = warm_start(network, initial_weights(args.init_from, prefix), new_prefixes=("top_",))
        spread = spread_mixture(network, widened, seed=args.seed)
        print(f"warm start from {args.init_from}; rows appended to {len(widened)} tensors"
              + (f", {spread} layers with new mixture components" if spread else ""), flush=True)
    sources = [np.load(path, mmap_mode="r") for path in args.data]
    batch_sizes = args.batch_size or [32]
    if len(batch_sizes) == 1:
        batch_sizes = batch_sizes * len(sources)
    mix = [float(w) for w in args.mix.split(",")] if args.mix else [1.0] * len(sources)
    if not len(sources) == len(batch_sizes) == len(mix):
        raise SystemExit(f"{len(sources)} --data, {len(batch_sizes)} --batch-size, {len(mix)} --mix weights")
    held = {}
    for path, tiles in zip(args.data, sources):
        rng = np.random.default_rng(1234)
        held[Path(path).stem] = np.asarray(tiles[rng.choice(len(tiles), 512, replace=False)])
    held_out = next(iter(held.values()))
    log = open(run / f"{prefix}.log", "a")

    def say(message: str) -> None:
        print(message, flush=True)
        log.write(message + "\n")
        log.flush()

    def checkpoint(step: int) -> None:
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
        stats = {"step": done + step, "valid_bpsp": evaluate(network, held_out)}
        if len(held) > 1:
            stats["valid_bpsp_by_source"] = {label: evaluate(network, tiles) for label, tiles in held.items()}
        progress.write_text(json.dumps(stats))

    remaining = args.steps - done
    if remaining > 0:
        say(f"training {prefix} from step {done} for {remaining} steps on "
            + ", ".join(f"{len(t)} tiles {t.shape[1]}x{t.shape[2]} (batch {b}, weight {w})"
                        for t, b, w in zip(sources, batch_sizes, mix)))
        train(network, [np.asarray(t) for t in sources], remaining, batch_size=batch_sizes, lr=args.lr,
              seed=done, log=say, on_checkpoint=checkpoint, validation=held if len(held) > 1 else held_out,
              mix=mix)


def command_export(args) -> None:
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    networks = build_networks(config)
    reuse = dict(item.split("=", 1) for item in args.reuse)
    stats = {}
    for channels, network in networks.items():
        prefix = CHANNEL_PREFIXES[channels]
        source = Path(reuse.get(prefix, run))
        network.load_state_dict(load_file(str(source / f"{prefix}.safetensors")))
        stats[prefix] = json.loads((source / f"{prefix}.json").read_text())
        if source != run:
            stats[prefix]["reused_from"] = str(source)
    recipe = f"scripts/pretrain.py, {stats}"
    if args.recipe_note:
        recipe = f"{args.recipe_note}; {recipe}"
    extra = {"training": {"recipe": recipe, "data": args.data_note}}
    if args.validation_bpsp:
        extra["validation_bpsp"] = json.loads(args.validation_bpsp)
    models = REPO / "models"
    digest = export(models / f"{args.name}.safetensors", config, networks, models / "manifest.json",
                    args.name, args.description, extra)
    print(args.name, digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--channels", type=int, choices=[1, 3], required=True)
    t.add_argument("--data", required=True, action="append",
                   help="tiles (.npy, N x H x W x C uint8); repeat to mix sources of different tile shapes")
    t.add_argument("--mix", default="", help="with several --data: comma-separated draw weights per batch")
    t.add_argument("--run", required=True)
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch-size", type=int, action="append",
                   help="default 32; repeat to give each --data its own")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--hidden", type=int, default=48)
    t.add_argument("--depth", type=int, default=3)
    t.add_argument("--levels", type=int, default=3)
    t.add_argument("--family", choices=["flow", "vae"], default="flow")
    t.add_argument("--latent-channels", type=int, default=16, help="vae: latent channels at 1/4 resolution")
    t.add_argument("--top-latent-channels", type=int, default=0,
                   help="vae: a second, top latent level with this many channels at 1/8 resolution")
    t.add_argument("--seed", type=int, default=0, help="initialisation seed")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--channel-coupling", action="store_true", help="v2: cross-channel conditioning (RGB)")
    t.add_argument("--mean-remainder", action="store_true",
                   help="v2: add the translation's rounding remainder to the logistic mean (with coupling)")
    t.add_argument("--deep-levels", action="store_true",
                   help="v3: sub-lattice levels down to 1x1 (no new parameters: v2 weights warm-start it)")
    t.add_argument("--edge-bins", action="store_true",
                   help="v4: the logistic tails beyond [0, 255] go to the edge bins (no new parameters)")
    t.add_argument("--mixture-components", type=int, default=1,
                   help="v6: a mixture of this many logistics per sub-lattice factor (needs --edge-bins)")
    t.add_argument("--init-from", help="warm start from these weights (e.g. runs/v1/rgb.safetensors, "
                   "or a shipped checkpoint such as models/idf-sublattice-v2.safetensors)")
    e = sub.add_parser("export")
    e.add_argument("--run", required=True)
    e.add_argument("--name", required=True)
    e.add_argument("--description", default="")
    e.add_argument("--reuse", action="append", default=[], metavar="PREFIX=RUN",
                   help="take PREFIX's (gray/rgb) weights and stats from another run, e.g. gray=runs/v1")
    e.add_argument("--recipe-note", default="", help="prepended to the recorded recipe")
    e.add_argument("--validation-bpsp", default="",
                   help='JSON recorded as the entry\'s validation_bpsp, e.g. \'{"tiles32": 3.0}\'')
    e.add_argument("--data-note", default="scripts/build_corpus.py training split (see data/split.json)")
    args = parser.parse_args()
    {"train": command_train, "export": command_export}[args.command](args)


if __name__ == "__main__":
    main()
