"""What the archive's entries look like: names, limits, shared types.

Shared by the writer (pack.py), the reader (unpack.py) and `list`/`info`
(table.py); see docs/FORMAT.md for the chunk sequence.
"""
from __future__ import annotations

import base64
import lzma
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .container.format import ArchiveError, OversizedEntry, read_json
from .imaging.io import ImageRecord

DATA_CHUNK_BYTES = 1 << 24
CHUNK_OVERHEAD = 16  # tag, length and CRC of one chunk
ALPHA_MODES = ("LA", "RGBA")  # their last plane travels in the group's ALPH chunk
INDEX_MODES = ("P",)          # their only plane travels in the group's PIDX chunk
# The planes kept beside the model, in the order their chunks follow a group's IMGS table.
SIDE_PLANES = ((ALPHA_MODES, b"ALPH", "alpha planes"), (INDEX_MODES, b"PIDX", "palette indices"))


def side_plane_members(table: list, modes: tuple) -> list[int]:
    """Table indices of a group's images with this kind of side plane: their order in its chunk."""
    return [i for i, entry in enumerate(table) if entry["image_mode"] in modes]
GROUP_SUBPIXELS = 1 << 25       # images are coded in groups of about this many sub-pixels
MAX_GROUP_IMAGES = 1 << 16      # ... and of at most this many images (bounds the table's memory)
XZ_MEMORY_LIMIT = 1 << 28       # a decoder needs ~65 MiB for the 64 MiB dictionary of preset 9
MAX_IMAGE_SUBPIXELS = 1 << 30   # a declared image larger than this is refused
CODEC_STORE, CODEC_XZ = 0, 1
CHUNK_TAGS = frozenset({b"HEAD", b"DIRE", b"LINK", b"FILE", b"DATA", b"IMGS", b"ALPH", b"PIDX", b"BATC", b"HARD",
                        b"STAT"})
Progress = Callable[[int], None]
Warn = Callable[[str], None]


class UsageError(Exception):
    """The request itself is wrong: missing sources, existing output, ..."""


class ClusterError(Exception):
    """A Dask cluster (--dask) could not finish the work: workers lost too often, the
    scheduler gone, a worker that runs another osoa-zip (osoa_zip/cluster.py)."""


@dataclass
class Summary:
    files: int = 0
    images: int = 0
    input_bytes: int = 0
    image_subpixels: int = 0
    image_bits: int = 0
    batches: list = field(default_factory=list)
    seconds: float = 0.0
    lost: list = field(default_factory=list)    # --salvage: entries that could not be restored
    damage: list = field(default_factory=list)  # --salvage: what was damaged, one line each

    @property
    def bits_per_subpixel(self) -> float:
        return self.image_bits / self.image_subpixels if self.image_subpixels else 0.0


def encode_name(name: str) -> dict:
    """Names that are not UTF-8 (surrogate-escaped by the OS layer) travel as bytes."""
    try:
        name.encode("utf-8")
        return {"path": name}
    except UnicodeEncodeError:
        return {"path_b64": base64.b64encode(name.encode("utf-8", "surrogateescape")).decode("ascii")}


def decode_name(entry: dict) -> str:
    if "path_b64" in entry:
        return base64.b64decode(entry["path_b64"], validate=True).decode("utf-8", "surrogateescape")
    return entry["path"]


MAX_TABLE_BYTES = 1 << 28


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


def read_entry(tag: bytes, payload: bytes):
    """The JSON of an entry chunk; image tables are xz-compressed (and bounded)."""
    what = f"a {tag.decode('ascii', 'replace')} entry"
    if tag == b"IMGS":
        decompressor = xz_decompressor()
        try:
            payload = decompressor.decompress(payload, max_length=MAX_TABLE_BYTES)
        except lzma.LZMAError:
            raise ArchiveError("an image table is damaged") from None
        if not decompressor.eof:
            if len(payload) >= MAX_TABLE_BYTES:
                raise OversizedEntry(f"an image table is larger than {MAX_TABLE_BYTES} bytes")
            raise ArchiveError("an image table is truncated")
        return read_json(payload, "an image table", max_values=32 * MAX_GROUP_IMAGES)
    return read_json(payload, what)



def image_extras(record: ImageRecord) -> dict:
    """Optional fields: verbatim PNG metadata chunks, and the hash promised by --byte-exact."""
    extras = {}
    if record.png_before:
        extras["png_before"] = base64.b64encode(record.png_before).decode("ascii")
    if record.png_after:
        extras["png_after"] = base64.b64encode(record.png_after).decode("ascii")
    if record.sha256:
        extras["sha256"] = record.sha256
    if record.palette:
        extras["palette"] = base64.b64encode(record.palette).decode("ascii")
    return extras


def record_from_entry(entry: dict, pixels: np.ndarray | None = None, picture=None) -> ImageRecord:
    """An image to restore, its pixels in an array (palette indices) or already in a Pillow picture."""
    return ImageRecord(pixels=pixels, picture=picture, mode=entry["image_mode"], format=str(entry["format"]),
                       png_before=base64.b64decode(entry.get("png_before", ""), validate=True),
                       png_after=base64.b64decode(entry.get("png_after", ""), validate=True),
                       sha256=str(entry.get("sha256", "")),
                       palette=base64.b64decode(entry.get("palette", ""), validate=True))


