"""Images read ahead on a helper thread (read_ahead.py), side planes packed beside the coding
(pack._SidePlanes): the archive is the same as reading each file when the compressor comes to
it, for any -T; a failure in the reader is the compressor's, with a one-line error and no
archive left behind."""
from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MODEL, assert_same_tree

from osoa_zip import compress, decompress, pack, read_ahead
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.cli import main
from osoa_zip.imaging.messages import between_captures, library_messages
from osoa_zip.read_ahead import ReadAhead

CONFIG = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0)


@pytest.fixture(autouse=True)
def every_file_read_ahead(monkeypatch):
    """The fixture tree's files are all small: here the reader takes every file."""
    monkeypatch.setattr(read_ahead, "READ_AHEAD_MIN_BYTES", 0)


class _InLine:
    """What compress did before the reader thread: each file read when the compressor takes it."""

    def __init__(self, items, read, **_) -> None:
        self._read = read

    def take(self, item):
        return self._read(item)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _archive(source, threads: int = 1) -> bytes:
    output = io.BytesIO()
    compress([source], output, model=MODEL, adaptation=CONFIG, threads=threads)
    return output.getvalue()


def test_reading_ahead_does_not_change_the_archive(source_tree, tmp_path, monkeypatch):
    """The fixture tree (RGB, grey, RGBA, LA and palette images, odd images and other files),
    with triage: read ahead as far as allowed, one file ahead, and in line, on 1 and 2 threads."""
    archives = {"ahead": _archive(source_tree), "ahead -T 2": _archive(source_tree, threads=2)}
    monkeypatch.setattr(pack, "ReadAhead", lambda items, read: ReadAhead(items, read, ahead_files=1))
    archives["one ahead"] = _archive(source_tree)
    monkeypatch.setattr(pack, "ReadAhead", _InLine)
    archives["in line"] = _archive(source_tree)
    archives["in line -T 2"] = _archive(source_tree, threads=2)
    assert len(set(archives.values())) == 1, {name: len(data) for name, data in archives.items()}
    decompress(io.BytesIO(archives["ahead"]), tmp_path / "out")
    assert_same_tree(source_tree, tmp_path / "out")


def test_files_read_ahead_or_in_line_by_size_give_the_same_archive(source_tree, monkeypatch):
    """Files below READ_AHEAD_MIN_BYTES are read when the compressor comes to them, the others
    on the reader thread: with the bound between the tree's sizes both kinds interleave."""
    sizes = sorted(path.stat().st_size for path in source_tree.rglob("*") if path.is_file())
    ahead = _archive(source_tree)
    taken = []
    real = ReadAhead

    def counting(items, read):
        taken.extend(items)
        return real(items, read)

    monkeypatch.setattr(pack, "ReadAhead", counting)
    monkeypatch.setattr(read_ahead, "READ_AHEAD_MIN_BYTES", sizes[len(sizes) // 2])
    assert _archive(source_tree) == ahead
    assert 0 < len(taken) < len(sizes)
    assert all(entry.size >= sizes[len(sizes) // 2] for entry in taken)
    monkeypatch.setattr(read_ahead, "READ_AHEAD_MIN_BYTES", 1 << 62)
    taken.clear()
    assert _archive(source_tree) == ahead and taken == []


def test_the_reader_keeps_order_and_its_bounds():
    reading = []
    gate = threading.Event()

    def read(item):
        reading.append(item)
        if item == 2:
            gate.wait(5)
        return f"record {item}"

    with ReadAhead(range(6), read, ahead_files=2) as reader:
        assert reader.take(0) == "record 0"
        assert reader.take(1) == "record 1"
        gate.set()
        assert [reader.take(item) for item in range(2, 6)] == [f"record {item}" for item in range(2, 6)]
    assert reading == list(range(6))
    with ReadAhead(["a", "b"], str.upper) as reader, pytest.raises(RuntimeError, match="out of order"):
        reader.take("b")


def test_an_error_in_the_reader_is_raised_at_its_file_and_close_frees_what_was_read():
    class Record:
        def __init__(self, item):
            self.pixel_file = self  # as a large image's record holds its pixels' file
            self.closed = False

        def close(self):
            self.closed = True

    made = []

    def read(item):
        if item == 3:
            raise OSError(5, "Input/output error", f"file{item}")
        made.append(Record(item))
        return made[-1]

    reader = ReadAhead(range(10), read, ahead_files=8)
    assert reader.take(0) is made[0]
    while len(made) < 3:
        threading.Event().wait(0.01)
    reader.close()  # records 1 and 2 were read and never taken
    assert [record.closed for record in made] == [False, True, True]
    with ReadAhead(range(10), read) as reader:
        assert [reader.take(item) for item in range(3)] == made[3:6]
        with pytest.raises(OSError, match="Input/output error"):
            reader.take(3)


@pytest.mark.parametrize("error, message", [
    (RuntimeError("reader thread failed"), "internal error (RuntimeError: reader thread failed)"),
    (OSError(5, "Input/output error", "images/0003.png"), "images/0003.png: Input/output error"),
])
def test_a_failure_in_the_reader_thread_is_one_line_and_leaves_no_archive(source_tree, tmp_path, monkeypatch,
                                                                          error, message):
    real = pack.read_image
    threads = set()

    def failing(path, *args, **kwargs):
        threads.add(threading.current_thread().name)
        if path.name == "0003.png":
            raise error
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pack, "read_image", failing)
    monkeypatch.delenv("OSOA_ZIP_DEBUG", raising=False)
    archive = tmp_path / "out.osoa"
    result = CliRunner().invoke(main, ["compress", "-q", "--model", MODEL, "--tile-size", "16",
                                       "--batch-size", "4", str(source_tree), str(archive)])
    assert threads == {"osoa-reader"}  # the files were read on the reader thread
    assert result.exit_code != 0
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("osoa-zip: error: ") and message in lines[0], lines
    assert not archive.exists() and list(tmp_path.iterdir()) == []


def test_progress_waits_for_a_capture_on_the_reader_thread(capfd):
    """What a progress report writes to descriptor 2 while the reader captures it for a file's
    notes reaches the terminal, not that file's notes (messages.between_captures)."""
    notes, inside, release = [], threading.Event(), threading.Event()

    def reader():
        with library_messages("photo.png", notes.append):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=reader)
    thread.start()
    inside.wait(5)
    threading.Timer(0.2, release.set).start()
    between_captures(lambda: os.write(2, b"progress 50%\n"))()
    thread.join()
    assert notes == []
    assert "progress 50%" in capfd.readouterr().err
    assert between_captures(None) is None


def test_the_reader_stops_at_its_pixel_bytes():
    """It reads one more file only while the pixels it holds are below the bound."""
    class Record:
        def __init__(self, item):
            self.pixels = np.zeros((10, 10, 1), np.uint8)  # 100 bytes

    reading = []

    def read(item):
        reading.append(item)
        return Record(item)

    with ReadAhead(range(8), read, ahead_bytes=150) as reader:
        while len(reading) < 2:
            threading.Event().wait(0.01)
        threading.Event().wait(0.2)
        assert reading == [0, 1]  # 0 bytes: read; 100 bytes: read; 200: wait
        reader.take(0)
        reader.take(1)
        assert [type(reader.take(item)) for item in range(2, 8)] == [Record] * 6


def test_a_failure_packing_side_planes_is_one_line_and_leaves_no_archive(source_tree, tmp_path, monkeypatch):
    """The alpha planes and palette indices are packed on a helper thread (pack._SidePlanes)."""
    threads = set()

    def failing(planes):
        threads.add(threading.current_thread().name)
        raise MemoryError("no room for the planes")

    monkeypatch.setattr(pack, "_packed_planes", failing)
    monkeypatch.delenv("OSOA_ZIP_DEBUG", raising=False)
    archive = tmp_path / "out.osoa"
    result = CliRunner().invoke(main, ["compress", "-q", "--model", MODEL, "--tile-size", "16",
                                       "--batch-size", "4", str(source_tree), str(archive)])
    assert threads and all(name.startswith("osoa-planes") for name in threads)
    lines = result.output.splitlines()
    assert result.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("osoa-zip: error: ") and "no room for the planes" in lines[0], lines
    assert list(tmp_path.iterdir()) == []
