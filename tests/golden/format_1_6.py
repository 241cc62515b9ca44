"""The golden archives of format 1.6 (release 1.10.0 on), from format 1.0's folder.

FROZEN, like the modules of earlier formats: these archives must decode to
format_1_0.build_source's folder in every later release (tests/test_golden.py),
and today's encoder must write them again (tests/test_golden_rebuild.py).
Format 1.6 changed HEAD only: its JSON is deflated, and it names the numeric
engine by version alone (``"engine": {"version": 2}``), the decoder taking the
engine's whole record from its frozen table (exact/grid.py ENGINES).  One
archive per engine, each with its tiny test model and format_1_5's engine-2
settings (small tiles in batches of two, both channel counts adapting every
layer), so that both compact records are decoded on every test run; and one per
engine-2 model added since (its first release writes it: add its line to ARCHIVES and run
this module).

    python tests/golden/format_1_6.py   # writes the archives that do not exist yet, never rewrites one
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import engine_2  # noqa: E402
import format_1_0  # noqa: E402

ENGINE_2_SETTINGS = engine_2.ARCHIVES["format-1.5-engine-2-idf-tiny-test-e2.osoa"][1]
# Level -1's model (release 1.13.0 on): v7's settings in its archive, but every layer of the
# grey network adapting, so that its own integer updates are replayed on every test run, and
# giving up after 4 lost comparisons, the default it was written with.
FAST_SETTINGS = {**engine_2.ARCHIVES["format-1.5-engine-2-idf-sublattice-v7.osoa"][1], "gray_parameters": "all",
                 "give_up_after": 4}
ARCHIVES = {  # file name -> (model, adaptation settings)
    "format-1.6-engine-2-idf-tiny-test-e2.osoa": ("idf-tiny-test-e2", ENGINE_2_SETTINGS),
    "format-1.6-engine-1-idf-tiny-test.osoa": ("idf-tiny-test", ENGINE_2_SETTINGS),
    "format-1.6-engine-2-idf-fast-v1.osoa": ("idf-fast-v1", FAST_SETTINGS),
}
ENGINES = {"format-1.6-engine-2-idf-tiny-test-e2.osoa": 2, "format-1.6-engine-1-idf-tiny-test.osoa": 1,
           "format-1.6-engine-2-idf-fast-v1.osoa": 2}


def write_missing_1_6(archives: dict) -> None:
    """format_1_0.write_missing, refused by a writer older than 1.6."""
    from osoa_zip.container.format import FORMAT_MINOR
    if FORMAT_MINOR < 6:
        raise SystemExit("this release writes format 1.%d, not 1.6" % FORMAT_MINOR)
    format_1_0.write_missing(archives)


if __name__ == "__main__":
    write_missing_1_6(ARCHIVES)
