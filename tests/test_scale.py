"""Scale (slow): 100 000 small files and a 4-megapixel photo through the CLI, with
their peak memory bounded.  The numbers are in docs/SECURITY.md
(`python benchmarks/scale.py small-files` / `large-images` print them)."""
from __future__ import annotations

import lzma
import re
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

from osoa_zip.layout import xz_compress, xz_filters

SCALE = REPO / "benchmarks" / "scale.py"


def _scale(*args) -> str:
    result = subprocess.run([sys.executable, str(SCALE), *args], capture_output=True, text=True,
                            env=subprocess_env(), timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def _dictionary_size(stream: bytes) -> int:
    """The LZMA2 dictionary size an xz stream's first block header declares (xz file format
    1.0.4, 3.1 and 5.3.1): what the decoder allocates, and what the encoder used."""
    header = stream[12:]
    flags, position = header[1], 2
    for present in (flags & 0x40, flags & 0x80):  # compressed / uncompressed size fields (varints)
        if present:
            while header[position] & 0x80:
                position += 1
            position += 1
    assert flags & 0x03 == 0 and header[position:position + 2] == b"\x21\x01"  # one filter: LZMA2, 1 property byte
    code = header[position + 2]
    return (2 | (code & 1)) << (code // 2 + 11)


@pytest.mark.parametrize("size, dictionary", [(1, 4096), (20, 4096), (4096, 4096), (4097, 8192),
                                              (5000, 8192), (70_000, 131_072)])
def test_xz_of_small_files_is_cheap(size, dictionary):
    """Preset 9's 64 MiB dictionary cost ~100 ms per call even for 20 bytes (100 000 small
    files: hours): xz_compress sizes the dictionary to the data (at least 4 KiB), with
    output no larger than preset 9's, and round-trips.  (The time of many small files is
    measured by `python benchmarks/scale.py small-files`.)"""
    data = (b"osoa-zip %d " % size * (size // 10 + 1))[:size]
    packed = xz_compress(data)
    assert lzma.decompress(packed) == data
    assert len(packed) <= len(lzma.compress(data, preset=9))
    assert _dictionary_size(packed) == dictionary
    assert _dictionary_size(lzma.compress(data, preset=9)) == 64 << 20  # what the property replaces


def test_xz_dictionary_bounds():
    """No data: no block, nothing allocated.  Much data: preset 9's dictionary, never more."""
    assert lzma.decompress(xz_compress(b"")) == b"" and xz_filters(0)[0]["dict_size"] == 4096
    assert xz_filters(1 << 30)[0]["dict_size"] == 64 << 20


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
