"""Files read as images ahead of the compressor, on a helper thread: the same records, in order.

Why: reading and checking an image (decoding it, writing it back the way the decoder will
and comparing) is work the model does not need until triage asks for the image, and for
a file of some size Pillow, zlib and hashlib release the GIL for most of it, so with a
second core the reads run beside triage and the coding of an earlier group.  A small
file's read is mostly Python holding the GIL: beside the main thread it only adds
hand-overs, so files under READ_AHEAD_MIN_BYTES are read when the compressor comes to
them (``reads_ahead``).  Nothing depends on when a file was read, so the archive is the
same.

The compressor takes the records in scan order (``take``); the reader stays at most
AHEAD_FILES files and AHEAD_PIXEL_BYTES bytes of pixels ahead of it (in memory, or for a
large image in its pixel file), and reads one file more only while it is below both.  An
exception in the reader is raised in the compressor when it takes that file's record, as
if it had read the file itself; ``close`` stops the reader and frees what it read that
nobody took.

The reader starts once torch is imported (pack.compress): a capture of what Pillow says
(imaging/messages.py) swaps the process's warning filters for its duration, and would
throw away the filters torch's import installs meanwhile.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np

AHEAD_FILES = 64
READ_AHEAD_MIN_BYTES = 16 << 10
AHEAD_PIXEL_BYTES = 16 << 20  # half a group's pixels (layout.GROUP_SUBPIXELS): memory grows little

Item = TypeVar("Item")
Record = TypeVar("Record")


def reads_ahead(entry) -> bool:
    """Whether a file is worth reading on the helper thread: reading a small one is mostly
    Python holding the GIL, so beside the main thread it only adds hand-overs (on 128 grey
    32 x 32 PNGs, 13% more CPU for the whole compress); a larger one's decoding and zlib
    release it."""
    return entry.size >= READ_AHEAD_MIN_BYTES


class ReadAhead(Generic[Item, Record]):
    """``read(item)`` for every item, in order, on a helper thread; ``take`` them in the same order."""

    def __init__(self, items: Sequence[Item], read: Callable[[Item], Record],
                 ahead_files: int = AHEAD_FILES, ahead_bytes: int = AHEAD_PIXEL_BYTES) -> None:
        self._items, self._read = list(items), read
        self._ahead_files, self._ahead_bytes = max(1, ahead_files), ahead_bytes
        self._done: deque[tuple[Item, Record | None, BaseException | None, int]] = deque()
        self._bytes = 0
        self._stopped = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="osoa-reader", daemon=True)
        self._thread.start()

    def _room(self) -> bool:
        return self._stopped or (len(self._done) < self._ahead_files and self._bytes < self._ahead_bytes)

    def _run(self) -> None:
        for item in self._items:
            with self._changed:
                self._changed.wait_for(self._room)
                if self._stopped:
                    return
            try:
                record, error = self._read(item), None
            except BaseException as raised:  # noqa: BLE001 — handed to the compressor, raised there
                record, error = None, raised
            size = _memory(record)
            with self._changed:
                self._done.append((item, record, error, size))
                self._bytes += size
                self._changed.notify_all()
            if error is not None:
                return

    def take(self, item: Item) -> Record | None:
        """The record of ``item``, the next item in order (waits for the reader)."""
        with self._changed:
            self._changed.wait_for(lambda: self._done or not self._thread.is_alive())
            if not self._done:
                raise RuntimeError("the image reader stopped before the last file")
            done, record, error, size = self._done.popleft()
            self._bytes -= size
            self._changed.notify_all()
        if done is not item:
            raise RuntimeError("files taken from the image reader out of order")
        if error is not None:
            raise error
        return record

    def close(self) -> None:
        """Stop the reader (it finishes the file it is reading) and free the records nobody took."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._thread.join()
        while self._done:
            _, record, _, _ = self._done.popleft()
            pixel_file = getattr(record, "pixel_file", None)
            if pixel_file is not None:
                pixel_file.close()
        self._bytes = 0

    def __enter__(self) -> "ReadAhead[Item, Record]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _memory(record) -> int:
    """Bytes of pixels a record holds (an array's in memory, a PixelView's in its file)."""
    shape = getattr(getattr(record, "pixels", None), "shape", None)
    return int(np.prod(shape)) if shape is not None else 0
