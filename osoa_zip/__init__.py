"""osoa-zip: a lossless archiver for folders of images, built on One-Shot Online Adaptation.

Package map (each folder knows only its neighbours):
  imaging/    image reading, classification, tiling and batching
  exact/      the bit-exact numeric core (fixed-point grids, tables, optimiser)
  models/     the flows and VAEs, the checkpoint registry, pretraining
  coding/     entropy coding with constriction's ANS coder
  adapt/      the OSOA engine: code a batch, then take the replayable update;
              the settings, their checks and defaults (config.py, defaults.py)
  container/  the archive format's framing (no torch here)
  files/      scanning sources into entries; restoring them safely
  layout.py   what entries look like (names, limits, shared types)
  pack.py     writing an archive;  unpack.py  reading one
  table.py    the table without decoding (list, info);  verify.py  tree comparison
  archive.py  the library API: compress, decompress, test_archive
  cli.py      argument parsing only
  heap.py     glibc's heap kept between batches (the command line and its worker)
  forking.py  the one rule for forked children;  wire.py  their messages (JSON and raw arrays)
  read_process.py  small files read in a child while compress imports torch
  pause.py    a test-only hook that holds the process at a named point
  bench/      `osoa-zip bench`: every codec on the same images (the archiver never imports it)
"""
import os

__version__ = "1.19.3"  # what each release changed: docs/CHANGELOG.md

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
