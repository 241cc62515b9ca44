"""Read an archive's table without decoding images: for `list` and `info`.

Every chunk is still read and checksummed (the END chunk verifies the whole
archive), but batches are not decoded, so this is fast.  An image's bits are
apportioned from the batches its tiles were coded in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from .adapt.config import AdaptationConfig
from .adapt.flags import (
    FLAG_CHAIN_HEAD,
    FLAG_CHAINED,
    FLAG_GIVE_UP,
    FLAG_PRETRAINED,
    FLAG_ROLLBACK,
    FLAG_SEGMENT_START,
    declared_chain_length,
)
from .container.format import ArchiveError, ArchiveReader
from .container.records import (
    CODEC_NAMES,
    CODEC_XZ,
    SIDE_PLANES,
    Batch,
    BatchRecord,
    BlockData,
    Data,
    Directory,
    FileEntry,
    Hardlink,
    ImageTable,
    SolidBlock,
    Statistics,
    Symlink,
)
from .imaging.io import COLOR_CHANNELS, MODEL_MODES
from .imaging.tiles import plan_batches
from .layout import impossible_images
from .reading import ChunkReader


@dataclass
class Listed:
    name: str
    kind: str            # file, image, dir, symlink, hardlink
    size: int            # bytes (files) or sub-pixels (images)
    method: str          # xz, store, mixed, solid (in an xz block), model, palette, or the link target
    coded_bytes: float


def read_table(source: BinaryIO) -> tuple[dict, list[Listed]]:
    header, listed, _ = read_archive(source)
    return header, listed


def read_archive(source: BinaryIO) -> tuple[dict, list[Listed], list[BatchRecord]]:
    """Header, entries and per-batch statistics, without decoding any batch."""
    overview = read_overview(source)
    return overview.header, overview.entries, overview.batches


@dataclass
class Overview:
    """What `info` shows: the format version, the stored header, the entries and the batches."""
    version: tuple[int, int]
    header: dict
    entries: list[Listed]
    batches: list[BatchRecord]
    blocks: int = 0  # solid blocks

    def totals(self) -> dict:
        """Counts and sizes over the whole archive (for `info`, and `info --json` under "totals")."""
        kinds = [entry.kind for entry in self.entries]
        images = [entry for entry in self.entries if entry.kind == "image"]
        subpixels = sum(entry.size for entry in images)
        image_bytes = sum(entry.coded_bytes for entry in images)
        count = lambda flag: sum(bool(batch.flags & flag) for batch in self.batches)  # noqa: E731
        return {
            "entries": len(self.entries), "images": len(images), "files": kinds.count("file"),
            "directories": kinds.count("dir"), "symlinks": kinds.count("symlink"),
            "hardlinks": kinds.count("hardlink"), "solid_blocks": self.blocks,
            "file_bytes": sum(entry.size for entry in self.entries if entry.kind == "file"),
            "file_coded_bytes": round(sum(entry.coded_bytes for entry in self.entries if entry.kind == "file")),
            "image_subpixels": subpixels, "image_coded_bytes": round(image_bytes),
            "bits_per_subpixel": round(8 * image_bytes / subpixels, 4) if subpixels else None,
            "batches": {"count": len(self.batches), "pretrained": count(FLAG_PRETRAINED),
                        "rolled_back": count(FLAG_ROLLBACK), "segments": count(FLAG_SEGMENT_START),
                        "given_up": count(FLAG_GIVE_UP), "chains": count(FLAG_CHAIN_HEAD),
                        "chained": count(FLAG_CHAINED)},
        }


def read_overview(source: BinaryIO) -> Overview:
    """Everything `info` shows, without decoding any batch."""
    reader = ArchiveReader(source)
    chunks = ChunkReader(reader.chunks(), reader.version)
    header = chunks.header()
    try:
        adaptation = AdaptationConfig.from_header(header.adaptation)
    except (TypeError, ValueError) as error:
        raise ArchiveError(f"the header's adaptation settings are malformed ({error})") from None
    listed: list[Listed] = []
    batches: list[BatchRecord] = []
    blocks = 0
    while (entry := chunks.next_entry()) is not None:
        if isinstance(entry, Statistics):
            batches = entry.batches
        elif isinstance(entry, FileEntry):
            listed.append(_file(entry, chunks))
        elif isinstance(entry, SolidBlock):
            listed.extend(_block(entry, chunks))
            blocks += 1
        elif isinstance(entry, ImageTable):
            listed.extend(_images(entry, chunks, adaptation.tile_size, adaptation.batch_size_for))
        elif isinstance(entry, Directory):
            listed.append(Listed(entry.name, "dir", 0, "", 0))
        elif isinstance(entry, (Symlink, Hardlink)):
            listed.append(Listed(entry.name, "symlink" if isinstance(entry, Symlink) else "hardlink", 0,
                                 "-> " + entry.target, 0))
        # parts out of place (DATA, BATC, ...) are skipped: the END chunk has vouched for the bytes
    return Overview(reader.version, header.to_json(), listed, batches, blocks)


def _file(entry: FileEntry, chunks: ChunkReader) -> Listed:
    codecs, coded = set(), 0
    for index in range(entry.chunks):
        piece = chunks.part(Data, f"file {entry.name!r}: data chunk {index}")
        codecs.add(CODEC_NAMES[piece.codec])
        coded += len(piece.payload())
    method = codecs.pop() if len(codecs) == 1 else ("mixed" if codecs else "store")
    return Listed(entry.name, "file", entry.size, method, coded)


def _block(block: SolidBlock, chunks: ChunkReader) -> list[Listed]:
    """A solid block's files, its coded bytes shared by their sizes."""
    coded = 0
    for index in range(block.chunks):
        coded += len(chunks.part(BlockData, f"a solid block's data chunk {index}").data)
    method = "solid" if block.codec == CODEC_XZ else "store"
    return [Listed(member.name, "file", member.size, method, coded * member.size / block.size if block.size else 0)
            for member in block.files]


def _images(table: ImageTable, chunks: ChunkReader, tile: int, batch_size) -> list[Listed]:
    problem = impossible_images(table.images)
    if problem:
        raise ArchiveError(problem)
    shapes = [(image.height, image.width, COLOR_CHANNELS[image.image_mode]) for image in table.images]
    coded = [0.0] * len(shapes)
    # Side planes first (ALPH, PIDX, in that order): their bytes are shared by pixel count.
    for kind in SIDE_PLANES:
        members = kind.members(table)
        if not members:
            continue
        part = chunks.part(kind, f"an image group's {kind.label()} chunk")
        pixels = sum(shapes[i][0] * shapes[i][1] for i in members)
        for i in members:
            coded[i] += len(part.packed) * shapes[i][0] * shapes[i][1] / pixels
    modelled = [index for index, shape in enumerate(shapes) if shape[2]]
    plan = plan_batches([shapes[i] for i in modelled], tile, batch_size)
    lengths = []
    for _ in plan:
        data = chunks.part(Batch, "batch chunk").data
        lengths.append((len(data), declared_chain_length(data)))
    for first, (length, chain) in enumerate(lengths):
        # A chain head's bytes code its whole chain (format 1.4): shared by its tiles' sub-pixels.
        span = plan[first:first + max(1, chain)]
        subpixels = sum(len(batch.members) * batch.channels * batch.height * batch.width for batch in span)
        for batch in span:
            for image, _, _ in batch.members:
                coded[modelled[image]] += length * batch.channels * batch.height * batch.width / subpixels
    return [Listed(image.name, "image", h * w * MODEL_MODES[image.image_mode], "model" if c else "palette", b)
            for image, (h, w, c), b in zip(table.images, shapes, coded)]


def batch_statistics(source: BinaryIO) -> list[tuple[int, int]]:
    """(bits, sub-pixels) of every coded batch, in archive order, from the STAT chunk.

    For benchmarks (bits per sub-pixel along the archive); nothing is decoded.
    """
    for tag, payload in ArchiveReader(source).chunks():
        if tag == Statistics.TAG:
            return [(batch.bits, batch.subpixels) for batch in Statistics.parse(payload).batches]
    raise ArchiveError("archive has no statistics chunk")
