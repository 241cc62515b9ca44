"""The golden archives of format 1.2 (release 1.4 on), made from format 1.0's folder.

FROZEN, like format_1_0.py and format_1_1.py: these archives must decode to
format_1_0.build_source's folder in every later release (tests/test_golden.py).
Format 1.2 added ``batch_pixels_max`` (large tiles batched by pixels); the tiny
model's archive caps its batches at two 8 x 8 tiles (not eight), so that it
holds batches the cap made.  Models v6 (logistic mixtures) and vae-conv-v2 (a mixture
likelihood) arrived with it.

    python tests/golden/format_1_2.py   # writes the archives that do not exist yet, never rewrites one
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from format_1_0 import MTIME_NS, build_source, write_missing  # noqa: E402,F401

ARCHIVES = {  # file name -> (model, adaptation settings)
    "format-1.2-idf-tiny-test.osoa": ("idf-tiny-test", {"tile_size": 8, "batch_size": 8, "batch_pixels": 0,
                                                        "batch_pixels_max": 128, "learning_rate": 2e-3}),
    # model v5 (osoa-zip 1.4's default) with 1.4's defaults, and the two mixture models
    "format-1.2-idf-sublattice-v5.osoa": ("idf-sublattice-v5", {"tile_size": 16, "batch_size": 2}),
    "format-1.2-idf-sublattice-v6.osoa": ("idf-sublattice-v6", {"tile_size": 16, "batch_size": 2}),
    "format-1.2-vae-conv-v2.osoa": ("vae-conv-v2", {"tile_size": 16, "batch_size": 4, "learning_rate": 1e-4}),
}


if __name__ == "__main__":
    raise SystemExit("format 1.2 is no longer written (osoa-zip 1.5 writes 1.3): run format_1_3.py")
