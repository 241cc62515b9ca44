"""Compare a restored folder with its original the way the archive promises.

Model-path images must match in mode, size and pixels (a re-written PNG may
differ in bytes); every other file must match byte for byte.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .imaging.io import read_image


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def tree_differences(original: Path, restored: Path) -> list[str]:
    """Human-readable differences; an empty list means the restore is exact."""
    original, restored = Path(original), Path(restored)
    before, after = _files(original), _files(restored)
    problems = [f"missing: {name}" for name in sorted(before - after)]
    problems += [f"unexpected: {name}" for name in sorted(after - before)]
    for name in sorted(before & after):
        source, copy = original / name, restored / name
        image = read_image(source)
        if image is None:
            if source.read_bytes() != copy.read_bytes():
                problems.append(f"bytes differ: {name}")
            continue
        again = read_image(copy)
        if again is None or again.mode != image.mode or not np.array_equal(again.pixels, image.pixels):
            problems.append(f"pixels differ: {name}")
    return problems
