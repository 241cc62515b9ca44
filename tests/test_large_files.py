"""Files over 4 GiB stream through the general path with bounded memory (slow: ~20 minutes).

Run with: python -m pytest -m slow tests/test_large_files.py
"""
from __future__ import annotations

import hashlib
import resource
import subprocess
import sys

import pytest
from conftest import subprocess_env

SIZE = (4 << 30) + 12_345  # past every 32-bit length


def _sparse_file(path, size: int) -> str:
    """A sparse file with a few non-zero marks (so misplaced chunks would show); returns its SHA-256."""
    with open(path, "wb") as handle:
        for offset in (0, 1 << 32, size - 7):
            handle.seek(offset)
            handle.write(b"osoa-zip"[: min(8, size - offset)])
        handle.truncate(size)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
def test_file_over_4_gib_round_trips_with_bounded_memory(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    expected = _sparse_file(source / "big.bin", SIZE)
    archive = tmp_path / "big.osoa"
    for command in (["compress", "-q", source, archive], ["decompress", "-q", archive, tmp_path / "out"]):
        result = subprocess.run([sys.executable, "-m", "osoa_zip", *map(str, command)], capture_output=True,
                                env=subprocess_env())
        assert result.returncode == 0, result.stderr
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib < 1_500_000, f"peak RSS {peak_kib} KiB"  # the file is streamed in 16 MiB chunks
    restored = tmp_path / "out" / "big.bin"
    assert restored.stat().st_size == SIZE
    digest = hashlib.sha256()
    with open(restored, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    assert digest.hexdigest() == expected
    print(f"archive {archive.stat().st_size} bytes, peak RSS {peak_kib / 1024:.0f} MiB")
