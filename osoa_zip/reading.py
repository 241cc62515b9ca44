"""The reader: an archive's chunks as typed records, in order, with precise errors.

It decides nothing.  The restorer (unpack.py) and `list`/`info` (table.py) take
entries from it one at a time, and the parts that follow an entry (a file's DATA,
an image group's side planes and batches) as they need them; what to refuse,
salvage or write is theirs.  Every error is an ArchiveError naming what is wrong.
Under --salvage (format.SalvagingReader) a damaged chunk arrives as Damaged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, TypeVar

from .container.format import ArchiveError
from .container.records import Chunk, Data, FileEntry, Header, MalformedChunk, kind_of, parse_chunk

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

    def __init__(self, chunks: Iterator[tuple[bytes, bytes | None]]) -> None:
        self._chunks = chunks
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
        return Header.parse(item[1])

    def next_entry(self) -> Chunk | Damaged | None:
        """The next chunk that is not a part of the entry before it (None at the end).  A part
        here is out of place: damage, unless under --salvage, where it belongs to a lost entry."""
        item = self._next_raw()
        if item is None:
            return None
        tag, payload = item
        return Damaged(tag) if payload is None else parse_chunk(tag, payload)

    def part(self, kind: type[_Kind], what: str) -> _Kind | Damaged:
        """The next chunk, which must be of this kind (a damaged one is Damaged, under --salvage)."""
        item = self._next_raw()
        if item is None or item[0] != kind.TAG:
            raise ArchiveError(f"{what} missing")
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
