"""The golden archives of format 1.5 (release 1.8 on) and the folder they were made from.

FROZEN, like the modules of earlier formats: these archives must decode to
build_source's folder in every later release (tests/test_golden.py).  Format 1.5
added solid blocks: the files off the model path, sorted by type, many to one xz
stream (a BLCK index, then BDAT chunks).  The folder is format 1.0's plus files of
several types; the archive is written with small blocks (BLOCK_SIZE), so that it
holds several blocks (one of them stored: xz would not shrink it), an empty file
inside a block, a file larger than a block and an incompressible file in streams
of their own (FILE + DATA, xz and stored).

    python tests/golden/format_1_5.py   # writes the archives that do not exist yet, never rewrites one
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import format_1_0  # noqa: E402
from format_1_0 import MTIME_NS, write_missing  # noqa: E402

BLOCK_SIZE = 2048
ARCHIVES = {  # file name -> (model, adaptation settings, compress options)
    "format-1.5-solid-idf-tiny-test.osoa": ("idf-tiny-test", {"tile_size": 8, "batch_size": 2, "learning_rate": 0.3,
                                                              "segment_batches": 3},
                                            {"block_size": BLOCK_SIZE}),
}
WORDS = ["solid", "block", "stream", "index", "golden", "archive", "format", "osoa", "zip", "bytes"]


def _noise(size: int, seed: int) -> bytes:
    """Incompressible bytes that do not depend on any library's random generator."""
    return b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(-(-size // 32)))[:size]


def _prose(lines: int, seed: int) -> str:
    return "".join(" ".join(WORDS[(seed * 7 + line * 3 + k * k) % len(WORDS)] for k in range(9)) + f" {line}\n"
                   for line in range(lines))


def build_source(root: Path) -> Path:
    format_1_0.build_source(root)
    (root / "texts").mkdir()
    (root / "code").mkdir()
    for number in range(4):
        (root / "texts" / f"chapter_{number}.txt").write_text(_prose(12, number))
        (root / "code" / f"part_{number}.py").write_text(f"PART = {number}\n" + "".join(
            f"def step_{k}(x):\n    return x * {k} + {number}\n" for k in range(10)))
    (root / "texts" / "table.csv").write_text("n,square\n" + "".join(f"{n},{n * n}\n" for n in range(100)))
    (root / "texts" / "empty.txt").write_bytes(b"")
    (root / "texts" / "salt.bin").write_bytes(_noise(1900, 1))       # alone in a block: stored
    (root / "texts" / "long.log").write_text(_prose(80, 9))          # larger than a block: its own xz stream
    (root / "code" / "blob.bin").write_bytes(_noise(70_000, 2))      # large, incompressible: its own stored stream
    os.chmod(root / "code" / "part_1.py", 0o755)
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    return root


if __name__ == "__main__":
    write_missing(ARCHIVES, build_source)
