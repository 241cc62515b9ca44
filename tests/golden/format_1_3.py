"""The golden archives of format 1.3 (release 1.5 on), made from format 1.0's folder.

FROZEN, like the modules of earlier formats: these archives must decode to
format_1_0.build_source's folder in every later release (tests/test_golden.py).
Format 1.3 added ``gray_batch_pixels`` (grey tiles batched by their own pixel
count); the tiny model's archive puts four grey 8 x 8 tiles in a batch and one
RGB tile, so that it holds batches only that key makes.

    python tests/golden/format_1_4.py   # format 1.3 is no longer written; this writes 1.4's
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from format_1_0 import MTIME_NS, build_source, write_missing  # noqa: E402,F401

ARCHIVES = {  # file name -> (model, adaptation settings)
    "format-1.3-idf-tiny-test.osoa": ("idf-tiny-test", {"tile_size": 8, "batch_size": 1, "batch_pixels": 0,
                                                        "gray_batch_pixels": 256, "learning_rate": 2e-3}),
    # model v6 with 1.5's defaults but small tiles (several batches of each channel count)
    "format-1.3-idf-sublattice-v6.osoa": ("idf-sublattice-v6", {"tile_size": 16, "batch_size": 2,
                                                                "batch_pixels": 512, "gray_batch_pixels": 1024}),
}


if __name__ == "__main__":
    raise SystemExit("format 1.3 is no longer written (osoa-zip 1.6 writes 1.4): run format_1_4.py")
