"""Small files read as images in a child process, while this process imports torch.

Why: a command that compresses images spends its first ~1.1-1.5 s importing torch and loading
the model, and only then reads its images; reading a small file is mostly Python holding the
GIL (~0.3 ms a 32 x 32 PNG), so a helper thread cannot do it beside the import
(read_ahead.py says why it leaves small files alone).  A child process can: forked before
torch is imported, it reads the small files in scan order with the same ``read_image`` and
writes each record to a temporary file, and the compressor takes the records from there
instead of reading the files itself.  Nothing depends on which process read a file, so the
archive is the same bytes.

Records cross as a JSON header and raw arrays (wire.py), never pickle.
The child appends each record to the temporary file and then writes where it ends to a pipe;
the compressor waits on that pipe for the record it needs.  The child stops after
BUDGET_BYTES of records (the compressor reads the rest itself); a child that stops early or
fails leaves its files to the compressor, which reads them as it always did.

The child is forked as forking.py says (only while no other thread runs; it touches nothing
of the parent's but its list of files, and ends with ``os._exit``), before the compressor
starts its own threads and its worker.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from .forking import ForkedChild, alone, fork_child
from .imaging.io import COLOR_CHANNELS, ImageRecord, read_image
from .imaging.messages import Note
from .imaging.verbatim import Raster
from .prefilter import record_clearly_pays
from .wire import pack_message, unpack_message

BUDGET_BYTES = 256 << 20  # of records in the temporary file; later files are read by the compressor
_NOTICE = struct.Struct("<QQ")  # a record's offset and length in the temporary file
_STRING_FIELDS = ("mode", "format", "sha256", "compression")
_BYTE_FIELDS = ("png_before", "png_after", "verbatim", "palette")
# Every field of ImageRecord, as this module carries it (tests/test_read_process.py checks the list).
CARRIED_FIELDS = frozenset(("pixels", "rasters", "picture", "pixel_file", *_STRING_FIELDS, *_BYTE_FIELDS))


@dataclass
class Read:
    """What the child read of one file: its record (None: not an image for the model path),
    what libraries said reading it, and ``prefilter.record_clearly_pays`` of a colour record
    (else None), which triage would otherwise work out on the compressor's thread."""
    record: ImageRecord | None
    notes: list[str]
    classical: bool | None = None


def read_file(file, byte_exact: bool, verbatim: bool) -> Read:
    notes: list[str] = []
    path = Path(file.source)
    record = read_image(path, byte_exact, pixels_in_file=True, note=notes.append, verbatim=verbatim)
    classical = None
    if record is not None and COLOR_CHANNELS[record.mode] and isinstance(record.pixels, np.ndarray):
        classical = record_clearly_pays(record, path, file.size)
    return Read(record, notes, classical)


def encode_read(read: Read) -> bytes | None:
    """``read`` as bytes; None for a record that cannot cross (a large image's pixels in a
    file of its own, or a decoder's picture)."""
    record = read.record
    header = {"notes": read.notes, "classical": read.classical, "record": None}
    if record is None:
        return pack_message(header, [])
    if record.picture is not None or record.pixel_file is not None or not isinstance(record.pixels, np.ndarray):
        return None
    header["record"] = {name: getattr(record, name) for name in _STRING_FIELDS}
    header["record"]["rasters"] = [raster.to_json() for raster in record.rasters]
    arrays = [record.pixels] + [np.frombuffer(getattr(record, name), dtype=np.uint8) for name in _BYTE_FIELDS]
    return pack_message(header, arrays)


def decode_read(message: bytearray) -> Read:
    """``encode_read``'s read (the record's arrays writable, as a file read here gives them)."""
    header, arrays = unpack_message(message)
    fields_of = header["record"]
    if fields_of is None:
        return Read(None, header["notes"], header["classical"])
    pixels, *byte_fields = arrays
    record = ImageRecord(pixels=pixels, **{name: fields_of[name] for name in _STRING_FIELDS},
                         rasters=tuple(Raster.from_json(value) for value in fields_of["rasters"]),
                         **{name: bytes(value) for name, value in zip(_BYTE_FIELDS, byte_fields)})
    return Read(record, header["notes"], header["classical"])


def record_fields() -> frozenset[str]:
    return frozenset(field.name for field in fields(ImageRecord))


class ReadProcess:
    """Reads ``files`` (objects with ``source`` and ``name``) in a forked child, in order.

    ``take(file)`` gives what the child read of it (``Read``) and replays what libraries said
    to ``note``, or None when the child did not read it (then the caller reads it).  ``close``
    stops the child."""

    def __init__(self, files: Sequence, byte_exact: bool, verbatim: bool, note: Note | None) -> None:
        self._position = {id(file): index for index, file in enumerate(files)}
        self._note = note
        self._next = 0  # the index of the next notice to read
        self._data = tempfile.TemporaryFile()
        notices, notice_writer = os.pipe()
        data = self._data.fileno()
        self._child: ForkedChild | None = ForkedChild(fork_child(
            lambda: _serve(list(files), data, notice_writer, byte_exact, verbatim), (data, notice_writer)))
        os.close(notice_writer)
        self._notices = notices
        self._stopped = False  # the pipe has ended (the child is done, stopped early or failed)

    @classmethod
    def start(cls, files: Sequence, byte_exact: bool, verbatim: bool, note: Note | None) -> "ReadProcess | None":
        """A reader for ``files``, or None where it cannot fork safely (another thread runs, no
        ``fork``) or there is nothing to read."""
        if not files or not alone():
            return None
        return cls(files, byte_exact, verbatim, note)

    def take(self, file) -> Read | None:
        index = self._position.get(id(file))
        if index is None or index < self._next or self._stopped:
            return None
        where = None
        while self._next <= index:
            where = self._read_notice()
            if where is None:
                return None
            self._next += 1
        offset, length = where
        message = bytearray(length)
        if os.preadv(self._data.fileno(), [message], offset) != length:
            return None
        read = decode_read(message)
        if self._note is not None:
            for line in read.notes:
                self._note(line)
        return read

    def _read_notice(self) -> tuple[int, int] | None:
        notice = b""
        while len(notice) < _NOTICE.size:
            piece = os.read(self._notices, _NOTICE.size - len(notice))
            if not piece:
                self._stopped = True
                return None
            notice += piece
        return _NOTICE.unpack(notice)

    def close(self) -> None:
        if self._child is None:
            return
        self._child.kill()
        self._child.wait()
        self._child = None
        os.close(self._notices)
        self._data.close()

    def __enter__(self) -> "ReadProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(files: list, data: int, notices: int, byte_exact: bool, verbatim: bool) -> None:
    offset = 0
    for file in files:
        if offset >= BUDGET_BYTES:
            return
        read = read_file(file, byte_exact, verbatim)
        message = encode_read(read)
        if message is None:  # the parent reads it itself, and every file after it
            if read.record is not None and read.record.pixel_file is not None:
                read.record.pixel_file.close()
            return
        written = 0
        while written < len(message):
            written += os.pwrite(data, memoryview(message)[written:], offset + written)
        os.write(notices, _NOTICE.pack(offset, len(message)))
        offset += len(message)
