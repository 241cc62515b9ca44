"""Whole archives of two models side by side, with what HEAD costs in each (issue 15, format 1.6).

  python benchmarks/header_bytes.py --sets tiles32 tiles64 fashion_mnist gray32 photos768 \
      --limit 128 --models idf-sublattice-v6,idf-sublattice-v7 [--python PATH]

For each set, the first ``--limit`` files (sorted by name) are compressed with
``osoa-zip compress --model M FILES... ARCHIVE``, one model after the other, by
the interpreter ``--python`` (this one by default; run it from another checkout
with PYTHONPATH to measure that checkout's writer).  Per archive it prints the
whole archive's bytes; HEAD's stored payload, its JSON (inflated, for format
1.6) and what raw deflate at level 9 makes of that JSON (for 1.5: what deflating
it would have saved); and the BATC payloads' bytes (the model-coded batches);
and per set, each model against the first.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from osoa_zip.container.format import ArchiveReader  # noqa: E402

SETS = ("tiles32", "tiles64", "fashion_mnist", "gray32", "photos768")


def deflated(data: bytes) -> int:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return len(compressor.compress(data) + compressor.flush())


def measure(archive: bytes) -> dict:
    reader = ArchiveReader(io.BytesIO(archive))
    sizes = {"bytes": len(archive), "head": 0, "head_json": 0, "head_json_deflated": 0, "batches": 0,
             "format": "%d.%d" % reader.version}
    for tag, payload in reader.chunks():
        if tag == b"HEAD":
            text = zlib.decompress(payload, -15) if reader.version >= (1, 6) else payload
            sizes.update(head=len(payload), head_json=len(text), head_json_deflated=deflated(text))
        elif tag == b"BATC":
            sizes["batches"] += len(payload)
    return sizes


def compress(python: str, model: str, files: list[Path]) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "out.osoa"
        subprocess.run([python, "-m", "osoa_zip", "compress", "-q", "--model", model, *map(str, files),
                        str(archive)], check=True)
        return archive.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--models", default="idf-sublattice-v6,idf-sublattice-v7")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs osoa-zip")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    models = args.models.split(",")
    print("| set | files | model | format | bytes | HEAD stored | HEAD JSON | JSON deflated | batches | vs first |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    results = []
    for set_name in args.sets:
        files = sorted(path for path in (REPO / "data" / "eval" / set_name).iterdir() if path.is_file())
        files = files[:args.limit]
        first = None
        for model in models:
            sizes = {"set": set_name, "files": len(files), "model": model,
                     **measure(compress(args.python, model, files))}
            first = first or sizes["bytes"]
            results.append(sizes)
            print(f"| {set_name} | {len(files)} | {model} | {sizes['format']} | {sizes['bytes']} | {sizes['head']} "
                  f"| {sizes['head_json']} | {sizes['head_json_deflated']} | {sizes['batches']} "
                  f"| {100 * (sizes['bytes'] / first - 1):+.2f}% |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
