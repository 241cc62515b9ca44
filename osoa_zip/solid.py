"""Solid blocks: the files not on the model path, sorted by type, many to one xz stream.

Why: a file compressed alone shares nothing with the files like it (issue 17: text
files coded one by one came out 40% larger than one `tar | xz -9e` stream over them).
So, as 7z does, the writer sorts them by extension, then name, and packs them into
blocks of about ``block_size`` bytes, each one xz stream (format 1.5: a BLCK index, then
BDAT chunks; docs/FORMAT.md).  A block is the unit of damage and of partial
extraction: decoding one file decodes its block, and a damaged block loses only its
files.

A file keeps a stream of its own (FILE + DATA, as before 1.5) where that wins: a file
larger than a block, and a file of at least OWN_STREAM_MIN bytes that a quick sample
shows xz would not shrink (stored at once, instead of spending xz's ~1.5 MB/s on it
inside a block for nothing, and so that extracting it decodes nothing else).
"""
from __future__ import annotations

import io
import lzma
import posixpath
import tempfile
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .container.format import ArchiveWriter
from .container.records import (
    CODEC_STORE,
    CODEC_XZ,
    DATA_CHUNK_BYTES,
    MAX_BLOCK_FILES,
    BlockData,
    BlockMember,
    SolidBlock,
    xz_filters,
)
from .files.scan import Entry

OWN_STREAM_MIN = 64 << 10   # a file at least this large is sampled: incompressible ones get their own stream
SAMPLE_BYTES = 16 << 10     # read at four places of the file
INCOMPRESSIBLE = 0.98       # zlib's fastest level keeps more than this share of the samples
READ_BYTES = 1 << 20        # files are read and compressed this much at a time
SPILL_BYTES = 16 << 20      # a block's coded stream waits in memory up to this size, else in a temporary file


class FileChanged(Exception):
    """A file's size changed while it was being archived (the archive would not hold what it declares)."""


def solid_order(entry: Entry) -> tuple[str, str]:
    """Files of one type side by side (their extension, then their name), as 7z sorts them."""
    extension = posixpath.splitext(posixpath.basename(entry.name))[1].lower()
    return extension, entry.name


def incompressible(path, size: int) -> bool:
    """True if four samples of the file (start, two inner points, end) do not shrink
    under zlib's fastest level: xz at its slowest would gain next to nothing."""
    offsets = sorted({max(0, min(size - SAMPLE_BYTES, size * k // 3)) for k in range(4)})
    with open(path, "rb") as handle:
        samples = []
        for offset in offsets:
            handle.seek(offset)
            samples.append(handle.read(SAMPLE_BYTES))
    sample = b"".join(samples)
    return bool(sample) and len(zlib.compress(sample, 1)) > INCOMPRESSIBLE * len(sample)


def file_pieces(entry: Entry, piece_bytes: int) -> Iterator[bytes]:
    """A file's bytes, ``piece_bytes`` at a time, exactly the size it was scanned with."""
    remaining = entry.size
    with open(entry.source, "rb") as handle:
        while remaining:
            piece = handle.read(min(remaining, piece_bytes))
            if not piece:
                raise FileChanged(f"{entry.source}: file shrank while it was being archived")
            remaining -= len(piece)
            yield piece
        if handle.read(1):
            raise FileChanged(f"{entry.source}: file grew while it was being archived")


def plan_blocks(entries: list[Entry], block_size: int) -> list[list[Entry]]:
    """The entries in solid order, cut into blocks of at most ``block_size`` bytes and
    MAX_BLOCK_FILES files (each entry is at most that large; a block holds at least one)."""
    blocks: list[list[Entry]] = []
    filled = 0
    for entry in sorted(entries, key=solid_order):
        if not blocks or (blocks[-1] and (filled + entry.size > block_size or len(blocks[-1]) >= MAX_BLOCK_FILES)):
            blocks.append([])
            filled = 0
        blocks[-1].append(entry)
        filled += entry.size
    return blocks


def _spill(size: int) -> BinaryIO:
    return io.BytesIO() if size <= SPILL_BYTES else tempfile.TemporaryFile(prefix="osoa-zip-block-")


class Stopped(Exception):
    """Coding a block was called off (the archive is being abandoned)."""


@dataclass
class CodedBlock:
    """A solid block ready to be written: its members, index, and coded stream (None when
    xz would not shrink it: then it is stored, its files read again as it is written)."""

    members: list[Entry]
    size: int
    index: list[BlockMember]
    stream: BinaryIO | None

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def code_block(members: list[Entry], stop: threading.Event | None = None) -> CodedBlock:
    """A block's index and xz stream, coded into memory (or a temporary file for a large
    block) because the index declares how many chunks follow.  Reads each file once;
    ``stop`` set calls it off between pieces (Stopped)."""
    size = sum(entry.size for entry in members)
    index, offset = [], 0
    for entry in members:
        index.append(BlockMember(entry.name, entry.mode, entry.mtime_ns, offset, entry.size))
        offset += entry.size
    packed = _spill(size)
    try:
        compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, filters=xz_filters(size))
        for entry in members:
            for piece in file_pieces(entry, READ_BYTES):
                if stop is not None and stop.is_set():
                    raise Stopped()
                packed.write(compressor.compress(piece))
        packed.write(compressor.flush())
    except BaseException:
        packed.close()
        raise
    if packed.tell() < size:
        return CodedBlock(members, size, index, packed)
    packed.close()
    return CodedBlock(members, size, index, None)


def write_coded(writer: ArchiveWriter, block: CodedBlock) -> None:
    """A coded block as its index (BLCK), then its stream in BDAT chunks of up to DATA_CHUNK_BYTES."""
    try:
        if block.stream is not None:
            stream = block.stream
            SolidBlock(CODEC_XZ, block.size, -(-stream.tell() // DATA_CHUNK_BYTES), block.index).write(writer)
            stream.seek(0)
            while piece := stream.read(DATA_CHUNK_BYTES):
                BlockData(piece).write(writer)
            return
        SolidBlock(CODEC_STORE, block.size, -(-block.size // DATA_CHUNK_BYTES), block.index).write(writer)
        pending = bytearray()
        for entry in block.members:
            for piece in file_pieces(entry, READ_BYTES):
                pending += piece
                while len(pending) >= DATA_CHUNK_BYTES:
                    BlockData(bytes(pending[:DATA_CHUNK_BYTES])).write(writer)
                    del pending[:DATA_CHUNK_BYTES]
        if pending:
            BlockData(bytes(pending)).write(writer)
    finally:
        block.close()


def write_block(writer: ArchiveWriter, members: list[Entry]) -> None:
    """One solid block, coded and written at once."""
    write_coded(writer, code_block(members))


class BlockCoder:
    """Codes planned blocks on a helper thread, one block ahead of the writer.

    Why: xz over the files off the model path (~0.8 s of CPU per 2.4 MB at preset 9)
    need not wait for the model to finish coding images; with a second core the
    two run side by side.  Each block is coded exactly as ``write_block`` codes it,
    so the archive's bytes do not depend on it.  At most one coded block waits
    (memory, or a temporary file for a large block)."""

    def __init__(self, plans: list[list[Entry]]) -> None:
        self._plans = list(plans)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osoa-solid")
        self._next: Future | None = None
        self._submit()

    def _submit(self) -> None:
        self._next = self._pool.submit(code_block, self._plans.pop(0), self._stop) if self._plans else None

    def __iter__(self) -> Iterator[CodedBlock]:
        while self._next is not None:
            block = self._next.result()
            self._submit()
            yield block

    def close(self) -> None:
        """Call off what is still being coded, and free what waits."""
        self._stop.set()
        if self._next is not None:
            try:
                self._next.result().close()
            except (Stopped, FileChanged, OSError, lzma.LZMAError):
                pass
            self._next = None
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "BlockCoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
