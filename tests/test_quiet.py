"""Quiet, attributable output (issue #17): what image libraries say about a file never
reaches the terminal by default; with -v each message is one line naming its file.

A folder of odd images (a TIFF whose LZW strips are garbled, so that libtiff writes
from C straight to descriptor 2; a truncated TIFF, which makes Pillow warn) is run
through the command line in a subprocess, with stderr a pipe, as a script would.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from conftest import EXAMPLES, MODEL, assert_same_tree, subprocess_env
from PIL import Image

from osoa_zip.imaging.messages import library_messages

CODING = ["--model", MODEL, "--tile-size", "16", "--batch-size", "4", "--batch-pixels", "0",
          "--every-image"]  # the model path for every image (no triage)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "osoa_zip.cli", *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd") / "src"
    root.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "lzw.tif", compression="tiff_lzw")
    garbled = bytearray((root / "lzw.tif").read_bytes())
    for offset in range(200, 1200, 7):  # inside the strips: libtiff's LZW decoder complains (C, to fd 2)
        garbled[offset] ^= 0xFF
    (root / "garbled.tif").write_bytes(bytes(garbled))
    (root / "truncated.tif").write_bytes((root / "lzw.tif").read_bytes()[:6000])  # Pillow warns (Python)
    (root / "lzw.tif").unlink()
    with Image.open(EXAMPLES / "0001.png") as image:  # an ordinary image: takes the model path
        image.crop((0, 0, 32, 32)).save(root / "fine.png", compress_level=0)
    (root / "notes.txt").write_text("beside the images\n" * 20)
    return root


def _library_lines(root) -> dict[str, list[str]]:
    """What the libraries say about each file when nothing catches it (the test's own reference)."""
    said = {}
    for path in sorted(root.iterdir()):
        lines = []
        with library_messages(path.name, lines.append):
            try:
                with Image.open(path) as image:
                    image.load()
            except Exception:  # noqa: BLE001 — broken on purpose
                pass
        said[path.name] = lines
    return said


def test_the_odd_folder_makes_libraries_talk(odd_folder):
    """The premise of the tests below: both kinds of message really happen on this folder."""
    said = _library_lines(odd_folder)
    assert said["garbled.tif"] and not any("Warning" in line for line in said["garbled.tif"])  # C-level
    assert any("UserWarning" in line for line in said["truncated.tif"])  # a Python warning
    assert said["fine.png"] == [] and said["notes.txt"] == []


def test_default_run_writes_nothing_to_stderr(odd_folder, tmp_path):
    archive = tmp_path / "odd.osoa"
    result = run_cli("compress", odd_folder, archive, *CODING)
    assert (result.returncode, result.stderr) == (0, "")
    result = run_cli("decompress", archive, tmp_path / "out")
    assert (result.returncode, result.stderr) == (0, "")
    assert_same_tree(odd_folder, tmp_path / "out")
    for name in ("garbled.tif", "truncated.tif", "notes.txt"):  # odd images are files: byte-exact
        assert (tmp_path / "out" / name).read_bytes() == (odd_folder / name).read_bytes()
    listing = run_cli("list", archive)
    assert listing.returncode == 0 and any(line.startswith("image") and "fine.png" in line
                                           for line in listing.stdout.splitlines())


def test_verbose_names_the_file_of_every_message_once(odd_folder, tmp_path):
    result = run_cli("compress", odd_folder, tmp_path / "odd.osoa", *CODING, "-v")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    notes = [line for line in lines if line.startswith("osoa-zip: note: ")]
    assert len(notes) == len(set(notes))  # each message once
    assert all(line.startswith(("osoa-zip: note: ", "compressed ", "  batch ")) for line in lines), lines
    for name in ("garbled.tif", "truncated.tif"):
        about = [line for line in notes if line.startswith(f"osoa-zip: note: {odd_folder / name}: ")]
        assert about, (name, notes)
    assert not any("fine.png" in line or "notes.txt" in line for line in notes)
    assert any("UserWarning" in line for line in notes if "truncated.tif" in line)
    assert any(line.startswith("compressed ") for line in lines)  # the summary, asked for


def test_osoa_zips_own_warnings_still_print(odd_folder, tmp_path):
    """Quiet is for the libraries: osoa-zip's own warnings and errors are still shown."""
    result = run_cli("compress", odd_folder / "garbled.tif", odd_folder / "no-such-file", tmp_path / "x.osoa",
                     *CODING)
    assert result.returncode == 2 and result.stderr.startswith("osoa-zip: error:") and "no-such-file" in result.stderr


def test_captures_take_turns_across_threads():
    """Descriptor 2 is the whole process's: captures on worker threads never mix their files' messages."""
    seen: dict[str, list[str]] = {}

    def read(name: str) -> None:
        lines = seen.setdefault(name, [])
        with library_messages(name, lines.append):
            for _ in range(20):
                os.write(2, f"C says {name}\n".encode())
                warnings.warn(f"Python says {name}", UserWarning, stacklevel=1)

    threads = [threading.Thread(target=read, args=(f"file{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, lines in seen.items():
        assert lines == [f"{name}: UserWarning: Python says {name}", f"{name}: C says {name}"]


def test_messages_are_noted_even_when_the_read_fails():
    lines = []
    with pytest.raises(ValueError), library_messages("broken.tif", lines.append):
        os.write(2, b"TIFFReadDirectory: bad\n")
        raise ValueError("unreadable")
    assert lines == ["broken.tif: TIFFReadDirectory: bad"]
