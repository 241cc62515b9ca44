"""Damage isolation: `decompress --salvage` restores every intact entry and lists the lost ones.

Segments (--segment-size) restart the model from θ0, so damage to one batch
loses only the images of its segment from that batch on; everything else must
come back exactly, and nothing damaged may be written as if it were good.
"""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, MODEL, subprocess_env, uncompressed_copy
from crafting import Crafted
from PIL import Image
from test_container import chunk_offsets

from osoa_zip import compress, decompress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.container.format import ArchiveError

SEGMENTED = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, segment_batches=3)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("salvage") / "src"
    uncompressed_copy(EXAMPLES, root / "images")
    (root / "notes.txt").write_text("salvage me\n" * 200)
    (root / "z_random.bin").write_bytes(np.random.default_rng(3).bytes(5000))
    return root


@pytest.fixture(scope="module")
def archive(source) -> bytes:
    output = io.BytesIO()  # block_size 0: a file in each DATA chunk (tests/test_solid.py salvages blocks)
    compress([source], output, model=MODEL, adaptation=SEGMENTED, block_size=0, triage=False)
    return output.getvalue()


def _damaged(data: bytes, tag: bytes, which: int = 0, where: int = 20) -> bytes:
    """Flip one byte inside the payload of the which-th chunk with this tag."""
    offset, _, length = [c for c in chunk_offsets(data) if c[1] == tag][which]
    damaged = bytearray(data)
    damaged[offset + 12 + min(where, length - 1)] ^= 0x40
    return bytes(damaged)


def _restore(data: bytes, destination, tmp_path):
    path = tmp_path / "damaged.osoa"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        return decompress(handle, destination, salvage=True)


def _same_pixels(a, b) -> bool:
    with Image.open(a) as x, Image.open(b) as y:
        return np.array_equal(np.asarray(x), np.asarray(y))


def test_intact_archive_salvages_everything(source, archive, tmp_path):
    summary = _restore(archive, tmp_path / "out", tmp_path)
    assert summary.lost == [] and summary.damage == []
    assert summary.files == sum(1 for p in source.rglob("*") if p.is_file())


def test_damaged_batch_loses_only_its_segment(source, archive, tmp_path):
    batches = [c for c in chunk_offsets(archive) if c[1] == b"BATC"]
    assert len(batches) >= 9  # at least three segments of three batches
    data = _damaged(archive, b"BATC", which=4)  # the middle of the second segment
    with pytest.raises(ArchiveError):  # without --salvage: refused, nothing written
        decompress(io.BytesIO(data), tmp_path / "strict")
    assert not (tmp_path / "strict").exists()

    destination = tmp_path / "out"
    summary = _restore(data, destination, tmp_path)
    assert summary.damage and "damaged" in summary.damage[0]
    lost = {line.split(":")[0].strip("'") for line in summary.lost}
    images = {f"images/{p.name}" for p in (source / "images").iterdir()}
    restored = {p.relative_to(destination).as_posix() for p in destination.rglob("*") if p.is_file()}
    assert lost and lost <= images and lost.isdisjoint(restored)
    assert restored | lost == {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
    assert len(lost) < len(images)  # later segments decode again
    for name in restored & images:
        assert _same_pixels(source / name, destination / name), name
    assert (destination / "notes.txt").read_bytes() == (source / "notes.txt").read_bytes()


def test_damaged_general_file_is_lost_alone(source, archive, tmp_path):
    data = _damaged(archive, b"DATA", which=1)  # z_random.bin (stored after notes.txt)
    destination = tmp_path / "out"
    summary = _restore(data, destination, tmp_path)
    assert len(summary.lost) == 1 and "z_random.bin" in summary.lost[0]
    assert not (destination / "z_random.bin").exists()
    assert (destination / "notes.txt").read_bytes() == (source / "notes.txt").read_bytes()
    assert all(_same_pixels(p, destination / "images" / p.name) for p in (source / "images").iterdir())


def test_broken_length_field_is_resynchronised(source, archive, tmp_path):
    """A damaged length points into nowhere: the reader scans forward to the next valid chunk."""
    offset, _, _ = [c for c in chunk_offsets(archive) if c[1] == b"DATA"][0]
    data = bytearray(archive)
    data[offset + 4:offset + 12] = (123456789).to_bytes(8, "little")
    summary = _restore(bytes(data), tmp_path / "out", tmp_path)
    assert len(summary.lost) == 1 and "notes.txt" in summary.lost[0]
    assert (tmp_path / "out" / "z_random.bin").read_bytes() == (source / "z_random.bin").read_bytes()


def test_truncated_archive_salvages_its_beginning(archive, tmp_path):
    cut = [c for c in chunk_offsets(archive) if c[1] == b"BATC"][5][0]
    summary = _restore(archive[:cut], tmp_path / "out", tmp_path)
    assert summary.damage and summary.files > 0


def test_cli_lists_lost_entries_and_exits_1(archive, tmp_path):
    path = tmp_path / "damaged.osoa"
    path.write_bytes(_damaged(archive, b"BATC", which=4))
    result = subprocess.run([sys.executable, "-m", "osoa_zip", "decompress", "-q", "--salvage", str(path),
                             str(tmp_path / "out")], capture_output=True, text=True, env=subprocess_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("osoa-zip: lost: 'images/") for line in lines)
    assert lines[-1].startswith("osoa-zip: error: salvaged")
    result = subprocess.run([sys.executable, "-m", "osoa_zip", "decompress", "--salvage", "-",
                             str(tmp_path / "out2")], input=path.read_bytes(), capture_output=True,
                            env=subprocess_env())
    assert result.returncode == 2  # a pipe cannot be scanned for the next intact chunk


def test_segment_flags_must_match_the_header(archive, tmp_path):
    """A batch claiming to start a segment where the header says none starts is refused."""
    crafted = Crafted.parse(archive)
    index = crafted.index(b"BATC", 1)
    payload = crafted.chunks[index][1]
    crafted.chunks[index] = (b"BATC", bytes([payload[0] | 0x04]) + payload[1:])
    with pytest.raises(ArchiveError, match="segment flag"):
        decompress(io.BytesIO(crafted.build()), tmp_path / "out")
