"""Small files read in a forked child (read_process.py): the records are the ones read here,
field for field, with what libraries said about each file; a child that stops, early or by
failing, leaves its files to the compressor; the archive is the same bytes either way."""
from __future__ import annotations

import io
import os
import threading
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, MODEL
from PIL import Image
from test_verbatim import FOREIGN, GENERAL, photo, tiff

from osoa_zip import compress, pack, read_process
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.imaging.io import COLOR_CHANNELS, ImageRecord, read_image
from osoa_zip.prefilter import record_clearly_pays
from osoa_zip.read_process import Read, ReadProcess, decode_read, encode_read, read_file

CONFIG = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0)


class _File:
    def __init__(self, source: Path) -> None:
        self.source, self.name, self.size = source, source.name, source.stat().st_size


def _files(root: Path) -> list[_File]:
    return [_File(path) for path in sorted(Path(root).rglob("*")) if path.is_file()]


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> Path:
    """Files kept verbatim around their rasters, broken ones, a garbled TIFF libtiff talks
    about, and a deflated photo."""
    root = tmp_path_factory.mktemp("odd")
    for name, data in {**FOREIGN, **GENERAL}.items():
        (root / name).write_bytes(data)
    garbled = bytearray(tiff(photo(64, 64), compression="tiff_lzw"))
    for offset in range(200, 1200, 7):  # inside the strips: libtiff's LZW decoder complains (C, to fd 2)
        garbled[offset] ^= 0xFF
    (root / "garbled.tif").write_bytes(bytes(garbled))
    with Image.open(EXAMPLES / "0001.png") as image:  # deflated, a photo: the classical bound clears it
        image.crop((0, 0, 48, 48)).save(root / "photo.png", compress_level=9)
    return root


def _read_here(file: _File) -> tuple[ImageRecord | None, list[str]]:
    notes: list[str] = []
    return read_image(file.source, False, pixels_in_file=True, note=notes.append, verbatim=True), notes


def _same_read(file: _File, read: Read | None) -> None:
    """``read`` is what this process reads of ``file``: record, notes, classical bound."""
    assert read is not None, file.name
    record, notes = _read_here(file)
    _same_record(record, read.record)
    assert read.notes == notes
    colour = record is not None and COLOR_CHANNELS[record.mode] > 0
    assert read.classical == (record_clearly_pays(record, file.source, file.size) if colour else None)


def _same_record(ours: ImageRecord | None, theirs: ImageRecord | None) -> None:
    assert (ours is None) == (theirs is None)
    if ours is None:
        return
    for field in fields(ImageRecord):
        mine, other = getattr(ours, field.name), getattr(theirs, field.name)
        if isinstance(mine, np.ndarray):
            assert mine.dtype == other.dtype and mine.shape == other.shape and np.array_equal(mine, other)
        else:
            assert mine == other, field.name


def test_every_field_of_a_record_is_carried():
    """A field added to ImageRecord must be carried (or said not to be) here first."""
    assert read_process.record_fields() == read_process.CARRIED_FIELDS


def test_reads_cross_as_they_were_read(source_tree, odd_images):
    """Every file of the fixture tree and of odd images (BMP/PPM/TIFF kept verbatim, palette,
    truncated, garbled), encoded and decoded: the same fields; the pixels writable."""
    checked, classical = 0, set()
    for file in _files(source_tree) + _files(odd_images):
        read = read_file(file, False, True)
        message = encode_read(read)
        assert message is not None
        decoded = decode_read(bytearray(message))
        _same_read(file, decoded)
        if decoded.record is not None:
            decoded.record.pixels[0, 0, 0] ^= 1  # the compressor's arrays are its own
            checked += 1
        classical.add(decoded.classical)
    assert checked >= 10 and classical == {None, False, True}


def test_the_child_reads_what_this_process_reads(source_tree, odd_images):
    files = _files(source_tree) + _files(odd_images)
    noted: list[str] = []
    with ReadProcess(files, False, True, noted.append) as reader:
        for file in files:
            read = reader.take(file)
            _same_read(file, read)
            assert noted[len(noted) - len(read.notes):] == read.notes
    assert any("garbled" in line for line in noted)


def test_a_file_taken_out_of_order_or_unknown_is_left_to_the_caller(source_tree):
    files = _files(source_tree)
    with ReadProcess(files, False, True, None) as reader:
        assert reader.take(files[2]) is not None
        assert reader.take(files[1]) is None  # passed: read here
        assert reader.take(_File(files[0].source)) is None  # not one of its files
        assert reader.take(files[3]) is not None


def test_a_child_past_its_budget_leaves_the_rest(source_tree, monkeypatch):
    files = _files(source_tree)
    monkeypatch.setattr(read_process, "BUDGET_BYTES", 1)  # one read, then it stops
    with ReadProcess(files, False, True, None) as reader:
        assert reader.take(files[0]) is not None
        assert all(reader.take(file) is None for file in files[1:])


def test_a_child_that_dies_leaves_the_rest(source_tree, monkeypatch):
    files = _files(source_tree)
    read = read_process.read_image
    seen = []

    def dying(path, *arguments, **options):
        if len(seen) == 3:
            os._exit(7)
        seen.append(path)
        return read(path, *arguments, **options)
    monkeypatch.setattr(read_process, "read_image", dying)
    with ReadProcess(files, False, True, None) as reader:
        assert [reader.take(file) is None for file in files[:5]] == [False, False, False, True, True]


def test_it_forks_only_alone():
    """No fork beside another thread (its locks could stay held in the child), nor for nothing."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert ReadProcess.start([_File(Path(__file__))], False, True, None) is None
    finally:
        release.set()
        thread.join()
    assert ReadProcess.start([], False, True, None) is None


def test_the_archive_is_the_same_with_the_child(source_tree, monkeypatch):
    """-T 2 with the child reading every small file, with a child that stops after one file,
    and without it: the same bytes.  (Threads a test run leaves behind would stop the fork:
    here it is made to happen.)"""
    def archive() -> bytes:
        output = io.BytesIO()
        compress([source_tree], output, model=MODEL, adaptation=CONFIG, threads=2)
        return output.getvalue()

    started = []

    def start(files, *arguments):
        started.append(len(files))
        return ReadProcess(files, *arguments)
    monkeypatch.setattr(pack.ReadProcess, "start", staticmethod(start))
    with_child = archive()
    monkeypatch.setattr(read_process, "BUDGET_BYTES", 1)
    stopping_child = archive()
    monkeypatch.setattr(pack.ReadProcess, "start", staticmethod(lambda *arguments: None))
    without = archive()
    assert started and started[0] >= 10
    assert with_child == without == stopping_child
