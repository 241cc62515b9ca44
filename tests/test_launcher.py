"""The console entry's exit (launcher.py): once torch is loaded the process ends without the
interpreter's tear-down, with the status, the output and the messages a normal exit gives."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import EXAMPLES, MODEL, subprocess_env, uncompressed_copy

from osoa_zip.archive import compress
from osoa_zip.container.records import Batch


def _launch(*arguments, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "osoa_zip", *map(str, arguments)], input=stdin,
                          capture_output=True, env=subprocess_env(), timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return uncompressed_copy(EXAMPLES, tmp_path_factory.mktemp("launcher") / "images")


def test_an_archive_piped_out_is_whole(folder, tmp_path):
    """Written to a pipe after torch loaded: every byte is flushed before the quick exit."""
    result = _launch("compress", "-q", "--model", MODEL, folder, "-")
    assert result.returncode == 0, result.stderr
    expected = tmp_path / "expected.osoa"
    with open(expected, "wb") as output:
        compress([folder], output, model=MODEL)
    # HEAD names the writer's version, as here: the same bytes.
    assert result.stdout == expected.read_bytes()
    restored = _launch("decompress", "-q", "-", tmp_path / "out", stdin=result.stdout)
    assert restored.returncode == 0 and restored.stderr == b""


def test_an_error_after_the_model_loaded_keeps_its_status_and_one_line(folder, tmp_path):
    archive = tmp_path / "a.osoa"
    assert _launch("compress", "-q", "--model", MODEL, folder, archive).returncode == 0
    data = bytearray(archive.read_bytes())
    data[data.rindex(Batch.TAG) + 16] ^= 0xFF  # in the last image batch: the model has loaded when it fails
    archive.write_bytes(bytes(data))
    result = _launch("decompress", "-q", archive, tmp_path / "out")
    assert b"'BATC'" in result.stderr  # read after the group's table loaded the model
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("osoa-zip: error:"), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("code, status, message", [(None, 0, ""), (0, 0, ""), (3, 3, ""), ("gone", 1, "gone\n")])
def test_sys_exit_values_become_the_same_status(code, status, message):
    script = ("import sys, torch\nfrom osoa_zip.launcher import run_and_exit\n"
              f"def main():\n    print('out', end='')\n    sys.exit({code!r})\nrun_and_exit(main)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (status, "out", message)
