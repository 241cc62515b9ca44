"""Whole archives under several adaptation settings side by side: which settings pay on every set.

  python benchmarks/adaptation_pays.py --sets fashion_mnist gray32 --limit 128 \
      --run v6=idf-sublattice-v6 --run v7=idf-sublattice-v7 \
      --run v7-bias=idf-sublattice-v7:gray_parameters=bias,learning_rate=1e-3 [--decode]

Each ``--run NAME=MODEL[:SETTING=VALUE,...]`` compresses the first ``--limit``
images of each set (``--limits SET=N,...`` overrides per set; a set is a folder of data/eval, else of data/,
e.g. speed/gray32_2048) through the library
(osoa_zip.archive.compress into memory, triage on, as the command line does);
settings left out are the model's defaults (adapt.defaults.adaptation_for).  Runs
go one after the other within each set, so that a noisy machine slows them alike.
Per run and set it prints the whole archive's bytes, its bpsp, the model-coded
bits' bpsp (the batches alone), how many batches were coded with θ0 (the guard)
and with adaptation given up, and the CPU seconds of the process to compress
(and, with ``--decode``, to decompress, with the pixels checked).  Products run on
one thread, as benchmarks/presets.py runs them.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.flags import FLAG_GIVE_UP, FLAG_PRETRAINED
from osoa_zip.archive import compress, decompress
from osoa_zip.bench.sets import image_subpixels
from osoa_zip.exact.stack import set_gemm_threads

REPO = Path(__file__).resolve().parents[1]
SETS = ("tiles32", "tiles64", "fashion_mnist", "gray32", "photos768")
FIELDS = {field.name: field for field in dataclasses.fields(AdaptationConfig)}


def parse_run(text: str) -> tuple[str, str, AdaptationConfig]:
    name, _, rest = text.partition("=")
    model, _, settings = rest.partition(":")
    values = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        default = FIELDS[key].default
        if key in ("learning_rate",):
            values[key] = float(value)
        elif isinstance(default, bool):
            values[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            values[key] = int(value)
        elif isinstance(default, float):
            values[key] = float(value)
        else:
            values[key] = value
    return name, model, AdaptationConfig(**values)


def first_images(folder: Path, limit: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if image_subpixels(p))[:limit]


def run(model: str, config: AdaptationConfig, files: list[Path], decode: bool) -> dict:
    output = io.BytesIO()
    cpu = time.process_time()
    summary = compress(list(files), output, model, config)
    result = {"bytes": len(output.getvalue()), "encode_cpu": time.process_time() - cpu,
              "model_bits": sum(batch.bits for batch in summary.batches), "batches": len(summary.batches),
              "theta0": sum(1 for batch in summary.batches if batch.flags & FLAG_PRETRAINED),
              "gave_up": sum(1 for batch in summary.batches if batch.flags & FLAG_GIVE_UP),
              "coded_subpixels": sum(batch.subpixels for batch in summary.batches)}
    if decode:
        with tempfile.TemporaryDirectory() as scratch:
            output.seek(0)
            cpu = time.process_time()
            decompress(output, Path(scratch))
            result["decode_cpu"] = time.process_time() - cpu
            for path in files:
                with Image.open(path) as a, Image.open(Path(scratch) / path.name) as b:
                    if a.mode != b.mode or not np.array_equal(np.asarray(a), np.asarray(b)):
                        raise SystemExit(f"{path.name} did not come back pixel for pixel")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--limits", default="", help="SET=N,...: per-set limits over --limit")
    parser.add_argument("--run", action="append", required=True, help="NAME=MODEL[:SETTING=VALUE,...]")
    parser.add_argument("--decode", action="store_true", help="also decompress (CPU time, pixels checked)")
    args = parser.parse_args()
    limits = {name: int(count) for name, count in (item.split("=") for item in args.limits.split(",") if item)}
    runs = [parse_run(text) for text in args.run]
    torch.set_num_threads(1)
    set_gemm_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    print("| set | run | bytes | vs first | bpsp | model-coded bpsp | batches | θ0 | given up "
          "| CPU enc s | CPU dec s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for set_name in args.sets:
        folder = REPO / "data" / "eval" / set_name
        folder = folder if folder.is_dir() else REPO / "data" / set_name  # e.g. speed/gray32_2048
        files = first_images(folder, limits.get(set_name, args.limit))
        subpixels = sum(image_subpixels(path) for path in files)
        first = None
        for name, model, config in runs:
            r = run(model, config, files, args.decode)
            first = first or r["bytes"]
            model_bpsp = r["model_bits"] / subpixels if r["batches"] else float("nan")
            decode = f"{r['decode_cpu']:.1f}" if "decode_cpu" in r else "-"
            print(f"| {set_name} | {name} | {r['bytes']} | {100 * (r['bytes'] / first - 1):+.2f}% "
                  f"| {8 * r['bytes'] / subpixels:.4f} | {model_bpsp:.4f} | {r['batches']} | {r['theta0']} "
                  f"| {r['gave_up']} | {r['encode_cpu']:.1f} | {decode} |", flush=True)


if __name__ == "__main__":
    main()
