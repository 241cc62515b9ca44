"""Decoding replays every adaptation step, so it must be exact on any machine.

We compress once in this process and decompress in subprocesses whose
threading, SIMD level, oneDNN ISA and MKL reproducibility mode all differ.
Any last-bit difference in a forward pass, gradient or Adam update would
change the probability tables of later batches and break the round trip.
The full matrix is `slow`; the default run takes a subset that still varies
every dimension.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, uncompressed_copy
from PIL import Image

from osoa_zip.adapt.engine import AdaptationConfig
from osoa_zip.archive import compress

SETTINGS = dict(model="idf-tiny-test",
                adaptation=AdaptationConfig(tile_size=16, batch_size=4,
                                            batch_pixels=0, learning_rate=2e-3, steps_per_batch=1),
                triage=False)  # the model path for every image the model can take

THREADS = ["1", "2"]
CAPABILITIES = ["default", "avx2", "avx512"]
ONEDNN_ISAS = ["SSE41", "AVX2", None]
MKL_MODES = ["COMPATIBLE", "AUTO"]
FULL_MATRIX = list(itertools.product(THREADS, CAPABILITIES, ONEDNN_ISAS, MKL_MODES))
SUBSET = [("1", "default", "SSE41", "COMPATIBLE"), ("2", "avx2", "AVX2", "AUTO"),
          ("2", "avx512", None, "COMPATIBLE"), ("2", "default", None, "AUTO")]


def _cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


# Forcing a SIMD level the CPU lacks kills the process with SIGILL; such
# combinations are skipped (they run on machines that have it).
REQUIRED_FLAG = {"default": None, "avx2": "avx2", "avx512": "avx512f"}


def _environment(threads, capability, onednn_isa, mkl_mode) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    env.update(OMP_NUM_THREADS=threads, ATEN_CPU_CAPABILITY=capability, MKL_CBWR=mkl_mode)
    if onednn_isa:
        env["ONEDNN_MAX_CPU_ISA"] = onednn_isa
    return env


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        if path.suffix == ".png":
            with Image.open(path) as image:
                digest.update(image.mode.encode() + repr(image.size).encode() + image.tobytes())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return uncompressed_copy(EXAMPLES, tmp_path_factory.mktemp("portability") / "examples")


# v5: one logistic per factor (table-built coder rows; the default of releases 1.3-1.4);
# v6: logistic mixtures (numpy-built coder rows; the default since release 1.5)
MODELS = {"tiny": "idf-tiny-test", "single": "idf-sublattice-v5", "mixture": "idf-sublattice-v6"}


def _compress_examples(source: Path, model: str) -> Path:
    path = source.parent / f"examples-{model}.osoa"
    if not path.exists():
        with open(path, "wb") as output:
            summary = compress([source], output, **dict(SETTINGS, model=model))
        assert len(summary.batches) >= 20, "the test must adapt over at least 20 batches"
    return path


@pytest.fixture(scope="module")
def archive(source) -> Path:
    return _compress_examples(source, MODELS["tiny"])


def _decode_under(archive: Path, tmp_path: Path, combination) -> Path:
    destination = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "osoa_zip", "decompress", "-q", str(archive), str(destination)],
                            env=_environment(*combination), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return destination


def _check(archive: Path, source: Path, tmp_path: Path, combination) -> None:
    flag = REQUIRED_FLAG[combination[1]]
    if flag and flag not in _cpu_flags():
        pytest.skip(f"this CPU has no {flag}")
    destination = _decode_under(archive, tmp_path, combination)
    assert _tree_digest(destination) == _tree_digest(source), f"decode differs under {combination}"
    shutil.rmtree(destination)


def _ids(value) -> str:
    """A test id part: a model's key as it is, an environment tuple joined by dashes."""
    return value if isinstance(value, str) else "-".join(str(x) for x in value)


@pytest.mark.parametrize("model, combination",
                         [("tiny", c) for c in SUBSET] + [(m, c) for m in ("single", "mixture") for c in SUBSET[:2]],
                         ids=_ids)
def test_decode_exact_in_other_environments(source, tmp_path, model, combination):
    _check(_compress_examples(source, MODELS[model]), source, tmp_path, combination)


@pytest.mark.slow
@pytest.mark.parametrize("model, combination", [(m, c) for m in MODELS for c in FULL_MATRIX], ids=_ids)
def test_decode_exact_full_matrix(source, tmp_path, model, combination):
    _check(_compress_examples(source, MODELS[model]), source, tmp_path, combination)


def test_mixture_decode_exact_without_numpy_simd(source, tmp_path):
    """The mixture coder builds its rows with numpy on the decode path: they must not depend on
    numpy's SIMD dispatch either (NPY_DISABLE_CPU_FEATURES turns every dispatched level off)."""
    umath = pytest.importorskip("numpy._core._multiarray_umath")  # numpy 2's name for it
    enabled = [name for name in umath.__cpu_dispatch__ if umath.__cpu_features__.get(name)]
    if not enabled:
        pytest.skip("numpy dispatches no SIMD level beyond its baseline on this CPU")
    archive = _compress_examples(source, MODELS["mixture"])
    destination = tmp_path / "out"
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(enabled)}
    result = subprocess.run([sys.executable, "-m", "osoa_zip", "decompress", "-q", str(archive), str(destination)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert _tree_digest(destination) == _tree_digest(source)


def test_encode_identical_in_other_environment(archive, source, tmp_path):
    """Same input -> same archive bytes, whatever the machine's SIMD level."""
    other = tmp_path / "again.osoa"
    code = ("import sys; from pathlib import Path; from osoa_zip.archive import compress; "
            "from osoa_zip.adapt.engine import AdaptationConfig; "
            f"compress([Path({str(source)!r})], open({str(other)!r}, 'wb'), model='idf-tiny-test', "
            "adaptation=AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=2e-3, "
            "steps_per_batch=1), triage=False)")
    result = subprocess.run([sys.executable, "-c", code], env=_environment("2", "default", "SSE41", "COMPATIBLE"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert other.read_bytes() == archive.read_bytes()
