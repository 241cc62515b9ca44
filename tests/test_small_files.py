"""Small image files: read once into memory and checked there, as cheaply as the checks allow.

A file of at most SMALL_FILE_BYTES is read in one read and decoded from memory, and a small
image's pixels go straight into their own array; the SHA-256 of the pixels is taken only where a
rewrite is decoded again.  These tests hold the fast path to the one it replaces (the same record
for every kind of file, down to the byte-exact hash), and show that its checks still fail when
the rewrite does not give the file back.
"""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image

from osoa_zip.imaging import io as imaging_io
from osoa_zip.imaging import messages
from osoa_zip.imaging.io import read_image, write_image
from osoa_zip.imaging.messages import library_messages

RGB_EXAMPLE = EXAMPLES / "0000.png"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _interlaced_grey(width: int = 9, height: int = 7) -> bytes:
    """An Adam7-interlaced 8-bit grey PNG (Pillow writes no interlacing: its rewrite is decoded again)."""
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width), dtype=np.uint8), "L")
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    pixels, rows = np.asarray(image), b""
    for y0, x0, dy, dx in passes:
        block = pixels[y0::dy, x0::dx]
        if block.size:
            rows += b"".join(b"\x00" + row.tobytes() for row in block)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def _two_bit_grey() -> bytes:
    """A 2-bit grey PNG: Pillow reads it as L and writes it with 8 bits (its rewrite is decoded again)."""
    header = struct.pack(">IIBBBBB", 4, 4, 2, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00\x1b" * 4))
            + _chunk(b"IEND", b""))


def _files(tmp_path):
    """Small files of every kind the reader tells apart: PNGs Pillow writes alike, PNGs whose rewrite
    is decoded again, palette and alpha PNGs, metadata, other formats, and files for the general path."""
    rng = np.random.default_rng(11)
    rgb = Image.fromarray(rng.integers(0, 256, (21, 19, 3), dtype=np.uint8), "RGB")
    grey = rgb.convert("L")
    made = {
        "rgb.png": lambda path: rgb.save(path),
        "grey-dpi-text.png": lambda path: grey.save(path, dpi=(300, 300), pnginfo=_text("k", "v")),
        "rgba.png": lambda path: rgb.convert("RGBA").save(path),
        "la.png": lambda path: grey.convert("LA").save(path),
        "palette.png": lambda path: rgb.quantize(17).save(path),
        "level1.png": lambda path: rgb.save(path, compress_level=1),
        "sixteen.png": lambda path: Image.fromarray(rng.integers(0, 65535, (5, 6), dtype=np.uint16)).save(path),
        "rgb.bmp": lambda path: rgb.save(path),
        "grey.pgm": lambda path: grey.save(path),
        "rgb.tif": lambda path: rgb.save(path),
        "lzw.tif": lambda path: rgb.save(path, compression="tiff_lzw"),
        "interlaced.png": lambda path: path.write_bytes(_interlaced_grey()),
        "two-bit.png": lambda path: path.write_bytes(_two_bit_grey()),
        "truncated.png": lambda path: path.write_bytes(RGB_EXAMPLE.read_bytes()[:300]),
        "trailing.png": lambda path: path.write_bytes(RGB_EXAMPLE.read_bytes() + b"tail"),
    }
    paths = []
    for name, make in made.items():
        path = tmp_path / name
        make(path)
        paths.append(path)
    return paths + [RGB_EXAMPLE]


def _text(key: str, value: str):
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text(key, value)
    return info


def _facts(record):
    if record is None:
        return None
    return (record.mode, record.format, record.png_before, record.png_after, record.sha256, record.compression,
            record.verbatim, record.rasters, record.palette, record.pixels.shape, record.pixels.tobytes())


@pytest.mark.parametrize("byte_exact", [False, True])
@pytest.mark.parametrize("verbatim", [False, True])
def test_reading_from_memory_gives_the_record_reading_from_the_file_gives(tmp_path, monkeypatch, byte_exact,
                                                                           verbatim):
    """Every kind of small file gets the same record (or the same general path) read in one piece
    into memory as read from its file, and as the large-image path (pixels in a file) gives."""
    paths = _files(tmp_path)
    ways = {}
    for name, small, spill in (("memory", imaging_io.SMALL_FILE_BYTES, imaging_io.SPILL_BYTES),
                               ("file", 0, imaging_io.SPILL_BYTES), ("pixel file", 0, 0)):
        monkeypatch.setattr(imaging_io, "SMALL_FILE_BYTES", small)
        monkeypatch.setattr(imaging_io, "SPILL_BYTES", spill)
        ways[name] = [_facts(read_image(path, byte_exact, verbatim=verbatim)) for path in paths]
    assert ways["memory"] == ways["file"] == ways["pixel file"]
    taken = dict(zip((path.name for path in paths), ways["memory"]))
    assert taken["rgb.png"] is not None and taken["interlaced.png"] is None  # its info says "interlace"
    assert (taken["two-bit.png"] is None) == byte_exact and taken["palette.png"] is not None
    assert taken["truncated.png"] is None and taken["sixteen.png"] is None and taken["trailing.png"] is None
    assert (taken["level1.png"] is None) == byte_exact


@pytest.mark.parametrize("small", [True, False])
@pytest.mark.parametrize("name, byte_exact", [("two-bit.png", False), ("palette.png", False), ("rgb.png", True),
                                              ("rgb.bmp", False)])
def test_a_rewrite_that_differs_takes_the_general_path(tmp_path, monkeypatch, small, name, byte_exact):
    """Where the rewrite is checked (decoded again, or compared byte for byte), a rewrite that differs
    by one pixel sends the file to the general path: the fast path's checks can fail."""
    path = next(path for path in _files(tmp_path) if path.name == name)
    if not small:
        monkeypatch.setattr(imaging_io, "SMALL_FILE_BYTES", 0)
    assert read_image(path, byte_exact) is not None
    real = imaging_io.record_picture

    def off_by_one(record):
        picture = real(record).copy()
        value = picture.getpixel((0, 0))
        picture.putpixel((0, 0), tuple((v + 1) % 256 for v in value) if isinstance(value, tuple) else (value + 1) % 256)
        return picture

    monkeypatch.setattr(imaging_io, "record_picture", off_by_one)
    assert read_image(path, byte_exact) is None


def test_small_pngs_restore_byte_for_byte_from_the_fast_path(tmp_path):
    """A small PNG Pillow writes alike (no second decode) comes back with its pixels, mode and chunks;
    one Pillow wrote at its defaults comes back byte for byte."""
    for path in _files(tmp_path):
        record = read_image(path)
        if record is None or record.format != "PNG":
            continue
        restored = tmp_path / f"restored-{path.name}"
        write_image(restored, record)
        with Image.open(path) as a, Image.open(restored) as b:
            assert (a.mode, a.info) == (b.mode, b.info) and np.array_equal(np.asarray(a), np.asarray(b))
        if path.name == "rgb.png":
            assert restored.read_bytes() == path.read_bytes()


def test_a_file_that_changes_while_read_takes_the_general_path(tmp_path, monkeypatch):
    """Read in one piece or not, a file whose size or time changes during the read is not an image."""
    path = tmp_path / "rgb.png"
    path.write_bytes(RGB_EXAMPLE.read_bytes())
    real = imaging_io._model_record

    def touched(handle, size, byte_exact, verbatim):
        record = real(handle, size, byte_exact, verbatim)
        os.utime(path, ns=(1, 1))
        return record

    monkeypatch.setattr(imaging_io, "_model_record", touched)
    assert read_image(path) is None


def test_captures_in_turn_reuse_their_file_and_keep_their_messages_apart():
    """The capture file is reused: each capture sees only what was written during it, also after a
    long message, and a nested capture keeps its own lines."""
    with library_messages("warm-up", None):
        pass
    pooled = len(messages._SPARE)
    lines: list[str] = []
    with library_messages("a", lines.append):
        os.write(2, b"x" * 5000 + b"\nfirst\n")
    with library_messages("b", lines.append):
        os.write(2, b"second\n")
    with library_messages("c", lines.append):
        pass
    assert len(messages._SPARE) == pooled  # one file served all three
    with library_messages("outer", lines.append):
        os.write(2, b"before\n")
        with library_messages("inner", lines.append):
            os.write(2, b"nested\n")
        os.write(2, b"after\n")
    assert lines == ["a: " + "x" * 5000, "a: first", "b: second", "inner: nested", "outer: before", "outer: after"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_makes_capture_files_of_its_own():
    """A child does not write into its parent's capture files (they share their offsets)."""
    with library_messages("parent", None):
        pass
    kept = {os.fstat(fd).st_ino for fd in messages._SPARE}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: capture, report what it saw, and leave at once
        try:
            lines: list[str] = []
            with library_messages("child", lines.append):
                os.write(2, b"from the child\n")
            fresh = all(os.fstat(fd).st_ino not in kept for fd in messages._SPARE)
            os.write(write_end, f"{lines == ['child: from the child']} {fresh}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with io.open(read_end, "rb") as reader:
        said = reader.read().decode()
    os.waitpid(pid, 0)
    assert said == "True True"
    lines: list[str] = []
    with library_messages("parent", lines.append):
        os.write(2, b"from the parent\n")
    assert lines == ["parent: from the parent"]


def test_a_staged_folder_checked_once_stays_a_folder(tmp_path):
    """Staging.path checks and makes each folder once: no later entry can turn that folder (or one
    above it) into a link or a file, so the files after it still land inside the staging folder."""
    from osoa_zip.files.restore import Staging, UnsafeEntry

    staging = Staging(tmp_path / "out")
    try:
        first = staging.path("a/b/1.png")
        first.write_bytes(b"1")
        for refused in (lambda: staging.symlink("a/b", ".."), lambda: staging.symlink("a", "."),
                        lambda: staging.path("a"), lambda: staging.path("a/b"),
                        lambda: staging.hardlink("a", "a/b/1.png")):
            with pytest.raises(UnsafeEntry):
                refused()
        second = staging.path("a/b/2.png")
        assert second.parent == first.parent and second.parent.is_dir() and not second.parent.is_symlink()
        assert second.resolve().is_relative_to(staging.root.resolve())
        assert staging.path("a/c/3.png").parent.is_dir()
    finally:
        staging.abort()
