"""What image libraries say about a file, caught and attributed to it.

Pillow warns through Python's `warnings` (UserWarning for a truncated or odd
file, DecompressionBombWarning, ...) and libtiff writes straight to file
descriptor 2 from C ("TIFFFillStrip: Read error ..."), so left alone both reach
the user's terminal with no word of which file they are about: a folder of
odd images printed ~170 such lines.  Around each image read or write both are
caught (the warnings recorded, descriptor 2 pointed at a temporary file) and
handed to a ``note`` callback, one line per distinct message, prefixed with
the file's name; the command line shows them only with -v.

Descriptor 2 and the warning filters belong to the whole process, so captures
take turns (a lock): whatever any thread writes to descriptor 2 while one runs
is attributed to that capture's file.  The compressor reads larger files on its
reader thread and small ones on the main thread (read_ahead.py), so their
captures take turns; coding threads only code, and the compressor's progress
reports wait for a capture to end (``between_captures``).
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

Note = Callable[[str], None]
MAX_CAPTURED_BYTES = 1 << 16  # a library that writes more about one file is summarised by its start

_TURN = threading.RLock()


@contextmanager
def library_messages(name: str, note: Note | None) -> Iterator[None]:
    """Catch what libraries say while the block runs; give ``note`` one line per distinct message
    (``name: message``), also when the block raises.  ``note`` None: they are dropped."""
    with _TURN:
        lines: list[str] = []
        try:
            with warnings.catch_warnings(record=True) as caught, _descriptor_2_captured(lines):
                warnings.simplefilter("always")
                yield
        finally:
            lines[:0] = [_warning_line(warning) for warning in caught]
            if note is not None:
                for line in dict.fromkeys(line for line in lines if line):  # each once, in order
                    note(f"{name}: {line}")


def between_captures(callback: Callable | None) -> Callable | None:
    """``callback``, called only while no capture runs: what it writes to descriptor 2 (a
    progress bar, say) then reaches the terminal, not the notes of a file another thread
    reads meanwhile (read_ahead.py)."""
    if callback is None:
        return None

    def call(*arguments, **keywords):
        with _TURN:
            return callback(*arguments, **keywords)
    return call


def _warning_line(warning: warnings.WarningMessage) -> str:
    return " ".join(f"{warning.category.__name__}: {warning.message}".split())


@contextmanager
def _descriptor_2_captured(lines: list[str]) -> Iterator[None]:
    """Point descriptor 2 at a capture file while the block runs, then append its lines."""
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to catch
        yield
        return
    capture = _capture_file()
    try:
        _flush_python_stderr()
        os.dup2(capture, 2)
        try:
            yield
        finally:
            _flush_python_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            text = os.pread(capture, MAX_CAPTURED_BYTES, 0).decode("utf-8", "replace")
            lines.extend(" ".join(line.split()) for line in text.splitlines())
    finally:
        _give_back(capture)


# Capture files kept for the next capture: creating a temporary file is most of a capture's
# cost, paid per image file read or written.  Each is emptied before it is handed out again;
# a nested capture (the lock is re-entrant) takes another.  Owned by the process that made
# them: a forked child closes its copies at once (they share the parent's file offsets), before
# anything it opens could take their numbers.
_SPARE: list[int] = []


def _forget_spares() -> None:
    for inherited in _SPARE:
        try:
            os.close(inherited)
        except OSError:
            pass
    _SPARE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_spares)


def _capture_file() -> int:
    """An empty temporary file's descriptor, at offset 0 (taken under _TURN)."""
    if _SPARE:
        return _SPARE.pop()
    with tempfile.TemporaryFile(prefix="osoa-zip-stderr-") as made:
        return os.dup(made.fileno())


def _give_back(capture: int) -> None:
    """Empty a capture file and keep it for the next capture (or close it, if that fails)."""
    try:
        os.ftruncate(capture, 0)
        os.lseek(capture, 0, os.SEEK_SET)
    except OSError:
        os.close(capture)
        return
    _SPARE.append(capture)


def _flush_python_stderr() -> None:
    """Python's own buffered writes belong to the side of the redirect they were made on."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
