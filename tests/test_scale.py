"""Scale (slow): 100 000 small files and a 4-megapixel photo through the CLI, with
their peak memory bounded.  The numbers are in docs/SECURITY.md
(`python benchmarks/scale.py small-files` / `large-images` print them)."""
from __future__ import annotations

import lzma
import re
import subprocess
import sys
import time

import pytest
from conftest import REPO, subprocess_env

from osoa_zip.layout import xz_compress

SCALE = REPO / "benchmarks" / "scale.py"


def _scale(*args) -> str:
    result = subprocess.run([sys.executable, str(SCALE), *args], capture_output=True, text=True,
                            env=subprocess_env(), timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_xz_of_small_files_is_cheap():
    """Preset 9's 64 MiB dictionary cost ~100 ms per call even for 20 bytes (100 000 small
    files: hours); xz_compress sizes the dictionary to the data and round-trips."""
    for size in (0, 1, 20, 5000, 70_000):
        data = (b"osoa-zip %d " % size * (size // 10 + 1))[:size]
        assert lzma.decompress(xz_compress(data)) == data
        assert len(xz_compress(data)) <= len(lzma.compress(data, preset=9))
    started = time.perf_counter()
    for index in range(200):
        xz_compress(b"a small file %d\n" % index)
    assert time.perf_counter() - started < 5.0  # was ~20 s


@pytest.mark.slow
def test_one_hundred_thousand_small_files():
    """Compress, decompress and test 100 000 small files (2 000 tiny PNGs): the tree comes back
    identical and no step needs more than 1 GiB."""
    output = _scale("small-files", "--files", "100000", "--pngs", "2000")
    assert "restored tree identical" in output
    peaks = [int(peak) for peak in re.findall(r"peak RSS (\d+) MiB", output)]
    assert len(peaks) == 3 and max(peaks) < 1024, output


@pytest.mark.slow
def test_four_megapixel_photo():
    """A 4 MP RGB photo (12 MB of pixels) round-trips with --no-adapt in bounded memory."""
    output = _scale("--no-adapt", "large-images", "--megapixels", "4", "--decompress-up-to", "4")
    row = output.strip().splitlines()[-1].strip("| ").split(" | ")
    compress_peak, decompress_peak = int(row[5]), int(row[7])
    assert compress_peak < 1024 and decompress_peak < 1024, output
