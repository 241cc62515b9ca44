"""Faults from outside: SIGKILL mid-way, a full disk, a missing or altered checkpoint.

A killed process cannot clean up, so what matters is that nothing it leaves
looks complete: compress writes `.NAME.XXXXXXXX.part` beside the archive and
renames it at the end; decompress stages a new DEST in
`.DEST.osoa-zip-XXXXXXXX.part` beside it (or, into an existing DEST, in
`DEST/.osoa-zip-XXXXXXXX`) and renames at the end.  Errors are one line and
leave nothing behind.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from conftest import EXAMPLES, MODEL, subprocess_env, uncompressed_copy
from measure import run_cli, start_paused

from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.archive import ModelError, compress, decompress
from osoa_zip.models.registry import MANIFEST, available_models

CODING = ["--model", MODEL, "--tile-size", "16", "--batch-size", "2", "--batch-pixels", "0",
          "--every-image"]  # the model path for every image (no triage)
ARCHIVE_PART = re.compile(r"^\.a\.osoa\.[A-Za-z0-9_]{8}\.part$")
DEST_PART = re.compile(r"^\.dest\.osoa-zip-[A-Za-z0-9_]{8}\.part$")
STAGING = re.compile(r"^\.osoa-zip-[A-Za-z0-9_]{8}$")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Images the tiny model codes (the model path), and a plain file that comes first
    (so a full disk fails early, and decompress restores it before any image)."""
    root = tmp_path_factory.mktemp("faults") / "src"
    for copy in range(2):
        uncompressed_copy(EXAMPLES, root / f"copy{copy}")
    (root / "aaa.bin").write_bytes(os.urandom(60_000))
    return root


@pytest.fixture(scope="module")
def archive(source, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults-archive") / "a.osoa"
    result, _ = run_cli("compress", "-q", *CODING, source, path)
    assert result.returncode == 0, result.stderr
    return path


def _killed(process) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stderr.close()


def test_sigkill_during_compress_leaves_no_archive(source, tmp_path):
    """Killed once a batch of coded images is in the temporary archive: only that remains."""
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "a.osoa"
    process = start_paused(["compress", *CODING, source, archive], "compress-batch")
    parts = [p for p in work.iterdir() if ARCHIVE_PART.match(p.name)]
    assert len(parts) == 1  # the work was under way (its first chunks may still be in the writer's buffer)
    _killed(process)
    assert not archive.exists()
    assert [p.name for p in work.iterdir()] == [parts[0].name]  # recognisably temporary


@pytest.mark.parametrize("existing", [False, True], ids=["new-dest", "existing-dest"])
def test_sigkill_during_decompress_leaves_nothing_that_looks_restored(archive, tmp_path, existing):
    """Killed once an entry is restored into the staging folder: only that folder remains."""
    work = tmp_path / "work"
    destination = work / "dest"
    destination.mkdir(parents=True)
    if existing:
        (destination / "mine.txt").write_text("mine")
    else:
        destination.rmdir()
    process = start_paused(["decompress", archive, destination], "decompress-entry")
    folder, pattern = (destination, STAGING) if existing else (work, DEST_PART)
    staged = [p for p in folder.iterdir() if pattern.match(p.name)]
    assert len(staged) == 1 and any(staged[0].rglob("*")), staged  # an entry is restored in it
    _killed(process)
    if existing:
        left = sorted(p.name for p in destination.iterdir())
        assert left == sorted(["mine.txt", staged[0].name]), left
    else:
        assert not destination.exists()
        assert [p.name for p in work.iterdir()] == [staged[0].name]


# -- a full disk -----------------------------------------------------------------

def _assert_one_line(result, code=1) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("osoa-zip: error: "), result.stderr
    return lines[0]


def test_full_disk_during_compress(source, tmp_path):
    """RLIMIT_FSIZE makes writes fail with EFBIG, as a full disk fails with ENOSPC."""
    archive = tmp_path / "a.osoa"
    result, _ = run_cli("compress", *CODING, source, archive, file_size=20_000)
    line = _assert_one_line(result)
    assert "a.osoa" in line and "too large" in line
    assert sorted(tmp_path.iterdir()) == []


def test_full_disk_on_standard_output(source, tmp_path):
    with open("/dev/full", "wb") as full:
        result, _ = run_cli("compress", *CODING, source, "-", stdout=full)
    line = _assert_one_line(result)
    assert "standard output" in line and "No space left" in line


@pytest.mark.parametrize("existing", [False, True], ids=["new-dest", "existing-dest"])
def test_full_disk_during_decompress(archive, tmp_path, existing):
    destination = tmp_path / "dest"
    if existing:
        destination.mkdir()
        (destination / "mine.txt").write_text("mine")
    result, _ = run_cli("decompress", archive, destination, file_size=30_000)
    line = _assert_one_line(result)
    assert "restoring" in line and "too large" in line
    if existing:
        assert sorted(p.name for p in destination.iterdir()) == ["mine.txt"]
    else:
        assert sorted(tmp_path.iterdir()) == []


# -- the checkpoint ----------------------------------------------------------------

@pytest.fixture
def models_copy(tmp_path, monkeypatch) -> Path:
    """A private model folder ($OSOA_ZIP_MODELS, searched first) holding the test model."""
    entry = available_models()[MODEL]
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(Path(entry["directory"]) / entry["file"], folder / entry["file"])
    manifest = {"models": {MODEL: {k: v for k, v in entry.items() if k != "directory"}}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setenv("OSOA_ZIP_MODELS", str(folder))
    return folder


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> bytes:
    """One model-coded image: decoding it needs the model (an archive without model-coded
    images is restored without loading it)."""
    output = io.BytesIO()
    source = uncompressed_copy(EXAMPLES, tmp_path_factory.mktemp("faults") / "images") / "0008.png"
    compress([source], output, model=MODEL, adaptation=AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0),
             triage=False)
    return output.getvalue()


@pytest.mark.parametrize("fault", ["modified", "missing", "truncated"])
def test_bad_checkpoint_names_the_model_and_its_hash(models_copy, small_archive, tmp_path, fault):
    entry = available_models()[MODEL]
    checkpoint = models_copy / entry["file"]
    if fault == "modified":
        data = bytearray(checkpoint.read_bytes())
        data[len(data) // 2] ^= 0x01
        checkpoint.write_bytes(bytes(data))
    elif fault == "missing":
        checkpoint.unlink()
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    for attempt in (lambda: decompress(io.BytesIO(small_archive), tmp_path / "dest"),
                    lambda: compress([EXAMPLES / "0008.png"], io.BytesIO(), model=MODEL)):
        with pytest.raises(ModelError) as caught:
            attempt()
        message = str(caught.value)
        assert repr(MODEL) in message and entry["sha256"] in message and "\n" not in message
    assert not (tmp_path / "dest").exists()
    path = tmp_path / "a.osoa"
    path.write_bytes(small_archive)
    result, _ = run_cli("decompress", path, tmp_path / "dest",
                        env={**subprocess_env(), "OSOA_ZIP_MODELS": str(models_copy)})
    assert entry["sha256"] in _assert_one_line(result)
    assert not (tmp_path / "dest").exists()
