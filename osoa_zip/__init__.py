"""osoa-zip: a lossless archiver for folders of images, built on One-Shot Online Adaptation.

Package map (each folder knows only its neighbours):
  imaging/    image reading, classification, tiling and batching
  exact/      the bit-exact numeric core (fixed-point grids, tables, optimiser)
  models/     the flows, the checkpoint registry, pretraining
  coding/     entropy coding with constriction's ANS coder
  adapt/      the OSOA engine: code a batch, then take the replayable update
  container/  the archive format's framing (no torch here)
  files/      scanning sources into entries; restoring them safely
  layout.py   what entries look like (names, limits, shared types)
  pack.py     writing an archive;  unpack.py  reading one
  table.py    the table without decoding (list, info);  verify.py  tree comparison
  archive.py  the library API: compress, decompress, test_archive
  cli.py      argument parsing only
  bench/      `osoa-zip bench`: every codec on the same images (the archiver never imports it)
"""
import os

# Format 1.0 (docs/FORMAT.md) up to 1.2; 1.1: model v3 by default, the guard no longer undoes
# updates; 1.2: model v4 (edge bins) by default; 1.3: format 1.1 (batches by pixel count,
# giving up adaptation that does not pay, grey networks adapting their last layers), model v5;
# 1.4: format 1.2 (large tiles batched by pixels, tiles of 128), logistic-mixture models
# idf-sublattice-v6 and vae-conv-v2 (v5 stays the default: v6 is smaller but slower);
# 1.5: format 1.3 (grey batches by their own pixel count), a faster mixture coder, v6 by default.
__version__ = "1.6.0"

# Must happen before torch loads OpenMP.  With the default (spinning) wait
# policy, two busy processes on a 2-core machine slowed each other from 12 s
# to 97 s on the same job (measured); passive waiting costs nothing alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_API = {"compress", "decompress", "test_archive", "Summary", "AdaptationConfig", "ArchiveError", "UsageError",
        "ModelError", "RefusedEntries"}


def __getattr__(name: str):
    """osoa_zip.compress(...) etc., imported on first use so that `import osoa_zip`
    stays light and the OpenMP setting above precedes torch."""
    if name in _API:
        from . import archive
        return getattr(archive, name)
    raise AttributeError(f"module 'osoa_zip' has no attribute {name!r}")
