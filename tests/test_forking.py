"""Children forked from a command's process (forking.py): they keep only the descriptors they
are given, ignore SIGINT, and never return into the parent's code, whatever their body does."""
from __future__ import annotations

import os
import signal
import threading

from osoa_zip.forking import alone, fork_child


def _status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _open_in_child(descriptors: list[int], keep: list[int]) -> list[bool]:
    reading, writing = os.pipe()

    def body() -> None:
        opened = []
        for descriptor in descriptors:
            try:
                os.fstat(descriptor)
                opened.append(True)
            except OSError:
                opened.append(False)
        os.write(writing, bytes(opened))
    pid = fork_child(body, [writing, *keep])
    os.close(writing)
    answer = os.read(reading, 64)
    os.close(reading)
    assert _status(pid) == 0
    return [bool(value) for value in answer]


def test_the_child_keeps_only_the_descriptors_it_is_given(tmp_path):
    kept_reading, kept_writing = os.pipe()
    other_reading, other_writing = os.pipe()
    with open(tmp_path / "archive", "wb") as archive:
        descriptors = [0, 1, 2, kept_reading, kept_writing, other_reading, other_writing, archive.fileno()]
        opened = _open_in_child(descriptors, keep=[kept_reading, kept_writing])
    assert opened == [True, True, True, True, True, False, False, False]
    for descriptor in (kept_reading, kept_writing, other_reading, other_writing):
        os.fstat(descriptor)  # the parent's are all still open
        os.close(descriptor)


def test_the_child_never_returns_into_the_parent(tmp_path):
    parent = os.getpid()
    returned = tmp_path / "returned"

    def failing() -> None:
        raise RuntimeError("in the child")
    for body, status in ((failing, 1), (lambda: None, 0)):
        pid = fork_child(body, [])
        if os.getpid() != parent:  # only a child that came back here would run this
            returned.write_text("yes")
            os._exit(5)
        assert _status(pid) == status
    assert not returned.exists()


def test_the_child_ignores_sigint():
    reading, writing = os.pipe()

    def body() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.write(writing, b"still here")
    pid = fork_child(body, [writing])
    os.close(writing)
    assert os.read(reading, 64) == b"still here"
    os.close(reading)
    assert _status(pid) == 0


def test_alone_only_without_other_threads():
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert not alone()
    finally:
        release.set()
        thread.join()
