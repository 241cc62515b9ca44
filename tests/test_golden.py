"""Archives written by earlier releases keep decoding, exactly (format 1.0 onward).

Each golden archive in tests/golden was written once and is never rewritten;
it must decode to the folder its module builds, with links, hard links,
empty folders, modes and times, on every later release and every machine.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from conftest import assert_same_tree
from osoa_zip import decompress, test_archive

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import format_1_0  # noqa: E402


@pytest.fixture(scope="module")
def source_1_0(tmp_path_factory) -> Path:
    return format_1_0.build_source(tmp_path_factory.mktemp("golden") / "source")


@pytest.mark.parametrize("name", sorted(format_1_0.ARCHIVES))
def test_format_1_0_archive_decodes_exactly(name, source_1_0, tmp_path):
    data = (GOLDEN / name).read_bytes()
    assert data[8:12] == b"\x01\x00\x00\x00"  # format 1.0
    destination = tmp_path / "restored"
    decompress(io.BytesIO(data), destination)
    assert_same_tree(source_1_0, destination)
    assert (destination / "empty_dir").is_dir()
    notes, hardlink = destination / "notes.txt", destination / "nested" / "hardlink_to_notes"
    assert os.stat(notes).st_ino == os.stat(hardlink).st_ino
    assert os.readlink(destination / "nested" / "link_to_notes") == "../notes.txt"
    assert os.stat(destination / "images" / "rgb.png").st_mtime_ns == format_1_0.MTIME_NS


@pytest.mark.parametrize("name", sorted(format_1_0.ARCHIVES))
def test_format_1_0_archive_passes_test(name):
    summary = test_archive(io.BytesIO((GOLDEN / name).read_bytes()))
    assert summary.images == 7
