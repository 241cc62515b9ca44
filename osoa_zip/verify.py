"""Compare a restored folder with its original the way the archive promises.

Model-path images must match in format, mode, size, pixels and kept metadata
(a re-written PNG may differ in its compressed bytes); every other file and
link must match byte for byte.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .imaging.io import read_image


def _names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _same_image(original: Path, restored: Path) -> bool:
    a, b = read_image(original), read_image(restored)
    kept = ("mode", "format", "png_before", "png_after", "palette")
    return (b is not None and all(getattr(a, key) == getattr(b, key) for key in kept)
            and _png_header(original) == _png_header(restored) and np.array_equal(a.pixels, b.pixels))


def _png_header(path: Path) -> bytes:
    """A PNG's IHDR (size, bit depth, colour type, interlacing); empty for other formats."""
    data = path.read_bytes()[:33]
    return data[8:33] if data[12:16] == b"IHDR" else b""


def tree_differences(original: Path, restored: Path) -> list[str]:
    """Human-readable differences; an empty list means the restore is exact."""
    original, restored = Path(original), Path(restored)
    before, after = _names(original), _names(restored)
    problems = [f"missing: {name}" for name in sorted(before - after)]
    problems += [f"unexpected: {name}" for name in sorted(after - before)]
    for name in sorted(before & after):
        source, copy = original / name, restored / name
        if source.is_symlink() or copy.is_symlink():
            if not (source.is_symlink() and copy.is_symlink() and os.readlink(source) == os.readlink(copy)):
                problems.append(f"link differs: {name}")
        elif read_image(source) is not None:
            if not _same_image(source, copy):
                problems.append(f"image differs: {name}")
        elif source.read_bytes() != copy.read_bytes():
            problems.append(f"bytes differ: {name}")
    return problems
