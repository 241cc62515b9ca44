"""What a folder holds besides pixels survives, and what cannot be archived safely is skipped.

Users compare us with tar and zip: permissions, times, empty folders, links and
odd names must come back; links that leave the tree and special files must not
be followed; --files-from and partial extraction behave like tar's.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, subprocess_env
from measure import start_paused

from osoa_zip.adapt.engine import AdaptationConfig
from osoa_zip.archive import UsageError, compress, decompress
from osoa_zip.pause import VARIABLE as PAUSE_VARIABLE

SETTINGS = dict(model="idf-tiny-test", adaptation=AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0),
                triage=False)  # the model path for every image the model can take


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "src"
    (root / "sub" / "empty").mkdir(parents=True)
    (root / "imgs").mkdir()
    shutil.copy(EXAMPLES / "0000.png", root / "imgs" / "a.png")
    (root / "notes.txt").write_text("hello\n")
    os.chmod(root / "notes.txt", 0o640)
    os.utime(root / "notes.txt", ns=(978307200_123456789, 978307200_123456789))
    os.link(root / "notes.txt", root / "sub" / "same-notes.txt")
    os.link(root / "imgs" / "a.png", root / "imgs" / "same-a.png")
    os.symlink("../notes.txt", root / "sub" / "inside-link")
    os.symlink("/etc/passwd", root / "outside-link")
    os.symlink("../../elsewhere", root / "sub" / "escaping-link")
    os.mkfifo(root / "fifo")
    (root / os.fsdecode(b"caf\xe9-latin1.bin")).write_bytes(b"\x00\x01" * 500)
    os.chmod(root / "sub", 0o750)
    return root


def _describe(root: Path) -> dict:
    """kind, permission bits, mtime, link target and link count of every path."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = "link" if stat.S_ISLNK(info.st_mode) else "dir" if stat.S_ISDIR(info.st_mode) else "file"
        found[path.relative_to(root).as_posix()] = (
            kind, stat.S_IMODE(info.st_mode) if kind != "link" else None,
            info.st_mtime_ns if kind != "link" else None,
            os.readlink(path) if kind == "link" else None, info.st_nlink if kind == "file" else None)
    return found


def _round_trip(sources, tmp_path, warnings=None, **extract) -> Path:
    buffer = io.BytesIO()
    compress(sources, buffer, warn=(warnings.append if warnings is not None else lambda m: None), **SETTINGS)
    buffer.seek(0)
    destination = tmp_path / "out"
    decompress(buffer, destination, **extract)
    return destination


def test_metadata_links_and_names_survive(tree, tmp_path):
    warnings = []
    restored = _round_trip([tree], tmp_path, warnings)
    expected = _describe(tree)
    for skipped in ("fifo", "outside-link", "sub/escaping-link"):
        del expected[skipped]
    assert _describe(restored) == expected
    assert len(warnings) == 3 and all("skipping" in w for w in warnings)
    assert sum("fifo" in w for w in warnings) == 1
    assert (restored / "sub" / "same-notes.txt").stat().st_ino == (restored / "notes.txt").stat().st_ino


def test_names_decompress_would_refuse_are_skipped_with_a_warning(tmp_path):
    """A backslash (refused on restore, as a path separator elsewhere) is skipped, as a
    control character is, with one warning each; the rest is archived and restored."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "a\\b.txt").write_text("backslash\n")
    (root / "bell\a.txt").write_text("control\n")
    (root / "fine.txt").write_text("fine\n")
    warnings = []
    restored = _round_trip([root], tmp_path, warnings)
    assert sorted(p.name for p in restored.iterdir()) == ["fine.txt"]
    assert len(warnings) == 2 and any("backslash" in w for w in warnings) and any("control" in w for w in warnings)


def test_files_from_stores_paths_as_given(tree, tmp_path):
    listing = b"\0".join([b"src/imgs/a.png", b"src/notes.txt", b"./src/sub"]) + b"\0"
    archive = tmp_path / "listed.osoa"
    result = subprocess.run([sys.executable, "-m", "osoa_zip", "compress", "-q", "--model", "idf-tiny-test",
                             "--files-from", "-", "-0", str(archive)], input=listing, cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, result.stderr
    restored = tmp_path / "restored"
    result = subprocess.run([sys.executable, "-m", "osoa_zip", "decompress", "-q", str(archive), str(restored)],
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    names = {p.relative_to(restored).as_posix() for p in restored.rglob("*")}
    # sub/inside-link -> ../notes.txt leaves the listed folder src/sub, so it is skipped.
    assert names == {"src", "src/imgs", "src/imgs/a.png", "src/notes.txt", "src/sub", "src/sub/empty",
                     "src/sub/same-notes.txt"}


@pytest.mark.parametrize("listed", ["/etc/passwd", "../x", "a/../../b"])
def test_files_from_refuses_paths_that_leave(listed, tmp_path):
    command = [sys.executable, "-m", "osoa_zip", "compress", "--files-from", "-", str(tmp_path / "a.osoa")]
    result = subprocess.run(command,
                            input=listed.encode(), capture_output=True, text=False)
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert not (tmp_path / "a.osoa").exists()


def test_partial_extraction_restores_only_matches(tree, tmp_path):
    buffer = io.BytesIO()
    compress([tree], buffer, **SETTINGS)
    buffer.seek(0)
    restored = tmp_path / "out"
    summary = decompress(buffer, restored, patterns=["imgs/a.png", "sub"])
    # What was restored (imgs/a.png; hard links are not counted), not the 3 files decoded.
    assert summary.files == 1
    names = {p.relative_to(restored).as_posix() for p in restored.rglob("*")}
    assert names == {"imgs", "imgs/a.png", "sub", "sub/empty", "sub/same-notes.txt", "sub/inside-link"}
    assert (restored / "sub" / "same-notes.txt").read_text() == "hello\n"


def test_partial_extraction_with_no_match_is_a_usage_error(tree, tmp_path):
    with pytest.raises(UsageError):
        _round_trip([tree], tmp_path, patterns=["nothing-*"])
    assert not (tmp_path / "out").exists()


def test_byte_exact_restores_identical_bytes(tmp_path):
    """With --byte-exact every file comes back byte for byte, images included."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES, source)
    from PIL import Image
    with Image.open(EXAMPLES / "0001.png") as image:
        image.save(source / "recompressed.png", compress_level=1)  # cannot be reproduced: general path
    buffer = io.BytesIO()
    # The shipped model: the tiny test model codes these worse than PNG, so they would be stored.
    summary = compress([source], buffer, byte_exact=True, adaptation=AdaptationConfig(tile_size=32))
    assert summary.images >= 1
    buffer.seek(0)
    restored = tmp_path / "out"
    decompress(buffer, restored)
    for path in source.iterdir():
        assert (restored / path.name).read_bytes() == path.read_bytes(), path.name


def _noise_png(path: Path, seed: int) -> None:
    """Noise: PNG stores it at ~8 bits per sub-pixel, the model needs more."""
    import numpy as np
    from PIL import Image
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)


def _same_pixels(source: Path, restored: Path) -> None:
    import numpy as np
    from PIL import Image
    for path in source.iterdir():
        with Image.open(path) as a, Image.open(restored / path.name) as b:
            assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b)), path.name


def test_images_the_model_codes_badly_are_stored_as_files(tmp_path):
    """An archive is never much larger than its inputs: a group that codes larger than its
    files is stored as files (byte for byte)."""
    source = tmp_path / "src"
    source.mkdir()
    _noise_png(source / "noise1.png", 3)
    _noise_png(source / "noise2.png", 4)
    buffer = io.BytesIO()
    summary = compress([source], buffer, **SETTINGS)
    assert (summary.files, summary.images, summary.batches) == (2, 0, [])
    total = sum(p.stat().st_size for p in source.iterdir())
    (tmp_path / "empty").mkdir()
    empty = io.BytesIO()
    compress([tmp_path / "empty"], empty, **SETTINGS)  # the header and the framing (~0.8 kB)
    # + the entries' JSON: since 1.5 in a solid block's index (stored, as xz would not shrink them)
    assert len(buffer.getvalue()) <= total + len(empty.getvalue()) + 320
    restored = tmp_path / "out"
    decompress(io.BytesIO(buffer.getvalue()), restored)
    for path in source.iterdir():
        assert (restored / path.name).read_bytes() == path.read_bytes(), path.name


def test_images_the_model_codes_well_take_the_model_path(tmp_path):
    from conftest import uncompressed_copy
    source = uncompressed_copy(EXAMPLES, tmp_path / "src")
    buffer = io.BytesIO()
    summary = compress([source], buffer, **SETTINGS)
    images = len(list(source.iterdir()))
    assert summary.images == images and summary.batches
    assert len(buffer.getvalue()) < sum(p.stat().st_size for p in source.iterdir())
    restored = tmp_path / "out"
    decompress(io.BytesIO(buffer.getvalue()), restored)
    _same_pixels(source, restored)


def test_a_group_stored_as_files_leaves_no_adaptation_behind(tmp_path, monkeypatch):
    """One image per group: the noise group between two photos is stored as files and the
    adaptation it caused is rolled back, so the photos are coded with exactly the bits they
    get without it (and the decoder, which never sees that group, stays exact)."""
    from conftest import uncompressed_copy

    from osoa_zip import pack
    monkeypatch.setattr(pack, "MAX_GROUP_IMAGES", 1)
    photos = uncompressed_copy(EXAMPLES, tmp_path / "photos")
    first, last = sorted(photos.iterdir())[:2]
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(first, source / "a.png")
    _noise_png(source / "b.png", 3)
    shutil.copy(last, source / "c.png")
    without = tmp_path / "without"
    shutil.copytree(source, without)
    (without / "b.png").unlink()
    bits = {}
    for name, folder in (("with", source), ("without", without)):
        buffer = io.BytesIO()
        summary = compress([folder], buffer, **SETTINGS)
        assert summary.images == 2
        bits[name] = [batch.bits for batch in summary.batches]
        restored = tmp_path / f"out-{name}"
        decompress(io.BytesIO(buffer.getvalue()), restored)
        _same_pixels(folder, restored)
    assert bits["with"] == bits["without"]


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_ctrl_c_leaves_nothing_half_written(tmp_path, command):
    """SIGINT mid-way (a batch in the temporary archive, an entry in the staging folder):
    exit 130, one line, no archive, no temporary files, no partial folder."""
    from conftest import uncompressed_copy
    source = uncompressed_copy(EXAMPLES, tmp_path / "src")
    archive = tmp_path / "a.osoa"
    coding = ["--model", "idf-tiny-test", "--tile-size", "16", "--batch-size", "2", "--batch-pixels", "0"]
    if command == "decompress":
        subprocess.run([sys.executable, "-m", "osoa_zip", "compress", "-q", *coding, str(source), str(archive)],
                       check=True, env=subprocess_env())
        process = start_paused(["decompress", archive, tmp_path / "out"], "decompress-entry")
    else:
        process = start_paused(["compress", *coding, source, archive], "compress-batch")
    assert {p.name for p in tmp_path.iterdir()} - {"src", "a.osoa"}  # the temporary archive or staging folder
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.decode().splitlines() == ["osoa-zip: error: interrupted"]
    assert {p.name for p in tmp_path.iterdir()} == {"src"} | ({"a.osoa"} if command == "decompress" else set())


def _wait_until_imports_load(process, timeout: float = 120.0) -> bool:
    """Poll the process's memory map until numpy's core library is mapped (the command line's
    first heavy import; torch now loads only with a model, torch_loading.py).

    A fixed delay was flaky: on a loaded machine (or a fresh clone compiling its .pyc
    files) 0.3 s could land in the interpreter's own start-up, where Python itself
    prints the KeyboardInterrupt traceback before any of our code runs."""
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if "_multiarray_umath" in maps.read_text():
                return True
        except OSError:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5, 5.0])
def test_ctrl_c_while_starting_prints_no_traceback(tmp_path, delay):
    """SIGINT while the console script is still importing (numpy, Pillow, click), or just after (held at the
    test-only pause "loaded", where the launcher's handler is still in place, so the
    process cannot have finished): one line, exit 130."""
    script = Path(sys.executable).with_name("osoa-zip")
    if not script.is_file():
        pytest.skip("the console script is not installed beside this Python")
    if not Path("/proc/self/maps").is_file():
        pytest.skip("needs /proc to see when torch starts loading")
    process = subprocess.Popen([str(script), "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, PAUSE_VARIABLE: "loaded"})
    try:
        assert _wait_until_imports_load(process), "numpy was never seen loading"
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.decode().splitlines() if line != "osoa-zip: test pause at loaded"]
    assert lines == ["osoa-zip: error: interrupted"], stderr


def test_segments_restart_the_model(tmp_path):
    """With segments of one batch, every batch is coded by θ0: the same bits as --no-adapt."""
    from conftest import uncompressed_copy
    source = uncompressed_copy(EXAMPLES, tmp_path / "src")
    sizes = {}
    for name, config in {"segmented": AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, segment_batches=1),
                         "frozen": AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, adapt=False),
                         "adapted": AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0)}.items():
        buffer = io.BytesIO()
        summary = compress([source], buffer, model="idf-tiny-test", adaptation=config, triage=False)
        sizes[name] = [s.bits for s in summary.batches]
        buffer.seek(0)
        decompress(buffer, tmp_path / name)
    assert sizes["segmented"] == sizes["frozen"] != sizes["adapted"]
