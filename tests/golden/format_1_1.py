"""The golden archives of format 1.1 (release 1.3 on), made from format 1.0's folder.

FROZEN, like format_1_0.py: these archives must decode to format_1_0.build_source's
folder in every later release (tests/test_golden.py).  Format 1.1 added batches by
pixel count (``batch_pixels``) and FLAG_GIVE_UP; the tiny model's archive is made
with a learning rate that wrecks it, so that it holds that flag.

Written by osoa-zip 1.3 (``write_missing``); 1.4 writes format 1.2 (format_1_2.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from format_1_0 import MTIME_NS, build_source, write_missing  # noqa: E402,F401

ARCHIVES = {  # file name -> (model, adaptation settings)
    "format-1.1-idf-tiny-test.osoa": ("idf-tiny-test", {"tile_size": 16, "batch_size": 1, "batch_pixels": 512,
                                                        "learning_rate": 0.5, "give_up_after": 1}),
    "format-1.1-idf-sublattice-v4.osoa": ("idf-sublattice-v4", {"tile_size": 16, "batch_size": 2}),
    # model v5 (osoa-zip 1.3's default), with 1.3's final defaults
    "format-1.1-idf-sublattice-v5.osoa": ("idf-sublattice-v5", {"tile_size": 16, "batch_size": 2}),
}


if __name__ == "__main__":
    raise SystemExit("format 1.1 is no longer written (osoa-zip 1.4 writes 1.2): run format_1_2.py")
