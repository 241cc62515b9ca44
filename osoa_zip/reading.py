"""The reader: an archive's chunks as typed records, in order, with precise errors.

It decides nothing.  The restorer (unpack.py) and `list`/`info` (table.py) take
entries from it one at a time, and the parts that follow an entry (a file's DATA,
an image group's side planes and batches) as they need them; what to refuse,
salvage or write is theirs.  Every error is an ArchiveError naming what is wrong.
Under --salvage (format.SalvagingReader) a damaged chunk arrives as Damaged.
"""
from __future__ import annotations

import lzma
from dataclasses import dataclass
from typing import Iterator, TypeVar

from .container.format import ArchiveError
from .container.records import (
    CODEC_XZ,
    BlockData,
    BlockMember,
    Chunk,
    Data,
    FileEntry,
    Header,
    MalformedChunk,
    SolidBlock,
    check_version,
    kind_of,
    parse_chunk,
    xz_decompressor,
)

_Kind = TypeVar("_Kind", bound=Chunk)


@dataclass
class Damaged:
    """A chunk whose checksum failed (--salvage only): its kind, if its tag is still known."""
    tag: bytes

    @property
    def kind(self) -> type[Chunk] | None:
        return kind_of(self.tag)

    @property
    def label(self) -> str:
        return self.tag.decode("ascii", "replace")


class ChunkReader:
    """Typed chunks from (tag, payload) pairs (payload None: damaged), one chunk of look-ahead."""

    def __init__(self, chunks: Iterator[tuple[bytes, bytes | None]], version: tuple[int, int] | None = None) -> None:
        self._chunks = chunks
        self._version = version  # the archive's: a chunk kind newer than it is refused
        self._ahead: tuple[bytes, bytes | None] | None = None
        self.last_tag: bytes | None = None  # of the chunk read last (an unreadable one's, say)

    @property
    def last_kind(self) -> type[Chunk] | None:
        return kind_of(self.last_tag) if self.last_tag is not None else None

    def _next_raw(self) -> tuple[bytes, bytes | None] | None:
        if self._ahead is not None:
            item, self._ahead = self._ahead, None
        else:
            item = next(self._chunks, None)
        self.last_tag = item[0] if item is not None else None
        return item

    def _peek_tag(self) -> bytes | None:
        if self._ahead is None:
            self._ahead = next(self._chunks, None)
        return self._ahead[0] if self._ahead is not None else None

    def header(self) -> Header:
        item = self._next_raw()
        if item is None or item[0] != Header.TAG or item[1] is None:
            raise ArchiveError("archive has no header chunk")
        return Header.parse(item[1], self._version)

    def next_entry(self) -> Chunk | Damaged | None:
        """The next chunk that is not a part of the entry before it (None at the end).  A part
        here is out of place: damage, unless under --salvage, where it belongs to a lost entry."""
        item = self._next_raw()
        if item is None:
            return None
        tag, payload = item
        if payload is None:
            return Damaged(tag)
        if self._version is not None and kind_of(tag) is not None:
            check_version(kind_of(tag), self._version)
        return parse_chunk(tag, payload)

    def part(self, kind: type[_Kind], what: str) -> _Kind | Damaged:
        """The next chunk, which must be of this kind (a damaged one is Damaged, under --salvage)."""
        item = self._next_raw()
        if item is None or item[0] != kind.TAG:
            raise ArchiveError(f"{what} missing")
        if self._version is not None:
            check_version(kind, self._version)
        return Damaged(item[0]) if item[1] is None else kind.parse(item[1])

    def has_part(self, kind: type[Chunk]) -> bool:
        return self._peek_tag() == kind.TAG

    def skip_parts(self, kinds: tuple[type[Chunk], ...]) -> list[type[Chunk]]:
        """Read past the parts of these kinds that come next (a refused entry's); their kinds."""
        skipped, tags = [], {kind.TAG: kind for kind in kinds}
        while self._peek_tag() in tags:
            skipped.append(tags[self._next_raw()[0]])
        return skipped

    def file_pieces(self, entry: FileEntry, limit: int) -> Iterator[bytes]:
        """A file's bytes, DATA chunk by DATA chunk (each at most ``limit`` bytes), checked
        against the size its entry declares."""
        remaining = entry.size
        for index in range(entry.chunks):
            try:
                piece = self.part(Data, f"file {entry.name!r}: data chunk {index}")
                if isinstance(piece, Damaged):
                    raise ArchiveError(f"file {entry.name!r}: data chunk {index} is damaged")
                body = piece.content(limit)
            except MalformedChunk as error:
                raise ArchiveError(f"file {entry.name!r}: data chunk {index}: {error}") from None
            remaining -= len(body)
            if len(body) > limit or remaining < 0:
                raise ArchiveError(f"file {entry.name!r}: more data than declared")
            yield body
        if remaining:
            raise ArchiveError(f"file {entry.name!r}: less data than declared")

    def skip_file(self, entry: FileEntry) -> None:
        """Read past a file's DATA chunks without decompressing them (an entry nobody asked for):
        the framing has checked their bytes."""
        for index in range(entry.chunks):
            self.part(Data, f"file {entry.name!r}: data chunk {index}")

    def skip_block(self, block: SolidBlock) -> None:
        """Read past a solid block's BDAT chunks without decoding them."""
        for index in range(block.chunks):
            self.part(BlockData, f"a solid block's data chunk {index}")


class BlockStream:
    """One solid block's files, decoded in order from its BDAT chunks as they are read.

    Memory stays bounded whatever the index declares: each read decodes at most the
    bytes asked for (xz's ``max_length``), the decoder's memory is capped
    (XZ_MEMORY_LIMIT), and every file gets exactly the bytes its entry declares: a
    stream that ends early, runs on past the index, or leaves data or chunks over is
    an ArchiveError naming the block and file.
    """

    def __init__(self, chunks: ChunkReader, block: SolidBlock, what: str) -> None:
        self._chunks, self._block, self.what = chunks, block, what
        self._decompressor = xz_decompressor() if block.codec == CODEC_XZ else None
        self._stored = b""  # a stored block's bytes read but not handed out yet
        self._chunks_read = 0

    def _next_payload(self) -> bytes | None:
        """The next BDAT chunk's bytes, or None once every declared chunk is read."""
        if self._chunks_read == self._block.chunks:
            return None
        index = self._chunks_read
        self._chunks_read += 1
        part = self._chunks.part(BlockData, f"{self.what}: data chunk {index}")
        if isinstance(part, Damaged):  # --salvage
            raise ArchiveError(f"{self.what}: data chunk {index} is damaged")
        return part.data

    def read(self, size: int) -> bytes:
        """Up to ``size`` decoded bytes (at least one), b"" once the stream has ended."""
        if self._decompressor is None:
            while not self._stored:
                payload = self._next_payload()
                if payload is None:
                    return b""
                self._stored = payload
            piece, self._stored = self._stored[:size], self._stored[size:]
            return piece
        decompressor = self._decompressor
        try:
            while not decompressor.eof:
                data = b""
                if decompressor.needs_input:
                    data = self._next_payload()
                    if data is None:
                        raise ArchiveError(f"{self.what}: its stream is truncated")
                piece = decompressor.decompress(data, max_length=size)
                if piece:
                    return piece
        except lzma.LZMAError:
            raise ArchiveError(f"{self.what} is damaged (xz)") from None
        return b""

    def pieces(self, member: BlockMember, limit: int) -> Iterator[bytes]:
        """One file's bytes, at most ``limit`` at a time."""
        remaining = member.size
        while remaining:
            piece = self.read(min(remaining, limit))
            if not piece:
                raise ArchiveError(f"{self.what}: file {member.name!r}: less data than declared")
            remaining -= len(piece)
            yield piece

    def finish(self) -> None:
        """After the last file: the stream must end here, its chunks used up."""
        if self.read(1):
            raise ArchiveError(f"{self.what}: more data than its files declare")
        unused = self._decompressor.unused_data if self._decompressor is not None else b""
        if unused or self._next_payload() is not None:
            raise ArchiveError(f"{self.what}: data after the end of its stream")

    def skip_rest(self) -> None:
        """Read past the block's data chunks that come next (--salvage, after damage), decoding nothing."""
        self._chunks_read += len(self._chunks.skip_parts((BlockData,)))
