"""The osoa-zip container: a preamble, then checksummed chunks, ending in END.

    preamble  = MAGIC (8 bytes) | major u16 | minor u16                (little-endian)
    chunk     = tag (4 ASCII bytes) | length u64 | payload | crc32 u32 of tag+length+payload
    last      = chunk "END " whose payload is count u64 | sha256 of every byte before it

Readers stream: nothing needs seeking, so archives can be read from a pipe.
Every error names the chunk (its index and tag) and is one line.  This
module knows nothing about images or torch; see docs/FORMAT.md.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import BinaryIO, Iterator

import numpy as np

MAGIC = b"OSOAZIP\x1a"
FORMAT_MAJOR = 0
FORMAT_MINOR = 2
OLDEST_MINOR = {0: 2}  # format 0 is unstable: earlier development layouts are refused by version
MAX_CHUNK_BYTES = 1 << 31  # a larger declared length is damage or hostility, never data
# Parsed JSON costs up to ~25x its text (`[{},{},...]`: 3 bytes -> a 64-byte dict), so a
# payload may hold at most this many keys and values: ~300 MB of objects at worst.
MAX_JSON_VALUES = 1 << 22
END_TAG = b"END "

_PREAMBLE = struct.Struct("<8sHH")
_CHUNK_HEAD = struct.Struct("<4sQ")
_CRC = struct.Struct("<I")
_END = struct.Struct("<Q32s")


class ArchiveError(Exception):
    """The archive cannot be read as written: damaged, truncated, foreign or from the future."""


class OversizedEntry(ArchiveError):
    """A payload declares more than any writer writes (a bomb, or damage)."""


def canonical_json(value) -> bytes:
    """One spelling per value, so identical inputs give identical archives."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class ArchiveWriter:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._digest = hashlib.sha256()
        self._count = 0
        self._emit(_PREAMBLE.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR))

    def _emit(self, data: bytes) -> None:
        self._stream.write(data)
        self._digest.update(data)

    def write_chunk(self, tag: bytes, payload: bytes) -> None:
        if len(tag) != 4 or tag == END_TAG:
            raise ValueError(f"bad chunk tag {tag!r}")
        if len(payload) > MAX_CHUNK_BYTES:
            raise ValueError("chunk payload too large; split it")
        head = _CHUNK_HEAD.pack(tag, len(payload))
        self._emit(head)
        self._emit(payload)
        self._emit(_CRC.pack(zlib.crc32(payload, zlib.crc32(head))))
        self._count += 1

    def write_json(self, tag: bytes, value) -> None:
        self.write_chunk(tag, canonical_json(value))

    def close(self) -> None:
        """Write the END chunk (count and digest of all that came before)."""
        payload = _END.pack(self._count, self._digest.digest())
        head = _CHUNK_HEAD.pack(END_TAG, len(payload))
        self._stream.write(head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))))


class ArchiveReader:
    """Iterate over (tag, payload) after checking magic and version."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._digest = hashlib.sha256()
        preamble = self._read(_PREAMBLE.size, "the preamble")
        magic, major, minor = _PREAMBLE.unpack(preamble)
        if magic != MAGIC:
            raise ArchiveError("not an osoa-zip archive (bad magic bytes)")
        if major != FORMAT_MAJOR:
            raise ArchiveError(f"archive format {major}.{minor} is not supported by this version "
                               f"(reads format {FORMAT_MAJOR}.x); upgrade osoa-zip")
        if minor < OLDEST_MINOR.get(major, 0):
            raise ArchiveError(f"archive format {major}.{minor} is a development layout that this "
                               f"version no longer reads (oldest: {major}.{OLDEST_MINOR[major]})")
        self.version = (major, minor)
        self._digest.update(preamble)

    def _read(self, size: int, what: str) -> bytes:
        data = self._stream.read(size)
        while data is not None and 0 < len(data) < size:  # raw streams may return short reads
            more = self._stream.read(size - len(data))
            if not more:
                break
            data += more
        if data is None or len(data) != size:
            raise ArchiveError(f"archive is truncated in {what}")
        return data

    def chunks(self) -> Iterator[tuple[bytes, bytes]]:
        index = 0
        while True:
            head = self._read(_CHUNK_HEAD.size, f"chunk #{index}")
            tag, length = _CHUNK_HEAD.unpack(head)
            name = f"chunk #{index} ({tag.decode('ascii', 'replace')!r})"
            if length > MAX_CHUNK_BYTES:
                raise ArchiveError(f"{name} declares {length} bytes; the archive is damaged")
            payload = self._read(length, name)
            (crc,) = _CRC.unpack(self._read(_CRC.size, name))
            if crc != zlib.crc32(payload, zlib.crc32(head)):
                raise ArchiveError(f"{name} is damaged (checksum mismatch)")
            if tag == END_TAG:
                self._check_end(payload, index)
                return
            self._digest.update(head + payload + _CRC.pack(crc))
            yield tag, payload
            index += 1

    def _check_end(self, payload: bytes, count: int) -> None:
        if len(payload) != _END.size:
            raise ArchiveError("the END chunk is malformed")
        declared, digest = _END.unpack(payload)
        if declared != count or digest != self._digest.digest():
            raise ArchiveError("archive checksum mismatch: chunks are missing, reordered or altered")
        if self._stream.read(1):
            raise ArchiveError("unexpected data after the END chunk")


def json_values(payload: bytes) -> int:
    """An upper bound on the keys and values in a JSON text (its commas and colons
    outside strings, plus one), counted without building them."""
    text = np.frombuffer(payload.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    count, inside = 1, 0
    for start in range(0, len(text), 1 << 24):  # in blocks: bounded temporary memory
        block = text[start:start + (1 << 24)]
        parity = np.bitwise_xor.accumulate((block == ord('"')).view(np.uint8)) ^ inside
        count += int(np.count_nonzero(((block == ord(",")) | (block == ord(":"))) & (parity == 0)))
        inside = int(parity[-1])
    return count


def read_json(payload: bytes, what: str, max_values: int = MAX_JSON_VALUES):
    # Counting separators inside strings too is cheap; only a payload near the limit is counted exactly.
    if payload.count(b",") + payload.count(b":") + 1 > max_values and json_values(payload) > max_values:
        raise OversizedEntry(f"{what} holds more than {max_values} values")
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ArchiveError(f"{what} is not valid JSON") from None
