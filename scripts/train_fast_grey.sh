#!/bin/bash
# Level -1's model, idf-fast-v1: a small grey flow beside v7's colour network.
#
#   scripts/train_fast_grey.sh WIDTH RUN [NAME]
#   scripts/train_fast_grey.sh 16 runs/fast16 idf-fast-v1     # as shipped (about 25 minutes, one core)
#
# 1. Float pretraining of a grey network of v6's architecture at hidden width WIDTH and depth 2
#    (scripts/pretrain.py; 8000 steps, Adam at 2e-3 on a cosine, gray photo tiles and
#    Fashion-MNIST's training split half and half).
# 2. That network exported as a float (engine-1) model in RUN/models, with the config pretrain.py
#    wrote into RUN/config.json (its colour network is untrained and never used).
# 3. Quantisation-aware training through engine 2 (scripts/train_engine2.py; 12000 steps at
#    2e-4, mix 0.4/0.6 as v7's grey network had).
# 4. With NAME: the export into models/, the colour network taken from idf-sublattice-v7 weight
#    for weight (--reuse rgb=idf-sublattice-v7), the grey network's width and depth recorded as
#    its own values (config["networks"]["gray"]).
# Each step resumes from RUN's checkpoints if run again.
set -euo pipefail
WIDTH=$1
RUN=$2
NAME=${3:-}
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
mkdir -p "$RUN/models"
$PYTHON scripts/pretrain.py train --channels 1 --data data/train_gray32.npy --batch-size 32 \
  --data data/train_fashion28.npy --batch-size 32 --mix 0.5,0.5 --steps 8000 --run "$RUN" \
  --hidden "$WIDTH" --depth 2 --levels 3 --channel-coupling --mean-remainder --deep-levels --edge-bins \
  --mixture-components 3 --threads 1
$PYTHON - "$RUN" "$WIDTH" <<'PY'
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from osoa_zip.models.registry import build_networks
from osoa_zip.models.training import export

run, width = Path(sys.argv[1]), int(sys.argv[2])
config = json.loads((run / "config.json").read_text())
networks = build_networks(config)
networks[1].load_state_dict(load_file(str(run / "gray.safetensors")))
print(export(run / "models" / "float.safetensors", config, {c: n.float() for c, n in networks.items()},
             run / "models" / "manifest.json", f"float-grey-{width}", "float grey network (colour untrained)",
             {"training": json.loads((run / "gray.json").read_text())}))
PY
OSOA_ZIP_MODELS="$RUN/models" $PYTHON scripts/train_engine2.py train --channels 1 --init-from "float-grey-$WIDTH" \
  --run "$RUN/e2" --data data/train_gray32.npy --batch-size 32 --data data/train_fashion28.npy --batch-size 32 \
  --mix 0.4,0.6 --steps 12000 --lr 2e-4 --threads 1 --checkpoint-every 250
if [ -n "$NAME" ]; then
  $PYTHON scripts/train_engine2.py export --run "$RUN/e2" --reuse rgb=idf-sublattice-v7 --name "$NAME" \
    --description "see models/manifest.json" --recipe "scripts/train_fast_grey.sh $WIDTH $RUN $NAME"
fi
