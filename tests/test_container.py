"""The container format: framing, checksums, versions (no torch, no images).

Every archive that is damaged, truncated, foreign or from the future must be
refused with ArchiveError, a one-line message, never another exception and
never silently.  The golden bytes pin the format so any change is deliberate.
"""
from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osoa_zip.container.format import (
    END_TAG,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    MAGIC,
    MAX_CHUNK_BYTES,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    canonical_json,
    read_json,
)

# ArchiveWriter output for GOLDEN_CHUNKS, committed on purpose: if this test
# fails, the on-disk format changed and FORMAT_MAJOR/MINOR (and old-archive
# compatibility) must be considered before updating the literal.
GOLDEN_CHUNKS = [(b"HEAD", {"name": "golden", "n": [1, 2]}), (b"DATA", b"osoa\x00zip"), (b"NULL", b"")]
# Format 1.0's output (release 1.0-1.2); its framing is also 1.1's to 1.6's (1.5 added chunk kinds),
# which changed only what the header and batch flags may say, and how HEAD is spelt (1.6; docs/FORMAT.md).
GOLDEN_HEX_1_0 = (
    "4f534f415a49501a01000000484541441b000000000000007b226e223a5b312c"
    "325d2c226e616d65223a22676f6c64656e227d5c43109f444154410800000000"
    "0000006f736f61007a6970b3a1b8ec4e554c4c0000000000000000dac44e1745"
    "4e4420280000000000000003000000000000008e84be239b685d7471a049ae8c"
    "2db010a9841c6a3ae512fdef1c4b0395102770f4e6b9ee"
)
GOLDEN_HEX_1_1 = (  # format 1.1, written by releases 1.3
    "4f534f415a49501a01000100484541441b000000000000007b226e223a5b312c"
    "325d2c226e616d65223a22676f6c64656e227d5c43109f444154410800000000"
    "0000006f736f61007a6970b3a1b8ec4e554c4c0000000000000000dac44e1745"
    "4e442028000000000000000300000000000000f177aed80646b3eb215d6b83a9"
    "004322cd30e8888f53cdb31a1d7b99e623fa0a97169f2a"
)
GOLDEN_HEX_1_2 = (  # format 1.2, written by releases 1.4
    "4f534f415a49501a01000200484541441b000000000000007b226e223a5b312c"
    "325d2c226e616d65223a22676f6c64656e227d5c43109f444154410800000000"
    "0000006f736f61007a6970b3a1b8ec4e554c4c0000000000000000dac44e1745"
    "4e442028000000000000000300000000000000af0e2f64bc8cb81bab92570c26"
    "7a2247c7a7b828bf1f7ce22f3e0dc15d2e24c9f4d2ed00"
)
GOLDEN_HEX_1_3 = (  # format 1.3, written by release 1.5
    "4f534f415a49501a01000300484541441b000000000000007b226e223a5b312c"
    "325d2c226e616d65223a22676f6c64656e227d5c43109f444154410800000000"
    "0000006f736f61007a6970b3a1b8ec4e554c4c0000000000000000dac44e1745"
    "4e4420280000000000000003000000000000006a84ae32161750e4cc9f86f75a"
    "a835e8fcf57ce649d1dd1f862abd85c3db99cced7562ae"
)
GOLDEN_HEX_1_4 = (  # format 1.4, written by releases 1.6-1.7
    "4f534f415a49501a01000400484541441b000000000000007b226e223a5b312c"
    "325d2c226e616d65223a22676f6c64656e227d5c43109f444154410800000000"
    "0000006f736f61007a6970b3a1b8ec4e554c4c0000000000000000dac44e1745"
    "4e442028000000000000000300000000000000e9139462c261182dcad24d0587"
    "930046945690d8bfedbab0a2952e3963852e8bd856a965"
)
GOLDEN_HEX_1_5 = (  # format 1.5, written by releases 1.8-1.9
    "4f534f415a49501a01000500484541441b000000000000007b226e223a5b312c"
    "325d2c226e616d65223a22676f6c64656e227d5c43109f444154410800000000"
    "0000006f736f61007a6970b3a1b8ec4e554c4c0000000000000000dac44e1745"
    "4e442028000000000000000300000000000000fdd072b53d260e1be98b8b23e2"
    "1c5e55100ebf8b51bb12b5750c44b4f4f93e10764afc0a"
)
GOLDEN_HEX = (  # format 1.6, written by release 1.10.0 on
    "4f534f415a49501a01000600484541441b000000000000007b226e223a5b312c"
    "325d2c226e616d65223a22676f6c64656e227d5c43109f444154410800000000"
    "0000006f736f61007a6970b3a1b8ec4e554c4c0000000000000000dac44e1745"
    "4e442028000000000000000300000000000000c50df61adf6793419fb9067084"
    "89e9a0ae4d989ce7e4f11ba7ee91f0e9e965db68b0a84c"
)
PREAMBLE_SIZE = 12
HEAD_SIZE = 12  # tag + u64 length
CRC_SIZE = 4


def build(chunks) -> bytes:
    stream = io.BytesIO()
    writer = ArchiveWriter(stream)
    for tag, payload in chunks:
        if isinstance(payload, bytes):
            writer.write_chunk(tag, payload)
        else:
            writer.write_json(tag, payload)
    writer.close()
    return stream.getvalue()


def read_all(data: bytes) -> list[tuple[bytes, bytes]]:
    return list(ArchiveReader(io.BytesIO(data)).chunks())


def chunk(tag: bytes, payload: bytes) -> bytes:
    """A correctly framed chunk, written by hand (independent of ArchiveWriter)."""
    head = tag + struct.pack("<Q", len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def chunk_offsets(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, tag, payload length) of every chunk, END included."""
    found, offset = [], PREAMBLE_SIZE
    while offset < len(data):
        tag, length = struct.unpack_from("<4sQ", data, offset)
        found.append((offset, tag, length))
        offset += HEAD_SIZE + length + CRC_SIZE
    assert offset == len(data)
    return found


def assert_refused(data: bytes, match: str | None = None) -> ArchiveError:
    """Reading must raise ArchiveError (nothing else), with a one-line message."""
    with pytest.raises(ArchiveError, match=match) as caught:
        read_all(data)
    message = str(caught.value)
    assert message and "\n" not in message
    return caught.value


GOLDEN = bytes.fromhex(GOLDEN_HEX)
GOLDEN_1_0 = bytes.fromhex(GOLDEN_HEX_1_0)
GOLDEN_1_1 = bytes.fromhex(GOLDEN_HEX_1_1)
GOLDEN_1_2 = bytes.fromhex(GOLDEN_HEX_1_2)
GOLDEN_1_3 = bytes.fromhex(GOLDEN_HEX_1_3)
GOLDEN_1_4 = bytes.fromhex(GOLDEN_HEX_1_4)
GOLDEN_1_5 = bytes.fromhex(GOLDEN_HEX_1_5)


def test_round_trip_preserves_tags_payloads_and_order():
    """What the writer writes, the reader returns, in order, byte for byte."""
    payloads = [(b"HEAD", {"x": "é", "list": [3, 1, 2]}), (b"FILE", b""), (b"DATA", bytes(range(256)) * 9),
                (b"DATA", b"\x00"), (b"STAT", {"batches": []})]
    data = build(payloads)
    chunks = read_all(data)
    assert [tag for tag, _ in chunks] == [tag for tag, _ in payloads]
    for (_, got), (_, wanted) in zip(chunks, payloads):
        assert got == (wanted if isinstance(wanted, bytes) else canonical_json(wanted))
    assert read_json(chunks[0][1], "the header") == {"x": "é", "list": [3, 1, 2]}


def test_version_is_recorded_by_the_reader():
    reader = ArchiveReader(io.BytesIO(build([])))
    assert reader.version == (FORMAT_MAJOR, FORMAT_MINOR)
    assert list(reader.chunks()) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=4, max_size=4).filter(lambda t: t != END_TAG),
                          st.binary(max_size=300)), max_size=6))
def test_round_trip_property(chunks):
    """Any tags (4 bytes, not END) and payloads survive a round trip."""
    assert read_all(build(chunks)) == chunks


def test_golden_bytes():
    """A fixed tiny archive must keep its exact bytes: the format is a promise to old archives."""
    assert build(GOLDEN_CHUNKS).hex() == GOLDEN_HEX


@pytest.mark.parametrize("golden", [GOLDEN, GOLDEN_1_5, GOLDEN_1_4, GOLDEN_1_3, GOLDEN_1_2, GOLDEN_1_1,
                                    GOLDEN_1_0], ids=["1.6", "1.5", "1.4", "1.3", "1.2", "1.1", "1.0"])
def test_golden_archive_still_reads(golden):
    """Archives written by this format version and by every earlier 1.x stay readable."""
    assert ArchiveReader(io.BytesIO(golden)).version == (1, golden[10])
    assert read_all(golden) == [(b"HEAD", canonical_json({"name": "golden", "n": [1, 2]})),
                                (b"DATA", b"osoa\x00zip"), (b"NULL", b"")]


def test_golden_layout_matches_the_documented_format():
    """Preamble, then tag|u64 length|payload|crc32(tag+length+payload), END = count|sha256."""
    assert GOLDEN[:8] == MAGIC
    assert struct.unpack_from("<HH", GOLDEN, 8) == (FORMAT_MAJOR, FORMAT_MINOR)
    offsets = chunk_offsets(GOLDEN)
    assert [tag for _, tag, _ in offsets] == [b"HEAD", b"DATA", b"NULL", END_TAG]
    end_offset, _, end_length = offsets[-1]
    assert end_length == 40
    count = struct.unpack_from("<Q", GOLDEN, end_offset + HEAD_SIZE)[0]
    assert count == 3
    assert GOLDEN[end_offset + HEAD_SIZE + 8:end_offset + HEAD_SIZE + 40] == hashlib.sha256(
        GOLDEN[:end_offset]).digest()


def test_canonical_json_is_one_spelling_per_value():
    """Identical inputs must give identical archives, whatever the dict order."""
    assert canonical_json({"b": 1, "a": [1, "é"]}) == canonical_json({"a": [1, "é"], "b": 1})
    assert canonical_json({"a": "é"}) == '{"a":"é"}'.encode("utf-8")


def test_writer_refuses_bad_tags():
    writer = ArchiveWriter(io.BytesIO())
    for tag in (b"END ", b"ABC", b"ABCDE", b""):
        with pytest.raises(ValueError):
            writer.write_chunk(tag, b"x")


def test_bad_magic():
    data = bytearray(GOLDEN)
    data[0:8] = b"PK\x03\x04\x00\x00\x00\x00"
    assert_refused(bytes(data), match="not an osoa-zip archive")


@pytest.mark.parametrize("major", [FORMAT_MAJOR + 1, 0xFFFF])
def test_unknown_major_version(major):
    """An archive from a future major version is refused with a clear message."""
    data = bytearray(GOLDEN)
    struct.pack_into("<H", data, 8, major)
    assert_refused(bytes(data), match=f"format {major}")


def test_newer_minor_version_is_refused():
    """A 1.x archive from a newer minor may use chunks this reader does not know: refuse it up front."""
    data = bytearray(GOLDEN)
    struct.pack_into("<H", data, 10, FORMAT_MINOR + 1)
    assert_refused(bytes(data), match=f"format {FORMAT_MAJOR}.{FORMAT_MINOR + 1} is newer")


def test_development_format_0_is_refused_by_version():
    data = bytearray(GOLDEN)
    struct.pack_into("<HH", data, 8, 0, 2)
    assert_refused(bytes(data), match="format 0.2 is a pre-release development layout")


def test_other_file_types_are_refused():
    for data in (b"", b"\x89PNG\r\n\x1a\n" + bytes(40), b"hello world\n", MAGIC):
        assert_refused(data)


def test_truncation_at_every_offset():
    """Cut anywhere (inside preamble, head, payload, crc or END), reading must fail cleanly."""
    failures = []
    for cut in range(len(GOLDEN)):
        try:
            read_all(GOLDEN[:cut])
        except ArchiveError as error:
            if "\n" in str(error):
                failures.append((cut, "multi-line message"))
        except Exception as error:  # noqa: BLE001 - the point of the test
            failures.append((cut, repr(error)))
        else:
            failures.append((cut, "accepted"))
    assert not failures


def test_every_single_bit_flip_is_detected():
    """No single-bit change anywhere in an archive may go unnoticed or raise anything else."""
    failures = []
    for position in range(len(GOLDEN)):
        for bit in range(8):
            data = bytearray(GOLDEN)
            data[position] ^= 1 << bit
            try:
                read_all(bytes(data))
            except ArchiveError as error:
                if "\n" in str(error):
                    failures.append((position, bit, "multi-line message"))
            except Exception as error:  # noqa: BLE001
                failures.append((position, bit, repr(error)))
            else:
                failures.append((position, bit, "accepted"))
    assert not failures, failures[:10]


@pytest.mark.parametrize("length", [2 ** 60, 2 ** 64 - 1, MAX_CHUNK_BYTES + 1])
def test_huge_declared_chunk_is_refused_without_reading(length):
    """A damaged length must not make the reader allocate or wait for gigabytes."""

    class NoBigReads(io.BytesIO):
        def read(self, size=-1):
            assert size is not None and 0 <= size <= 1 << 20, f"asked for {size} bytes"
            return super().read(size)

    data = GOLDEN[:PREAMBLE_SIZE] + b"DATA" + struct.pack("<Q", length) + b"xyz"
    with pytest.raises(ArchiveError, match=r"chunk #0 \('DATA'\) declares") as caught:
        list(ArchiveReader(NoBigReads(data)).chunks())
    assert "\n" not in str(caught.value)


def test_trailing_garbage_is_refused():
    assert_refused(GOLDEN + b"\x00", match="after the END chunk")
    assert_refused(GOLDEN + GOLDEN)


def test_swapped_chunks_are_refused():
    """Each chunk is intact, but the order is wrong: only the END digest can notice."""
    offsets = chunk_offsets(GOLDEN)
    (a, _, la), (b, _, lb) = offsets[0], offsets[1]
    first = GOLDEN[a:a + HEAD_SIZE + la + CRC_SIZE]
    second = GOLDEN[b:b + HEAD_SIZE + lb + CRC_SIZE]
    swapped = GOLDEN[:a] + second + first + GOLDEN[b + len(second):]
    assert len(swapped) == len(GOLDEN) and swapped != GOLDEN
    assert_refused(swapped, match="checksum mismatch")


def test_dropped_chunk_is_refused():
    offsets = chunk_offsets(GOLDEN)
    start, _, length = offsets[1]
    dropped = GOLDEN[:start] + GOLDEN[start + HEAD_SIZE + length + CRC_SIZE:]
    assert_refused(dropped)


def test_duplicated_chunk_is_refused():
    offsets = chunk_offsets(GOLDEN)
    start, _, length = offsets[1]
    piece = GOLDEN[start:start + HEAD_SIZE + length + CRC_SIZE]
    assert_refused(GOLDEN[:start] + piece + GOLDEN[start:])


def test_well_framed_chunk_with_altered_payload_is_refused():
    """Recomputing a chunk's CRC after editing it is caught by the END digest."""
    offsets = chunk_offsets(GOLDEN)
    start, _, length = offsets[1]
    forged = chunk(b"DATA", b"OSOA\x00zip")
    assert len(forged) == HEAD_SIZE + length + CRC_SIZE
    assert_refused(GOLDEN[:start] + forged + GOLDEN[start + len(forged):], match="checksum mismatch")


def test_missing_end_chunk_is_refused():
    end_offset = chunk_offsets(GOLDEN)[-1][0]
    assert_refused(GOLDEN[:end_offset], match="truncated")


def test_malformed_end_chunk_is_refused():
    end_offset = chunk_offsets(GOLDEN)[-1][0]
    assert_refused(GOLDEN[:end_offset] + chunk(END_TAG, b"\x00" * 39), match="END chunk is malformed")


def test_chunk_errors_name_the_chunk():
    """Errors say which chunk is damaged (index and tag)."""
    start = chunk_offsets(GOLDEN)[1][0]
    data = bytearray(GOLDEN)
    data[start + HEAD_SIZE] ^= 0x01  # first payload byte of chunk #1
    error = assert_refused(bytes(data))
    assert "chunk #1" in str(error) and "DATA" in str(error)


class ShortReads(io.RawIOBase):
    """A raw stream (like a pipe or socket opened unbuffered) that returns at most 5 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        piece = self._data.read(min(len(buffer), 5))
        buffer[:len(piece)] = piece
        return len(piece)


def test_reader_streams_from_a_buffered_pipe():
    """Readers never seek, so archives can come from stdin (a buffered, unseekable stream)."""
    stream = io.BufferedReader(ShortReads(GOLDEN))
    assert not stream.seekable()
    assert list(ArchiveReader(stream).chunks()) == read_all(GOLDEN)


def test_reader_accepts_short_reads_from_a_raw_stream():
    """The API takes any BinaryIO; a raw stream's read(n) may return less than n before EOF."""
    assert list(ArchiveReader(ShortReads(GOLDEN)).chunks()) == read_all(GOLDEN)


def test_read_json_refuses_garbage():
    for payload in (b"\xff\xfe", b"{", b""):
        with pytest.raises(ArchiveError):
            read_json(payload, "the header")
