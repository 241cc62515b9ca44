"""Run the CLI in a subprocess under resource limits and measure its peak memory.

`os.wait4` gives the rusage of that one child (RUSAGE_CHILDREN would mix in
every earlier subprocess of the test session).
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading

from conftest import subprocess_env


def run_cli(*args, address_space: int | None = None, file_size: int | None = None, stdout=None,
            timeout: float = 600, env: dict | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m osoa_zip ARGS` with optional RLIMIT_AS / RLIMIT_FSIZE; (result, peak RSS in bytes).
    stdout: a file object to write to (e.g. /dev/full) instead of capturing it."""
    def limits():
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([sys.executable, "-m", "osoa_zip", *map(str, args)],
                                   stdout=stdout if stdout is not None else out, stderr=err,
                                   env=env or subprocess_env(), preexec_fn=limits)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(process.args, process.returncode, out.read(),
                                             err.read().decode("utf-8", "replace"))
    return result, usage.ru_maxrss * 1024
