"""The golden archives of format 1.4 (release 1.6 on), made from format 1.0's folder.

FROZEN, like the modules of earlier formats: these archives must decode to
format_1_0.build_source's folder in every later release (tests/test_golden.py).
Format 1.4 added ``chain_batches``: a bits-back model (the VAE) lays up to that
many consecutive batches on one ANS stack (FLAG_CHAIN_HEAD, FLAG_CHAINED).
The archives use VAEs (one tiny model with two latent levels, release 1.6's
hierarchical VAE) with batches of one or two small tiles, so that they hold
chains of several batches, of both channel counts, and a chain cut short by
the end of its group.

    python tests/golden/format_1_4.py   # writes the archives that do not exist yet, never rewrites one
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from format_1_0 import MTIME_NS, build_source, write_missing  # noqa: E402,F401

ARCHIVES = {  # file name -> (model, adaptation settings)
    "format-1.4-vae-tiny-test.osoa": ("vae-tiny-test", {"tile_size": 8, "batch_size": 1, "batch_pixels": 0,
                                                        "gray_batch_pixels": 128, "chain_batches": 3,
                                                        "learning_rate": 2e-3}),
    "format-1.4-vae-hier-tiny-test.osoa": ("vae-hier-tiny-test", {"tile_size": 8, "batch_size": 1, "batch_pixels": 0,
                                                                  "gray_batch_pixels": 128, "chain_batches": 3,
                                                                  "learning_rate": 2e-3}),
    # the shipped VAEs with 1.6's defaults but small tiles (chains of several batches)
    "format-1.4-vae-conv-v2.osoa": ("vae-conv-v2", {"tile_size": 16, "batch_size": 2, "batch_pixels": 512,
                                                    "gray_batch_pixels": 1024, "learning_rate": 1e-4}),
    "format-1.4-vae-hier-v3.osoa": ("vae-hier-v3", {"tile_size": 16, "batch_size": 2, "batch_pixels": 512,
                                                    "gray_batch_pixels": 1024, "learning_rate": 1e-5}),
}


if __name__ == "__main__":
    write_missing(ARCHIVES)
