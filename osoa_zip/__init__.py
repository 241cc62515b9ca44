"""osoa-zip: a lossless archiver for folders of images, built on One-Shot Online Adaptation.

Package map (each folder knows only its neighbours):
  imaging/    image reading, classification, tiling and batching
  exact/      the bit-exact numeric core (fixed-point grids, tables, optimiser)
  models/     the flows, the checkpoint registry, pretraining
  coding/     entropy coding with constriction's ANS coder
  adapt/      the OSOA engine: code a batch, then take the replayable update
  container/  the archive format (no torch here)
  archive.py  folder <-> archive, used by the CLI and from Python
  cli.py      argument parsing only
"""
import os

__version__ = "0.1.0"

# Must happen before torch loads OpenMP.  With the default (spinning) wait
# policy, two busy processes on a 2-core machine slowed each other from 12 s
# to 97 s on the same job (measured); passive waiting costs nothing alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_API = {"compress", "decompress", "test_archive", "Summary", "AdaptationConfig", "ArchiveError", "UsageError",
        "ModelError"}


def __getattr__(name: str):
    """osoa_zip.compress(...) etc., imported on first use so that `import osoa_zip`
    stays light and the OpenMP setting above precedes torch."""
    if name in _API:
        from . import archive
        return getattr(archive, name)
    raise AttributeError(f"module 'osoa_zip' has no attribute {name!r}")
