"""Children forked from a command's process, safely: one rule for every fork osoa-zip makes.

A fork copies the whole process, but only the thread that forked: a lock another thread held
at that moment stays held in the child for ever.  So osoa-zip forks only while no other
Python thread runs (``alone``).  The child must never return into the parent's code: an
exception handler, ``finally`` block or exit handler of the parent would run a second time
there (deleting a partial archive, say).  So the child runs one function and always ends
with ``os._exit``.  It ignores SIGINT (an interrupted command stops its children itself) and
closes every descriptor it inherited but those it needs, so that it holds no end of the
parent's other pipes (a worker would never see the end of its input) and writes to none of
the parent's files.  The parent watches it through a ``ForkedChild``, which answers as a
``subprocess.Popen`` does, so that the code around a child need not know how it was started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Callable, Iterable


def alone() -> bool:
    """Whether a fork now is safe: the system forks, and no other Python thread runs."""
    return hasattr(os, "fork") and threading.active_count() == 1


def fork_child(body: Callable[[], None], keep: Iterable[int]) -> int:
    """Fork; in the child run ``body`` with only descriptors 0-2 and ``keep`` open, then end
    it (status 0 if ``body`` returned, else 1).  Returns the child's pid, in the parent."""
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _close_descriptors_but(set(keep))
        body()
        status = 0
    finally:
        os._exit(status)


def _close_descriptors_but(keep: set[int]) -> None:
    start = 3
    for descriptor in sorted(keep):
        os.closerange(start, descriptor)
        start = descriptor + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))


class ForkedChild:
    """A forked child as ``subprocess.Popen`` shows one: ``poll``, ``wait``, ``kill``, ``returncode``."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"child {self.pid}", timeout)
            time.sleep(0.005)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
