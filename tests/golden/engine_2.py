"""The golden archives of engine 2 (format 1.5: release 1.8, the first with engine 2), from format 1.0's folder.

FROZEN, like the modules of each format: these archives must decode to
format_1_0.build_source's folder in every later release (tests/test_golden.py),
and today's encoder must write them again byte for byte
(tests/test_golden_rebuild.py).  Engine 2 (docs/ENGINE2.md) is a new numeric
engine in the same container: HEAD's engine record is grid.ENGINE2, and every
coupling convolution of the model is an exact integer product.  The archives
use small tiles in batches of two, both channel counts adapting every layer,
so that they replay many integer updates of each network.

A new engine-2 model of a format-1.5 release got its archive here; since format 1.6
(release 1.10.0) a new model's archive goes into format_1_6.py, the module of the format
that release writes (tests/test_golden.py decodes every archive either lists).  The default
flow idf-sublattice-v7 has the settings of format_1_3's v6 archive (tiles of 16,
batches of 2, 512 and 1024 pixels) and adapts its last layers, as its manifest
entry chooses.

    python tests/golden/engine_2.py
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from format_1_0 import MTIME_NS, build_source, write_missing  # noqa: E402,F401

ARCHIVES = {  # file name -> (model, adaptation settings)
    "format-1.5-engine-2-idf-tiny-test-e2.osoa": ("idf-tiny-test-e2", {"tile_size": 8, "batch_size": 2,
                                                                       "batch_pixels": 0, "gray_batch_pixels": 0,
                                                                       "gray_parameters": "", "parameters": "all",
                                                                       "learning_rate": 2e-3}),
    "format-1.5-engine-2-idf-sublattice-v7.osoa": ("idf-sublattice-v7", {"tile_size": 16, "batch_size": 2,
                                                                         "batch_pixels": 512,
                                                                         "gray_batch_pixels": 1024,
                                                                         "parameters": "last",
                                                                         "learning_rate": 3e-4}),
}


if __name__ == "__main__":
    write_missing(ARCHIVES)
