"""Run the CLI in a subprocess: under resource limits, measuring its peak memory, or held
at a named point (osoa_zip/pause.py) until the test signals it.

`os.wait4` gives the rusage of that one child (RUSAGE_CHILDREN would mix in
every earlier subprocess of the test session).  The CLI is started by a small
launcher process, not forked from pytest: Linux counts a process's RSS before
its exec in ru_maxrss, so a child forked from a test session that has grown to
700 MB (models, coder tables) would report 700 MB whatever the CLI used.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

from conftest import subprocess_env

from osoa_zip.pause import VARIABLE as PAUSE_VARIABLE


def run_cli(*args, address_space: int | None = None, file_size: int | None = None, stdout=None,
            timeout: float = 600, env: dict | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m osoa_zip ARGS` with optional RLIMIT_AS / RLIMIT_FSIZE; (result, peak RSS in bytes).
    stdout: a file object to write to (e.g. /dev/full) instead of capturing it."""
    limits = json.dumps([address_space, file_size])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as report:
        command = [sys.executable, "-c", _LAUNCHER, limits, report.name, sys.executable, "-m", "osoa_zip",
                   *map(str, args)]
        process = subprocess.Popen(command, stdout=stdout if stdout is not None else out, stderr=err,
                                   env=env or subprocess_env(), start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
        timer.start()
        try:
            process.wait()
        finally:
            timer.cancel()
        status, peak_kib = json.loads(report.read() or "[9, 0]")
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command[4:], os.waitstatus_to_exitcode(status), out.read(),
                                             err.read().decode("utf-8", "replace"))
    return result, peak_kib * 1024


def start_paused(arguments, point: str, timeout: float = 300) -> subprocess.Popen:
    """Start `python -m osoa_zip ARGUMENTS` with the test-only pause at ``point`` and return it
    once it is paused there, for the test to signal it; stderr stays a pipe for what follows.

    The test fails (it does not skip) if the process ends, or has not paused within
    ``timeout`` seconds: then the moment the test is about never came."""
    process = subprocess.Popen([sys.executable, "-m", "osoa_zip", *map(str, arguments)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**subprocess_env(), PAUSE_VARIABLE: point})
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        before = []
        for line in process.stderr:  # warnings may come first
            if line.decode("utf-8", "replace").strip() == f"osoa-zip: test pause at {point}":
                return process
            before.append(line)
    finally:
        timer.cancel()
    code = process.wait()
    raise AssertionError(f"osoa-zip ended (exit {code}) without reaching {point!r}: {b''.join(before)!r}")


# argv: [limits as JSON, report file, command...]; runs the command as its child under the
# limits and writes [wait status, peak RSS in KiB] of that child to the report file.
_LAUNCHER = """
import json, os, resource, sys
address_space, file_size = json.loads(sys.argv[1])
pid = os.fork()
if pid == 0:
    if address_space is not None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    if file_size is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    os.execv(sys.argv[3], sys.argv[3:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[2], "w") as report:
    json.dump([status, usage.ru_maxrss], report)
"""
