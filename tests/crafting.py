"""Build hostile archives the way an attacker would: real chunks, re-framed with
valid CRCs and a valid END digest, so that the damage gets past the framing
and reaches the decoder's logic.

Everything is expressed as edits of an archive that osoa-zip itself wrote
(rename an entry, change one field, duplicate or swap chunks), so the helpers
keep working when the layout of the chunks changes: they only assume what
docs/FORMAT.md promises (entry chunks are JSON, or xz'd JSON for IMGS, with
`path`; FILE is followed by its DATA chunks; IMGS by ALPH? and BATC chunks;
BLCK, whose "files" are entries, by BDAT chunks; HEAD is JSON, deflated since
format 1.6).  A crafted archive keeps the format version it was read with.
"""
from __future__ import annotations

import io
import json
import lzma
import os
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from osoa_zip.container import format as container_format
from osoa_zip.container.format import ArchiveReader, ArchiveWriter
from osoa_zip.container.records import COMPACT_HEADER_SINCE, Header

PREAMBLE_SIZE = 12
CHUNK_FRAMING = 16  # tag, u64 length, crc32
ENTRY_TAGS = (b"DIRE", b"LINK", b"HARD", b"FILE")
FOLLOWERS = (b"DATA", b"ALPH", b"PIDX", b"BATC", b"BDAT")  # chunks that belong to the entry before them
TABLE_TAGS = (b"IMGS", b"BLCK")  # entry chunks that hold several entries


@contextmanager
def writing_minor(minor: int | None):
    """The writer's format minor set to ``minor`` for a while (None: left as it is)."""
    original = container_format.FORMAT_MINOR
    container_format.FORMAT_MINOR = original if minor is None else minor
    try:
        yield
    finally:
        container_format.FORMAT_MINOR = original


def frame(chunks, minor: int | None = None) -> bytes:
    """Frame (tag, payload) pairs with correct CRCs and END digest (as format 1.``minor``:
    by default the one this release writes)."""
    output = io.BytesIO()
    with writing_minor(minor):
        writer = ArchiveWriter(output)
    for tag, payload in chunks:
        writer.write_chunk(tag, payload)
    writer.close()
    return output.getvalue()


def chunk_spans(data: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, tag) of every framed chunk of a well-formed archive, END included."""
    spans, offset = [], PREAMBLE_SIZE
    while offset + 12 <= len(data):
        tag, length = struct.unpack_from("<4sQ", data, offset)
        end = offset + 12 + length + 4
        spans.append((offset, end, tag))
        offset = end
    return spans


def _members(tag: bytes, value) -> list:
    """The entries a table chunk holds: an image table is a list of them, a solid block's index
    (1.5) holds them under "files"."""
    return value["files"] if tag == b"BLCK" else value


def deflate(data: bytes) -> bytes:
    """Raw DEFLATE at level 9, as a 1.6 writer deflates HEAD."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    return deflater.compress(data) + deflater.flush()


def _deflated_head(tag: bytes, minor: int) -> bool:
    return tag == b"HEAD" and (1, minor) >= COMPACT_HEADER_SINCE


def _load(tag: bytes, payload: bytes, minor: int):
    if _deflated_head(tag, minor):
        return json.loads(zlib.decompress(payload, -15))
    return json.loads(lzma.decompress(payload) if tag == b"IMGS" else payload)


def _dump(tag: bytes, value, minor: int) -> bytes:
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if _deflated_head(tag, minor):
        return deflate(data)
    return lzma.compress(data) if tag == b"IMGS" else data


@dataclass
class Crafted:
    """An archive as an editable list of chunks."""

    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)
    minor: int = field(default_factory=lambda: container_format.FORMAT_MINOR)

    @classmethod
    def parse(cls, data: bytes) -> "Crafted":
        reader = ArchiveReader(io.BytesIO(data))
        return cls(list(reader.chunks()), reader.version[1])

    def copy(self) -> "Crafted":
        return Crafted(list(self.chunks), self.minor)

    def build(self) -> bytes:
        return frame(self.chunks, self.minor)

    def as_minor(self, minor: int) -> "Crafted":
        """The same chunks said to be format 1.``minor``, HEAD written as that format writes it
        (the engine's whole record before 1.6): what a forger of an older archive would make."""
        index = self.index(b"HEAD")
        header = Header.parse(self.chunks[index][1], (1, self.minor))
        older = Header(header.creator, header.model, header.engine, header.adaptation, (1, minor))
        crafted = Crafted(list(self.chunks), minor)
        crafted.chunks[index] = (b"HEAD", older.payload())
        return crafted

    @property
    def tags(self) -> list[bytes]:
        return [tag for tag, _ in self.chunks]

    # -- entries ---------------------------------------------------------------

    def index(self, tag: bytes, occurrence: int = 0) -> int:
        return [i for i, t in enumerate(self.tags) if t == tag][occurrence]

    def value(self, index: int):
        tag, payload = self.chunks[index]
        return _load(tag, payload, self.minor)

    def set_value(self, index: int, value) -> "Crafted":
        tag = self.chunks[index][0]
        self.chunks[index] = (tag, _dump(tag, value, self.minor))
        return self

    def find(self, name: str) -> tuple[int, int | None]:
        """(chunk index, position in the image table or None) of the entry called `name`."""
        for index, (tag, payload) in enumerate(self.chunks):
            if tag in ENTRY_TAGS and _load(tag, payload, self.minor).get("path") == name:
                return index, None
            if tag in TABLE_TAGS:
                for position, entry in enumerate(_members(tag, _load(tag, payload, self.minor))):
                    if entry.get("path") == name:
                        return index, position
        raise KeyError(name)

    def edit(self, name: str, **fields) -> "Crafted":
        """Change (or with value None, remove) fields of the entry called `name`."""
        index, position = self.find(name)
        value = self.value(index)
        entry = value if position is None else _members(self.chunks[index][0], value)[position]
        for key, new in fields.items():
            if new is None:
                entry.pop(key, None)
            else:
                entry[key] = new
        return self.set_value(index, value)

    def entry_span(self, index: int) -> tuple[int, int]:
        """[start, end) of the chunks of the entry starting at `index` (with its DATA/ALPH/BATC)."""
        end = index + 1
        while end < len(self.chunks) and self.chunks[end][0] in FOLLOWERS:
            end += 1
        return index, end

    def duplicate(self, name: str, new_name: str | None = None, at: int | None = None) -> "Crafted":
        """Copy a FILE/DIRE/LINK/HARD entry (with its data chunks), optionally renamed, before `at`
        (default: right after the original).  A file in a solid block copies the whole block
        (every name in it then appears twice); it cannot be renamed."""
        index, position = self.find(name)
        assert position is None or (self.chunks[index][0] == b"BLCK" and new_name is None), \
            "duplicate() takes a non-image entry"
        start, end = self.entry_span(index)
        copied = list(self.chunks[start:end])
        if new_name is not None:
            value = _load(*copied[0], self.minor)
            value["path"] = new_name
            copied[0] = (copied[0][0], _dump(copied[0][0], value, self.minor))
        at = end if at is None else at
        self.chunks[at:at] = copied
        return self

    def insert_entry(self, tag: bytes, value, at: int | None = None) -> "Crafted":
        """A new entry chunk (e.g. a LINK) before the STAT chunk, or before `at`."""
        at = self.tags.index(b"STAT") if at is None else at
        self.chunks.insert(at, (tag, _dump(tag, value, self.minor)))
        return self

    def names(self) -> list[str]:
        found = []
        for tag, payload in self.chunks:
            if tag in ENTRY_TAGS:
                found.append(_load(tag, payload, self.minor).get("path"))
            elif tag in TABLE_TAGS:
                found += [entry.get("path") for entry in _members(tag, _load(tag, payload, self.minor))]
        return found


def build_source(root: Path, images: int = 2) -> Path:
    """A small folder with every kind of entry: images (model path), files, an empty
    folder, a symbolic link and a hard link.  Kept tiny so that an archive is a few KB."""
    examples = Path(__file__).resolve().parents[1] / "examples" / "images"
    root.mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "docs" / "empty").mkdir()
    (root / "docs" / "a.txt").write_text("hello\n" * 30)
    (root / "b.bin").write_bytes(bytes(range(200)))
    (root / "docs" / "c.txt").write_text("third file\n")
    os.symlink("a.txt", root / "docs" / "link-to-a")
    os.link(root / "b.bin", root / "hard-b.bin")
    for index in range(images):
        with Image.open(examples / f"000{index}.png") as image:
            crop = image.crop((0, 0, 12 + 2 * index, 9))
            if index % 2:
                crop = crop.convert("L")
            crop.save(root / f"img{index}.png", compress_level=0)  # uncompressed: the model path wins
    return root

