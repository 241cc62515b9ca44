"""Start-up: commands that need no model never import torch (it is most of the start-up time).

Each command runs in a fresh interpreter (the way users run it) through a wrapper
that reports, after the command returns, whether torch was imported.
"""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, MODEL, subprocess_env, uncompressed_copy
from PIL import Image

from osoa_zip import compress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.coding import native
from osoa_zip.table import read_table

# Runs the command line's main() and prints whether torch was loaded, then exits with its code.
WRAPPER = """
import sys
from osoa_zip.cli import main
code = 0
try:
    main(sys.argv[1:], prog_name="osoa-zip")
except SystemExit as end:
    code = end.code
print("torch loaded" if "torch" in sys.modules else "torch not loaded", file=sys.stderr)
sys.exit(code)
"""


def run_wrapped(*args) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, args)], capture_output=True,
                            env=subprocess_env(), timeout=300)
    return result.returncode, result.stderr.decode()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """An archive without model-coded images (text files and a palette image, whose indices
    are stored beside the model), and one with them."""
    folder = tmp_path_factory.mktemp("startup")
    plain = folder / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("".join(f"line {i}\n" for i in range(300)))
    (plain / "empty.bin").write_bytes(b"")
    indices = (np.arange(64 * 64).reshape(64, 64) // 7 % 5).astype(np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    palette.save(plain / "palette.png", compress_level=0)
    config = AdaptationConfig(tile_size=16, batch_size=4)
    made = {}
    for name, sources in (("plain", [plain]), ("images", [uncompressed_copy(EXAMPLES, folder / "images")])):
        output = io.BytesIO()
        compress(sources, output, model=MODEL, adaptation=config)
        made[name] = folder / f"{name}.osoa"
        made[name].write_bytes(output.getvalue())
    with open(made["plain"], "rb") as handle:
        methods = {entry.name: entry.method for entry in read_table(handle)[1]}
    with open(made["images"], "rb") as handle:
        image_methods = {entry.method for entry in read_table(handle)[1]}
    assert methods["palette.png"] != methods["notes.txt"]  # the palette image took the image path
    assert "model" in image_methods
    return made


@pytest.mark.parametrize("command", [["--help"], ["compress", "--help"], ["list", "ARCHIVE"], ["info", "ARCHIVE"],
                                     ["test", "ARCHIVE"], ["decompress", "ARCHIVE", "OUT"]])
def test_commands_without_a_model_never_import_torch(archives, tmp_path, command):
    args = [archives["plain"] if a == "ARCHIVE" else tmp_path / "out" if a == "OUT" else a for a in command]
    code, stderr = run_wrapped(*args)
    assert code == 0, stderr
    assert stderr.splitlines()[-1] == "torch not loaded", stderr
    if command[0] == "decompress":
        assert (tmp_path / "out" / "notes.txt").read_text().startswith("line 0\n")
        assert Image.open(tmp_path / "out" / "palette.png").mode == "P"


def test_an_archive_of_model_coded_images_does_load_torch(archives):
    code, stderr = run_wrapped("test", archives["images"])
    assert code == 0, stderr
    assert stderr.splitlines()[-1] == "torch loaded", stderr


def test_an_interrupt_while_torch_loads_is_an_interrupt():
    """Whatever torch's C extension makes of the KeyboardInterrupt, it comes out as one."""
    script = """
import os, signal, time
from osoa_zip import torch_loading
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may have inherited SIG_IGN
try:
    with torch_loading._importing():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise TypeError("expected a message argument") from None
except KeyboardInterrupt:
    print("interrupted")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=subprocess_env(), timeout=60)
    assert result.stdout.decode().strip() == "interrupted", result.stderr.decode()


# Compresses the folder argv[1] (idf-tiny-test-e2: engine 2, whose forward has a compiled loop) and
# decodes it again, with the compiled loops' thresholds as they are or, with argv[2] == "always", at
# zero; prints the archive's bytes (hex), the decoded pixels' digest and whether numba was imported.
SMALL_JOB = """
import hashlib, io, sys, tempfile
from pathlib import Path
from PIL import Image
from osoa_zip import compress, decompress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.coding import native
from osoa_zip.coding import native
if sys.argv[2] == "always":
    native.COMPRESS_MIN_BYTES = native.DECODE_MIN_SUBPIXELS = 0
output = io.BytesIO()
compress([Path(sys.argv[1])], output, model="idf-tiny-test-e2", adaptation=AdaptationConfig(tile_size=16, batch_size=4))
digest = hashlib.sha256()
with tempfile.TemporaryDirectory() as folder:
    decompress(io.BytesIO(output.getvalue()), Path(folder) / "out")
    for path in sorted((Path(folder) / "out").rglob("*.png")):
        digest.update(path.name.encode() + Image.open(path).tobytes())
print(output.getvalue().hex(), digest.hexdigest(), "numba" in sys.modules)
"""


@pytest.mark.skipif(not native.ENABLED, reason="numba (the fast extra) is not installed")
def test_a_small_job_codes_the_same_bytes_without_loading_numba(tmp_path):
    """Below the thresholds numba is not even imported (its start-up costs more than its loops
    save there); the archive and the decoded pixels are those of the compiled loops."""
    images = uncompressed_copy(EXAMPLES, tmp_path / "images")
    size = sum(path.stat().st_size for path in images.iterdir())
    assert size < native.COMPRESS_MIN_BYTES
    outcomes = {}
    for mode in ("as-is", "always"):
        result = subprocess.run([sys.executable, "-c", SMALL_JOB, str(images), mode], capture_output=True,
                                env=subprocess_env(), timeout=600)
        assert result.returncode == 0, result.stderr.decode()
        outcomes[mode] = result.stdout.decode().split()
    assert outcomes["as-is"][2] == "False" and outcomes["always"][2] == "True"
    assert outcomes["as-is"][:2] == outcomes["always"][:2]


def test_the_compiled_loops_pay_only_past_the_announced_work(monkeypatch):
    """available() loads numba only when the work announced so far reaches a threshold; once
    loaded it stays in use; a process that announced nothing uses it."""
    monkeypatch.setattr(native, "ENABLED", True)
    monkeypatch.setattr(native, "_loaded", False)
    loads = []
    monkeypatch.setattr(native, "_load", lambda: loads.append(1))
    for name, value in (("_worth", True), ("_compress_bytes", 0), ("_decode_subpixels", 0)):
        monkeypatch.setattr(native, name, value)
    assert native.available() and loads == [1]  # nothing announced: a library caller
    native.expect_compress(native.COMPRESS_MIN_BYTES - 1)
    assert not native.available() and loads == [1]
    native.expect_decode(native.DECODE_MIN_SUBPIXELS - 1)
    assert not native.available()
    native.expect_decode(1)  # the groups so far reach the threshold
    assert native.available() and loads == [1, 1]
    monkeypatch.setattr(native, "_worth", True)
    monkeypatch.setattr(native, "_compress_bytes", 0)
    monkeypatch.setattr(native, "_decode_subpixels", 0)
    native.expect_compress(native.COMPRESS_MIN_BYTES)
    assert native.available()
    monkeypatch.setattr(native, "_loaded", True)
    native.expect_decode(0)
    monkeypatch.setattr(native, "_worth", False)
    assert native.available()  # loaded: used whatever comes
    monkeypatch.setattr(native, "ENABLED", False)
    assert not native.available()


def test_the_first_model_load_leaves_torch_and_the_model_to_reference_counting():
    """After torch and the model are in, the cyclic collector no longer walks their objects
    (gc.freeze): each full collection over them cost 60-70 ms.  It still runs for the rest."""
    script = ("import gc\nfrom osoa_zip.torch_loading import load_model\n"
              "before = gc.get_freeze_count()\n"
              f"load_model({MODEL!r})\n"
              "print(before, gc.get_freeze_count(), gc.isenabled())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    before, after, enabled = result.stdout.split()
    assert int(before) == 0 and int(after) > 100_000 and enabled == "True"


def test_the_command_line_starts_no_openblas_threads(tmp_path):
    """numpy's OpenBLAS would start a spinning thread per core at import; the command line makes
    no BLAS call through numpy, so it asks for one thread (inherited by its worker process)."""
    script = ("import os, sys\nfrom osoa_zip import launcher\n"
              "launcher.run_and_exit = lambda main: print(os.environ['OPENBLAS_NUM_THREADS'],"
              " 'numpy' in sys.modules, len(os.listdir('/proc/self/task')))\n"
              "launcher.run()\n")
    environment = {key: value for key, value in subprocess_env().items() if key != "OPENBLAS_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True", "1"]
