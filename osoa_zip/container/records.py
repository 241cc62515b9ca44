"""One class per chunk kind: its tag, its writer and its validating reader.

The framing (preamble, tag, length, CRC, END) is format.py's; this module says
what each payload holds (docs/FORMAT.md, "Chunk sequence").  Everything that
reads or writes an archive (pack, unpack, list/info, salvage) goes through
these classes, so a tag's bytes and a payload's layout are spelt out once,
here.  A new chunk kind is one more class with ``@chunk_kind``.

A reader (``Kind.parse``) checks the types and shapes a writer produces and
raises MalformedChunk, naming the chunk kind, for anything else; what a valid
value *means* (an image mode osoa-zip cannot restore, a name that escapes the
destination) is left to the restorer, which may refuse one entry and go on.
The bytes written are those of every release since 1.0: JSON payloads are
canonical (format.canonical_json), optional keys are left out when empty.
"""
from __future__ import annotations

import base64
import copy
import lzma
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ..exact.grid import ENGINES
from . import format as _format
from .format import ArchiveError, OversizedEntry, canonical_json, read_json

DATA_CHUNK_BYTES = 1 << 24      # a general file travels in DATA chunks of up to this many bytes
MAX_GROUP_IMAGES = 1 << 16      # writers flush an image group at this many images (bounds the table)
MAX_TABLE_BYTES = 1 << 28       # an image table larger than this, decompressed, is refused
XZ_MEMORY_LIMIT = 1 << 28       # a decoder needs ~65 MiB for the 64 MiB dictionary of preset 9
CODEC_STORE, CODEC_XZ = 0, 1    # a DATA chunk's first byte
CODEC_NAMES = {CODEC_STORE: "store", CODEC_XZ: "xz"}
DEFAULT_BLOCK_BYTES = 64 << 20  # a solid block holds about this many bytes of files (compress --block-size)
MAX_BLOCK_BYTES = 1 << 32       # the largest block a writer writes; a block index declaring more is refused
MAX_BLOCK_FILES = 1 << 16       # ... or more files than this (about 16 values each: within MAX_JSON_VALUES)
VERBATIM_SINCE = (1, 5)         # the format that added an image's verbatim bytes, rasters and compression
COMPACT_HEADER_SINCE = (1, 6)   # the format whose HEAD is deflated and names its engine by version alone
MAX_HEADER_BYTES = 1 << 16      # a deflated HEAD inflating to more than this is refused (writers write < 1 KiB)


def written_format() -> tuple[int, int]:
    """The format version this release writes (format.py's constants, read when called)."""
    return _format.FORMAT_MAJOR, _format.FORMAT_MINOR


def writes_verbatim() -> bool:
    """Whether the archives this release writes may hold 1.5's image fields (ImageEntry)."""
    return written_format() >= VERBATIM_SINCE


class MalformedChunk(ArchiveError):
    """A chunk's payload is not what its kind's writer writes."""


def xz_filters(size: int) -> list[dict]:
    """xz at preset 9, with the dictionary no larger than ``size`` bytes of data need: the same
    output, but preset 9's 64 MiB dictionary costs ~100 ms per call even for 20 bytes
    (100 000 small files: 3 hours of it)."""
    dictionary = 1 << 12
    while dictionary < size and dictionary < 1 << 26:
        dictionary <<= 1
    return [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": dictionary}]


def xz_compress(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=xz_filters(len(data)))


def xz_decompressor() -> lzma.LZMADecompressor:
    """A decompressor that refuses streams asking for more memory than our writer ever needs."""
    return lzma.LZMADecompressor(memlimit=XZ_MEMORY_LIMIT)


# -- the registry -------------------------------------------------------------

CHUNK_KINDS: dict[bytes, type[Chunk]] = {}
_Kind = TypeVar("_Kind", bound="type[Chunk]")


def chunk_kind(cls: _Kind) -> _Kind:
    """Register a chunk kind by its tag (one class per tag)."""
    if len(cls.TAG) != 4 or cls.TAG in CHUNK_KINDS:
        raise ValueError(f"chunk tag {cls.TAG!r} is malformed or taken")
    CHUNK_KINDS[cls.TAG] = cls
    return cls


class Chunk:
    """A chunk kind.  ``ROLE`` says where it stands in the sequence: "header", "entry" (starts
    an entry: a name to restore), "part" (belongs to the entry before it) or "statistics".
    ``MODEL_STATE``: the adaptation reads it, so losing it loses the rest of its segment."""

    TAG: ClassVar[bytes]
    ROLE: ClassVar[str]
    MODEL_STATE: ClassVar[bool] = False
    SINCE: ClassVar[tuple[int, int]] = (1, 0)  # the first format version that has this kind

    def payload(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def parse(cls, payload: bytes) -> Chunk:
        raise NotImplementedError

    def write(self, writer) -> None:
        """Append this chunk to a format.ArchiveWriter."""
        writer.write_chunk(self.TAG, self.payload())

    @classmethod
    def label(cls) -> str:
        return cls.TAG.decode("ascii").strip()


def parse_chunk(tag: bytes, payload: bytes) -> Chunk:
    """The typed chunk; an unknown tag is damage (format 1 has no optional chunks)."""
    kind = CHUNK_KINDS.get(tag)
    if kind is None:
        raise ArchiveError(f"unexpected chunk {tag!r}")
    return kind.parse(payload)


def kind_of(tag: bytes) -> type[Chunk] | None:
    return CHUNK_KINDS.get(tag)


def check_version(kind: type[Chunk], version: tuple[int, int]) -> None:
    """A chunk kind newer than the archive's format version is damage or forgery."""
    if kind.SINCE > version:
        raise ArchiveError(f"{kind.label()} chunks are new in format {'%d.%d' % kind.SINCE}, but the archive "
                           f"says it is format {'%d.%d' % version}")


# -- checked JSON fields --------------------------------------------------------

class _Fields:
    """A JSON object's fields, each taken with its type checked."""

    def __init__(self, value: Any, what: str) -> None:
        if not isinstance(value, dict):
            raise MalformedChunk(f"{what} is not a JSON object")
        self.value, self.what = value, what

    def _get(self, key: str, kinds: tuple, default: Any = None, required: bool = True):
        if key not in self.value:
            if required:
                raise MalformedChunk(f"{self.what} has no {key!r}")
            return default
        item = self.value[key]
        if not isinstance(item, kinds) or (int in kinds and isinstance(item, bool)):
            raise MalformedChunk(f"{self.what}: {key!r} is not a {kinds[0].__name__}")
        return item

    def integer(self, key: str) -> int:
        return self._get(key, (int,))

    def text(self, key: str, default: str | None = None) -> str:
        return self._get(key, (str,), default, required=default is None)

    def mapping(self, key: str) -> dict:
        return self._get(key, (dict,))

    def items(self, key: str) -> list:
        return self._get(key, (list,))
    def rows(self, key: str, types: tuple[type, ...]) -> list[tuple]:
        """An optional list (absent: empty) of lists whose items have these types."""
        rows = self._get(key, (list,), [], required=False)
        for row in rows:
            if not isinstance(row, list) or len(row) != len(types) or not all(
                    type(item) is kind for item, kind in zip(row, types)):
                raise MalformedChunk(f"{self.what}: {key!r} holds a malformed row")
        return [tuple(row) for row in rows]

    def binary(self, key: str) -> bytes:
        """An optional base64 field (absent: empty)."""
        try:
            return base64.b64decode(self._get(key, (str,), "", required=False), validate=True)
        except ValueError:  # binascii.Error, or a string that is not ASCII
            raise MalformedChunk(f"{self.what}: {key!r} is not base64") from None

    def name(self) -> str:
        """The entry's name: ``path``, or ``path_b64`` for a name that is not UTF-8."""
        if "path_b64" in self.value:
            try:
                raw = base64.b64decode(self._get("path_b64", (str,)), validate=True)
            except ValueError:  # binascii.Error, or a string that is not ASCII
                raise MalformedChunk(f"{self.what}: 'path_b64' is not base64") from None
            return raw.decode("utf-8", "surrogateescape")
        return self.text("path")


def name_fields(name: str) -> dict:
    """Names that are not UTF-8 (surrogate-escaped by the OS layer) travel as bytes."""
    try:
        name.encode("utf-8")
        return {"path": name}
    except UnicodeEncodeError:
        return {"path_b64": base64.b64encode(name.encode("utf-8", "surrogateescape")).decode("ascii")}


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _JsonChunk(Chunk):
    """A chunk whose payload is one canonical JSON value."""

    def to_json(self) -> Any:
        raise NotImplementedError

    def payload(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def _fields(cls, payload: bytes) -> _Fields:
        what = f"a {cls.label()} entry"
        return _Fields(read_json(payload, what), what)


# -- the kinds ------------------------------------------------------------------

@chunk_kind
@dataclass
class Header(_JsonChunk):
    """HEAD: who wrote the archive, with which model, engine and adaptation settings.

    ``engine`` is always the engine's whole record (exact/grid.py ENGINES), as `info`
    shows it.  Up to format 1.5 HEAD carries that record whole, and the decoder
    compares it with the records it knows (unpack.py).  Since 1.6 HEAD names the
    engine by its version alone, ``{"version": 2}``, and is deflated: a shipped
    engine's record never changes, so its version says all of it, and the reader
    takes the record from ENGINES.  ``layout`` is the format version whose bytes
    the header is read from or written as (by default, the one this release writes).
    The adaptation object is checked by those who replay it (adapt/)."""

    TAG: ClassVar[bytes] = b"HEAD"
    ROLE: ClassVar[str] = "header"
    creator: str
    model: dict
    engine: dict
    adaptation: dict
    layout: tuple[int, int] = field(default_factory=written_format)

    def to_json(self) -> dict:
        return {"creator": self.creator, "model": self.model, "engine": self.engine, "adaptation": self.adaptation}

    def payload(self) -> bytes:
        if self.layout < COMPACT_HEADER_SINCE:
            return canonical_json(self.to_json())
        version = self.engine.get("version")
        if type(version) is not int or ENGINES.get(version) != self.engine:
            raise ValueError(f"engine record {self.engine!r} is not a shipped engine's (exact/grid.py ENGINES): "
                             f"its version cannot name it")
        text = canonical_json({**self.to_json(), "engine": {"version": version}})
        if len(text) > MAX_HEADER_BYTES:
            raise ValueError(f"the header holds {len(text)} bytes, more than a reader takes ({MAX_HEADER_BYTES})")
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw DEFLATE: the chunk's CRC-32 checks it
        return deflater.compress(text) + deflater.flush()

    @classmethod
    def parse(cls, payload: bytes, version: tuple[int, int] | None = None) -> Header:
        """The header of a format ``version`` archive (by default, the format this release writes)."""
        version = version or written_format()
        compact = version >= COMPACT_HEADER_SINCE
        fields = _Fields(read_json(_inflate_header(payload) if compact else payload, "the header"), "the header")
        model = _Fields(fields.mapping("model"), "the header's model")
        model.text("name")  # the decoder loads the model by name and checks its hash
        model.text("sha256")
        engine = fields.mapping("engine")
        named = set(engine) == {"version"}
        if named and not compact:
            raise MalformedChunk(f"the header names its engine by version alone, as format "
                                 f"{'%d.%d' % COMPACT_HEADER_SINCE} began to, but the archive says it is format "
                                 f"{'%d.%d' % version}; it is damaged or forged")
        if compact:
            engine = _named_engine(engine, named)
        return cls(fields.text("creator", ""), fields.value["model"], engine, fields.mapping("adaptation"), version)


def _inflate_header(payload: bytes) -> bytes:
    """A 1.6 HEAD's JSON, inflated to at most MAX_HEADER_BYTES (a bomb stops there)."""
    inflater = zlib.decompressobj(-15)
    try:
        text = inflater.decompress(payload, MAX_HEADER_BYTES + 1)
    except zlib.error:
        raise MalformedChunk("the header is damaged (deflate)") from None
    if len(text) > MAX_HEADER_BYTES:
        raise OversizedEntry(f"the header inflates to more than {MAX_HEADER_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise MalformedChunk("the header's deflate stream is truncated or followed by other bytes")
    return text


def _named_engine(engine: dict, named: bool) -> dict:
    """The whole record of the engine a 1.6 header names by version; refused if unknown."""
    version = engine.get("version")
    if not named or type(version) is not int:
        raise MalformedChunk('the header\'s engine is not {"version": N} (format 1.6 names an engine by its '
                             'version alone)')
    if version not in ENGINES:
        raise ArchiveError(f"archive was written by numeric engine v{version}, which this version cannot replay "
                           f"(it knows v{', v'.join(map(str, sorted(ENGINES)))}); upgrade osoa-zip")
    return copy.deepcopy(ENGINES[version])  # the caller's to keep: the frozen table stays untouched


@chunk_kind
@dataclass
class Directory(_JsonChunk):
    TAG: ClassVar[bytes] = b"DIRE"
    ROLE: ClassVar[str] = "entry"
    name: str
    mode: int
    mtime_ns: int

    def to_json(self) -> dict:
        return {**name_fields(self.name), "mode": self.mode, "mtime_ns": self.mtime_ns}

    @classmethod
    def parse(cls, payload: bytes) -> Directory:
        fields = cls._fields(payload)
        return cls(fields.name(), fields.integer("mode"), fields.integer("mtime_ns"))


@dataclass
class _Link(_JsonChunk):
    ROLE: ClassVar[str] = "entry"
    name: str
    target: str

    def to_json(self) -> dict:
        return {**name_fields(self.name), "target": self.target}

    @classmethod
    def parse(cls, payload: bytes):
        fields = cls._fields(payload)
        return cls(fields.name(), fields.text("target"))


@chunk_kind
@dataclass
class Symlink(_Link):
    """LINK: a symbolic link (its target relative, staying inside the destination)."""
    TAG: ClassVar[bytes] = b"LINK"


@chunk_kind
@dataclass
class Hardlink(_Link):
    """HARD: a hard link to an earlier regular file (they come last, after every file)."""
    TAG: ClassVar[bytes] = b"HARD"


@chunk_kind
@dataclass
class FileEntry(_JsonChunk):
    """FILE: a general-path file; ``chunks`` DATA chunks follow it."""

    TAG: ClassVar[bytes] = b"FILE"
    ROLE: ClassVar[str] = "entry"
    name: str
    mode: int
    mtime_ns: int
    size: int
    chunks: int

    def to_json(self) -> dict:
        return {**name_fields(self.name), "mode": self.mode, "mtime_ns": self.mtime_ns, "size": self.size,
                "chunks": self.chunks}

    @classmethod
    def parse(cls, payload: bytes) -> FileEntry:
        fields = cls._fields(payload)
        entry = cls(fields.name(), fields.integer("mode"), fields.integer("mtime_ns"), fields.integer("size"),
                    fields.integer("chunks"))
        if entry.size < 0 or entry.chunks < 0:
            raise MalformedChunk(f"file {entry.name!r} declares a negative size")
        return entry


@chunk_kind
@dataclass
class Data(Chunk):
    """DATA: one piece (≤ DATA_CHUNK_BYTES) of the file before it: a codec byte, then its bytes."""

    TAG: ClassVar[bytes] = b"DATA"
    ROLE: ClassVar[str] = "part"
    codec: int
    body: bytes

    @classmethod
    def packed(cls, piece: bytes, try_xz: bool = True) -> Data:
        """xz if that is smaller (tried only if ``try_xz``), else stored."""
        packed = xz_compress(piece) if try_xz else piece
        return cls(CODEC_XZ, packed) if len(packed) < len(piece) else cls(CODEC_STORE, piece)

    def payload(self) -> bytes:
        return bytes([self.codec]) + self.body

    @classmethod
    def parse(cls, payload: bytes) -> Data:
        if not payload:
            raise MalformedChunk("a DATA chunk is empty")
        if payload[0] not in CODEC_NAMES:
            raise MalformedChunk(f"unknown codec {payload[0]}")
        return cls(payload[0], payload[1:])

    def content(self, limit: int) -> bytes:
        """The file bytes it holds (at most ``limit`` + 1 of them are decompressed)."""
        if self.codec == CODEC_STORE:
            return self.body
        try:
            return xz_decompressor().decompress(self.body, max_length=limit + 1)
        except lzma.LZMAError:
            raise MalformedChunk("is damaged (xz)") from None


@dataclass
class ImageEntry:
    """One image of a group's table: where it goes and what Pillow needs to write it back."""

    name: str
    mode: int
    mtime_ns: int
    height: int
    width: int
    image_mode: str
    format: str
    palette: bytes = b""     # P images: RGB triples, as Pillow reports them
    png_before: bytes = b""  # PNG chunks between IHDR and the first IDAT, verbatim
    png_after: bytes = b""   # ... between the last IDAT and IEND
    sha256: str = ""         # of the original file (--byte-exact)
    # (1.5) the TIFF compression Pillow writes the file with ("tiff_lzw"), "" for none
    compression: str = ""
    # (1.5) the file minus its rasters, verbatim, and where each raster goes: the rows RASTER_ROW
    # describes (the imaging side's verbatim.Raster); restored by interleaving the two
    verbatim: bytes = b""
    rasters: list[tuple] = field(default_factory=list)

    # offset, x0, y0, x1, y1, raw mode, stride, row step
    RASTER_ROW: ClassVar[tuple[type, ...]] = (int, int, int, int, int, str, int, int)
    COMPRESSIONS: ClassVar[tuple[str, ...]] = ("tiff_lzw",)

    def to_json(self) -> dict:
        value = {**name_fields(self.name), "mode": self.mode, "mtime_ns": self.mtime_ns, "height": self.height,
                 "width": self.width, "image_mode": self.image_mode, "format": self.format}
        for key in ("png_before", "png_after", "palette", "verbatim"):
            if getattr(self, key):
                value[key] = _base64(getattr(self, key))
        for key in ("sha256", "compression"):
            if getattr(self, key):
                value[key] = getattr(self, key)
        if self.rasters:
            value["rasters"] = [list(row) for row in self.rasters]
        return value

    @property
    def since_1_5(self) -> bool:
        """Whether the entry uses a field format 1.5 added (an older archive may not)."""
        return bool(self.compression or self.verbatim or self.rasters)

    @classmethod
    def from_json(cls, value: Any) -> ImageEntry:
        fields = _Fields(value, "an image table's entry")
        entry = cls(fields.name(), fields.integer("mode"), fields.integer("mtime_ns"), fields.integer("height"),
                    fields.integer("width"), fields.text("image_mode"), fields.text("format"),
                    fields.binary("palette"), fields.binary("png_before"), fields.binary("png_after"),
                    fields.text("sha256", ""), fields.text("compression", ""), fields.binary("verbatim"),
                    fields.rows("rasters", cls.RASTER_ROW))
        if entry.compression and entry.compression not in cls.COMPRESSIONS:
            raise MalformedChunk(f"image {entry.name!r}: unknown compression {entry.compression!r}")
        if entry.rasters and entry.compression:
            raise MalformedChunk(f"image {entry.name!r} has both rasters and a compression")
        return entry


@chunk_kind
@dataclass
class ImageTable(Chunk):
    """IMGS: one image group's table (xz'd JSON list), followed by its side planes and batches."""

    TAG: ClassVar[bytes] = b"IMGS"
    ROLE: ClassVar[str] = "entry"
    MODEL_STATE: ClassVar[bool] = True
    images: list[ImageEntry] = field(default_factory=list)

    def payload(self) -> bytes:
        # xz: on 28x28 images the plain JSON table alone would cost ~1 bit per sub-pixel.
        return xz_compress(canonical_json([image.to_json() for image in self.images]))

    @classmethod
    def parse(cls, payload: bytes) -> ImageTable:
        decompressor = xz_decompressor()
        try:
            text = decompressor.decompress(payload, max_length=MAX_TABLE_BYTES)
        except lzma.LZMAError:
            raise MalformedChunk("an image table is damaged") from None
        if not decompressor.eof:
            if len(text) >= MAX_TABLE_BYTES:
                raise OversizedEntry(f"an image table is larger than {MAX_TABLE_BYTES} bytes")
            raise MalformedChunk("an image table is truncated")
        value = read_json(text, "an image table", max_values=32 * MAX_GROUP_IMAGES)
        if not isinstance(value, list):
            raise MalformedChunk("an image table is not a list")
        return cls([ImageEntry.from_json(item) for item in value])


@dataclass
class _Planes(Chunk):
    """xz of a group's planes kept beside the model, in table order, one byte per pixel."""

    ROLE: ClassVar[str] = "part"
    MODES: ClassVar[tuple[str, ...]]   # the image modes that have this plane
    WHAT: ClassVar[str]
    packed: bytes

    def payload(self) -> bytes:
        return self.packed

    @classmethod
    def parse(cls, payload: bytes):
        return cls(payload)

    @classmethod
    def members(cls, table: ImageTable) -> list[int]:
        """Table indices of the images with this plane: their order in the chunk."""
        return [i for i, image in enumerate(table.images) if image.image_mode in cls.MODES]


@chunk_kind
@dataclass
class AlphaPlanes(_Planes):
    """ALPH: the alpha planes of a group's LA and RGBA images (the model codes the colours)."""
    TAG: ClassVar[bytes] = b"ALPH"
    MODES: ClassVar[tuple[str, ...]] = ("LA", "RGBA")
    WHAT: ClassVar[str] = "alpha planes"


@chunk_kind
@dataclass
class PaletteIndices(_Planes):
    """PIDX: the index planes of a group's P images (they take no part in the batches)."""
    TAG: ClassVar[bytes] = b"PIDX"
    MODES: ClassVar[tuple[str, ...]] = ("P",)
    WHAT: ClassVar[str] = "palette indices"


# The planes kept beside the model, in the order their chunks follow a group's table.
SIDE_PLANES: tuple[type[_Planes], ...] = (AlphaPlanes, PaletteIndices)


@chunk_kind
@dataclass
class Batch(Chunk):
    """BATC: one coded batch of the group before it: a flag byte, then ANS words (adapt/flags.py)."""

    TAG: ClassVar[bytes] = b"BATC"
    ROLE: ClassVar[str] = "part"
    MODEL_STATE: ClassVar[bool] = True
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, payload: bytes) -> Batch:
        return cls(payload)

    @property
    def flags(self) -> int:
        return self.data[0] if self.data else 0


@dataclass
class BatchRecord:
    """One coded batch as the statistics record it."""
    bits: int
    subpixels: int
    flags: int


@chunk_kind
@dataclass
class Statistics(_JsonChunk):
    """STAT: bits, sub-pixels and flags of every batch, for `info` and benchmarks (no timings:
    they would make identical inputs give different archives)."""

    TAG: ClassVar[bytes] = b"STAT"
    ROLE: ClassVar[str] = "statistics"
    batches: list[BatchRecord] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"batches": [[batch.bits, batch.subpixels, batch.flags] for batch in self.batches]}

    @classmethod
    def parse(cls, payload: bytes) -> Statistics:
        rows = read_json(payload, "the statistics")
        rows = rows.get("batches") if isinstance(rows, dict) else None
        if not isinstance(rows, list) or not all(
                isinstance(row, list) and len(row) == 3 and all(type(item) is int for item in row) for row in rows):
            raise MalformedChunk("the statistics chunk is malformed")
        return cls([BatchRecord(*row) for row in rows])


@dataclass
class BlockMember:
    """One file of a solid block: where it goes, and which bytes of the block's stream are its."""

    name: str
    mode: int
    mtime_ns: int
    offset: int
    size: int

    def to_json(self) -> dict:
        return {**name_fields(self.name), "mode": self.mode, "mtime_ns": self.mtime_ns, "offset": self.offset,
                "size": self.size}

    @classmethod
    def from_json(cls, value: Any) -> BlockMember:
        fields = _Fields(value, "a solid block's file")
        return cls(fields.name(), fields.integer("mode"), fields.integer("mtime_ns"), fields.integer("offset"),
                   fields.integer("size"))


@chunk_kind
@dataclass
class SolidBlock(_JsonChunk):
    """BLCK (1.5): the index of a solid block, followed by its ``chunks`` BDAT chunks.

    The files' bytes, one after the other in index order, make ``size`` bytes that
    one stream codes (``codec``: xz, or stored when xz would not shrink them), so
    that similar files share one dictionary, as 7z's solid archives do.  The index
    is checked before anything is decoded: each file starts where the one before it
    ends (no gaps, no overlaps), and the block at most MAX_BLOCK_BYTES."""

    TAG: ClassVar[bytes] = b"BLCK"
    ROLE: ClassVar[str] = "entry"
    SINCE: ClassVar[tuple[int, int]] = (1, 5)
    codec: int
    size: int
    chunks: int
    files: list[BlockMember] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"codec": CODEC_NAMES[self.codec], "size": self.size, "chunks": self.chunks,
                "files": [member.to_json() for member in self.files]}

    @classmethod
    def parse(cls, payload: bytes) -> SolidBlock:
        fields = cls._fields(payload)
        codec = {name: code for code, name in CODEC_NAMES.items()}.get(fields.text("codec"))
        if codec is None:
            raise MalformedChunk(f"a solid block's codec {fields.value['codec']!r} is unknown")
        size, chunks = fields.integer("size"), fields.integer("chunks")
        if size > MAX_BLOCK_BYTES:
            raise OversizedEntry(f"a solid block declares {size} bytes, more than any writer writes "
                                 f"({MAX_BLOCK_BYTES})")
        files = fields.items("files")
        if not 0 < len(files) <= MAX_BLOCK_FILES:
            raise MalformedChunk(f"a solid block declares {len(files)} files (1 to {MAX_BLOCK_FILES})")
        block = cls(codec, size, chunks, [BlockMember.from_json(value) for value in files])
        block._check_layout()
        return block

    def _check_layout(self) -> None:
        if self.size < 0 or self.chunks < 0 or (self.size and not self.chunks):
            raise MalformedChunk("a solid block declares a negative size or no data chunks")
        end = 0
        for member in self.files:
            if member.size < 0 or member.offset != end:
                raise MalformedChunk(f"solid block: file {member.name!r} at {member.offset} (+{member.size}) "
                                     f"overlaps another or leaves a gap (expected offset {end})")
            end += member.size
            if end > self.size:
                raise MalformedChunk(f"solid block: file {member.name!r} ends at {end}, beyond the block's "
                                     f"{self.size} bytes")
        if end != self.size:
            raise MalformedChunk(f"a solid block's files hold {end} bytes, not the {self.size} it declares")


@chunk_kind
@dataclass
class BlockData(Chunk):
    """BDAT (1.5): the next piece (at most DATA_CHUNK_BYTES) of the solid block before it: its coded stream."""

    TAG: ClassVar[bytes] = b"BDAT"
    ROLE: ClassVar[str] = "part"
    SINCE: ClassVar[tuple[int, int]] = (1, 5)
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, payload: bytes) -> BlockData:
        return cls(payload)


KNOWN_TAGS = frozenset(CHUNK_KINDS)
