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
FORMAT_MAJOR = 1
FORMAT_MINOR = 6  # the one place the written format version is set (docs/FORMAT.md says what each minor added)
# Format 1 is frozen: every later release reads every 1.x archive up to its own
# minor.  Format 0 was the unstable development layout and is refused by version.
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
        if major == 0:
            raise ArchiveError(f"archive format {major}.{minor} is a pre-release development layout that "
                               f"this version does not read (decode it with the osoa-zip that wrote it)")
        if major > FORMAT_MAJOR or (major == FORMAT_MAJOR and minor > FORMAT_MINOR):
            raise ArchiveError(f"archive format {major}.{minor} is newer than this version reads "
                               f"(up to {FORMAT_MAJOR}.{FORMAT_MINOR}); upgrade osoa-zip")
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


class SalvagingReader(ArchiveReader):
    """Reads past damage (for --salvage): a damaged chunk is yielded as (tag, None),
    then reading resumes at the next chunk that checks out.

    Needs a seekable file: after a checksum mismatch the length field itself may be
    wrong, so the reader tries the declared end first, then scans forward for a
    chunk with a known tag, a plausible length and a matching CRC (a false match
    needs a 32-bit CRC collision).  ``damage`` collects one line per problem.
    """

    SCAN_BLOCK = 1 << 20

    def __init__(self, stream: BinaryIO, known_tags: frozenset[bytes]) -> None:
        if not stream.seekable():
            raise ArchiveError("--salvage needs an archive file, not a pipe")
        super().__init__(stream)
        self._known = frozenset(known_tags) | {END_TAG}
        self._size = stream.seek(0, 2)
        stream.seek(_PREAMBLE.size)
        self.damage: list[str] = []

    def _chunk_at(self, offset: int) -> tuple[bytes, bytes, int] | None:
        """(tag, payload, end offset) if a valid chunk with a known tag starts here."""
        if offset + _CHUNK_HEAD.size + _CRC.size > self._size:
            return None
        self._stream.seek(offset)
        head = self._stream.read(_CHUNK_HEAD.size)
        tag, length = _CHUNK_HEAD.unpack(head)
        end = offset + _CHUNK_HEAD.size + length + _CRC.size
        if tag not in self._known or length > MAX_CHUNK_BYTES or end > self._size:
            return None
        payload = self._read(length, "a chunk")
        (crc,) = _CRC.unpack(self._read(_CRC.size, "a chunk"))
        if crc != zlib.crc32(payload, zlib.crc32(head)):
            return None
        return tag, payload, end

    def _next_valid(self, start: int) -> int | None:
        """The offset of the first valid chunk at or after ``start``."""
        offset = start
        while offset < self._size:
            self._stream.seek(offset)
            block = self._stream.read(self.SCAN_BLOCK + 3)
            candidates = sorted({offset + i for tag in self._known for i in _find_all(block, tag)})
            for candidate in candidates:
                if self._chunk_at(candidate) is not None:
                    return candidate
            offset += self.SCAN_BLOCK
        return None

    def chunks(self) -> Iterator[tuple[bytes, bytes | None]]:
        offset, index = _PREAMBLE.size, 0
        while True:
            found = self._chunk_at(offset)
            if found is None:
                declared = self._declared(offset)
                name = f"chunk #{index}" + (f" ({declared[0].decode('ascii', 'replace')!r})" if declared else "")
                resume = None
                if declared and declared[1] > offset and self._chunk_at(declared[1]) is not None:
                    resume = declared[1]
                else:
                    resume = self._next_valid(offset + 1)
                if resume is None:
                    self.damage.append(f"{name} and everything after it are damaged or missing")
                    return
                self.damage.append(f"{name} is damaged; skipped {resume - offset} bytes")
                yield (declared[0] if declared else b"????"), None
                offset, index = resume, index + 1
                continue
            tag, payload, end = found
            if tag == END_TAG:
                if not self.damage:  # no chunk was damaged: the whole-archive check still applies
                    self._check_end_digest(payload, index)
                return
            head = _CHUNK_HEAD.pack(tag, len(payload))
            self._digest.update(head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))))
            yield tag, payload
            offset, index = end, index + 1

    def _check_end_digest(self, payload: bytes, count: int) -> None:
        if len(payload) != _END.size:
            self.damage.append("the END chunk is malformed")
            return
        declared, digest = _END.unpack(payload)
        if declared != count or digest != self._digest.digest():
            self.damage.append("archive checksum mismatch: chunks are missing, reordered or altered")

    def _declared(self, offset: int) -> tuple[bytes, int] | None:
        """The tag and end offset a damaged chunk's head claims, if the head is there."""
        if offset + _CHUNK_HEAD.size > self._size:
            return None
        self._stream.seek(offset)
        tag, length = _CHUNK_HEAD.unpack(self._stream.read(_CHUNK_HEAD.size))
        return tag, offset + _CHUNK_HEAD.size + length + _CRC.size


def _find_all(block: bytes, needle: bytes) -> Iterator[int]:
    position = block.find(needle)
    while position != -1:
        yield position
        position = block.find(needle, position + 1)
