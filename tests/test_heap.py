"""glibc's heap for batch after batch (heap.py): freed blocks stay for the next batch.

A process that allocates and frees the same few-MB blocks over and over (a batch's tensors)
page-faulted every one of them in again once glibc handed its heap's top back; with the
command line's settings it faults none.  Process-wide settings: each case runs in a fresh
interpreter.  Linux with glibc only (where the settings apply)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import subprocess_env

from osoa_zip import heap

pytestmark = pytest.mark.skipif(heap._LIBC is None, reason="glibc's mallopt only")

# Ten rounds of twelve blocks of 3-7 MB (~60 MB), each written and freed: the page faults.
ROUNDS = """
import resource
import numpy as np

def batch():
    blocks = [np.ones((3 + i % 5) << 20, dtype=np.uint8) for i in range(12)]
    del blocks

batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _environment(**settings: str) -> dict[str, str]:
    """The tests' environment without glibc's MALLOC_* variables (a Dask LocalCluster in an
    earlier test leaves MALLOC_TRIM_THRESHOLD_ in this process's), plus ``settings``."""
    kept = {key: value for key, value in subprocess_env().items() if not key.startswith("MALLOC_")}
    return {**kept, **settings}


def _faults(setup: str, environment: dict | None = None) -> int:
    result = subprocess.run([sys.executable, "-c", setup + ROUNDS], capture_output=True, text=True,
                            env=environment or _environment(), timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_freed_blocks_are_kept_for_the_next_round():
    alone = _faults("")
    kept = _faults("from osoa_zip import heap\nassert heap.keep_freed_blocks()\n")
    assert alone > 10_000  # glibc's own thresholds: the rounds fault their pages in again
    assert kept < 1_000


def test_the_command_line_and_its_worker_keep_freed_blocks():
    """The command line's process sets it before anything else (launcher.run), the worker
    process at its start (adapt/parts.main; its serving loop and exit left out here)."""
    launched = "from osoa_zip import launcher\nlauncher.run_and_exit = lambda main: None\nlauncher.run()\n"
    assert _faults(launched) < 1_000
    worker = ("import os, sys\nfrom osoa_zip.adapt import parts\n"
              "parts._serve = lambda *arguments: None\nos._exit = lambda status: None\n"
              "parts.main(['model', 'sha256', '{}', 'encode'])\nsys.stdout = sys.__stdout__\n")
    assert _faults(worker) < 1_000


def test_the_users_malloc_settings_are_left_alone():
    environment = _environment(MALLOC_TRIM_THRESHOLD_=str(128 * 1024))
    assert _faults("from osoa_zip import heap\nassert not heap.keep_freed_blocks()\n", environment) > 10_000
