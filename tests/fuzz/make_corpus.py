"""Write the seed corpus of tests/fuzz/fuzz_reader.py: small archives (a few KB)
covering every chunk kind, written by osoa-zip itself.

    python tests/fuzz/make_corpus.py            # writes tests/fuzz/corpus/*.osoa

Deterministic: the sources get fixed modification times, so the same version
of osoa-zip writes the same corpus.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

import numpy as np  # noqa: E402
from crafting import build_source  # noqa: E402
from PIL import Image  # noqa: E402

import osoa_zip  # noqa: E402,F401  (first: OpenMP settings before torch)
from osoa_zip.adapt.config import AdaptationConfig  # noqa: E402
from osoa_zip.archive import compress  # noqa: E402

MODEL = "idf-tiny-test"
MTIME_NS = 1_700_000_000_000_000_000


def _fix_times(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)


def _alpha_source(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(90, 110, (10, 7, 4), np.uint8), "RGBA").save(root / "rgba.png", compress_level=0)
    Image.fromarray(rng.integers(0, 30, (6, 6, 2), np.uint8), "LA").save(root / "la.png", compress_level=0)
    return root


def main() -> None:
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        mixed = build_source(work / "mixed")
        alpha = _alpha_source(work / "alpha")
        files_only = work / "files"
        files_only.mkdir()
        (files_only / "x.txt").write_text("x" * 300)
        (files_only / "empty").write_bytes(b"")
        for root in (mixed, alpha, files_only):
            _fix_times(root)
        settings = {
            "mixed-adapted": ([mixed], AdaptationConfig(tile_size=16, batch_size=4)),
            "mixed-frozen": ([mixed], AdaptationConfig(tile_size=16, batch_size=4, adapt=False)),
            "mixed-segments": ([mixed], AdaptationConfig(tile_size=8, batch_size=2, segment_batches=2)),
            "alpha": ([alpha], AdaptationConfig(tile_size=16, batch_size=4)),
            "files-only": ([files_only], AdaptationConfig()),
        }
        for name, (sources, config) in settings.items():
            output = io.BytesIO()
            compress(sources, output, model=MODEL, adaptation=config)
            (corpus / f"{name}.osoa").write_bytes(output.getvalue())
            print(f"{name}.osoa: {len(output.getvalue())} bytes")


if __name__ == "__main__":
    main()
