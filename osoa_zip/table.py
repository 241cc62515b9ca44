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
from .container.format import ArchiveError, ArchiveReader, read_json
from .imaging.io import COLOR_CHANNELS, MODEL_MODES
from .imaging.tiles import plan_batches
from .layout import SIDE_PLANES, decode_name, read_entry, side_plane_members


@dataclass
class Listed:
    name: str
    kind: str            # file, image, dir, symlink, hardlink
    size: int            # bytes (files) or sub-pixels (images)
    method: str          # xz, store, mixed, model, or the link target
    coded_bytes: float


@dataclass
class BatchRecord:
    """One coded batch as the STAT chunk records it."""
    bits: int
    subpixels: int
    flags: int


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
            "hardlinks": kinds.count("hardlink"),
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
    chunks = reader.chunks()
    tag, payload = next(chunks, (None, None))
    if tag != b"HEAD":
        raise ArchiveError("archive has no header chunk")
    header = read_json(payload, "the header")
    listed: list[Listed] = []
    batches: list[BatchRecord] = []
    try:
        adaptation = AdaptationConfig.from_header(header["adaptation"])
        for tag, payload in chunks:
            if tag == b"STAT":
                batches = [BatchRecord(int(bits), int(subpixels), int(flags))
                           for bits, subpixels, flags in read_json(payload, "the statistics")["batches"]]
                continue
            if tag in (b"DATA", b"BATC", b"ALPH", b"PIDX"):
                continue
            entry = read_entry(tag, payload)
            if tag == b"FILE":
                listed.append(_file(entry, chunks))
            elif tag == b"IMGS":
                listed.extend(_images(entry, chunks, adaptation.tile_size, adaptation.batch_size_for))
            elif tag == b"DIRE":
                listed.append(Listed(decode_name(entry), "dir", 0, "", 0))
            elif tag in (b"LINK", b"HARD"):
                listed.append(Listed(decode_name(entry), "symlink" if tag == b"LINK" else "hardlink", 0,
                                     "-> " + entry["target"], 0))
            else:
                raise ArchiveError(f"unexpected chunk {tag!r}")
    except (KeyError, TypeError, ValueError) as error:
        raise ArchiveError(f"archive entry is malformed ({type(error).__name__}: {error})") from None
    return Overview(reader.version, header, listed, batches)


def _file(entry: dict, chunks) -> Listed:
    codecs, coded = set(), 0
    for _ in range(int(entry["chunks"])):
        tag, payload = next(chunks, (None, None))
        if tag != b"DATA" or not payload:
            raise ArchiveError(f"file {decode_name(entry)!r}: data chunk missing")
        codecs.add({0: "store", 1: "xz"}.get(payload[0], "?"))
        coded += len(payload)
    method = codecs.pop() if len(codecs) == 1 else ("mixed" if codecs else "store")
    return Listed(decode_name(entry), "file", int(entry["size"]), method, coded)


def _images(table: list, chunks, tile: int, batch_size) -> list[Listed]:
    shapes = [(int(e["height"]), int(e["width"]), COLOR_CHANNELS[e["image_mode"]]) for e in table]
    coded = [0.0] * len(table)
    # Side planes first (ALPH, PIDX, in that order): their bytes are shared by pixel count.
    for modes, tag_expected, _ in SIDE_PLANES:
        members = side_plane_members(table, modes)
        if not members:
            continue
        tag, payload = next(chunks, (None, None))
        if tag != tag_expected:
            raise ArchiveError(f"an image group's {tag_expected.decode()} chunk is missing")
        pixels = sum(shapes[i][0] * shapes[i][1] for i in members)
        for i in members:
            coded[i] += len(payload) * shapes[i][0] * shapes[i][1] / pixels
    modelled = [index for index, shape in enumerate(shapes) if shape[2]]
    plan = plan_batches([shapes[i] for i in modelled], tile, batch_size)
    lengths = []
    for _ in plan:
        tag, payload = next(chunks, (None, None))
        if tag != b"BATC":
            raise ArchiveError("batch chunk missing")
        lengths.append((len(payload), declared_chain_length(payload)))
    for first, (length, chain) in enumerate(lengths):
        # A chain head's bytes code its whole chain (format 1.4): shared by its tiles' sub-pixels.
        span = plan[first:first + max(1, chain)]
        subpixels = sum(len(batch.members) * batch.channels * batch.height * batch.width for batch in span)
        for batch in span:
            for image, _, _ in batch.members:
                coded[modelled[image]] += length * batch.channels * batch.height * batch.width / subpixels
    return [Listed(decode_name(e), "image", h * w * MODEL_MODES[e["image_mode"]],
                   "model" if c else "palette", b)
            for e, (h, w, c), b in zip(table, shapes, coded)]


def batch_statistics(source: BinaryIO) -> list[tuple[int, int]]:
    """(bits, sub-pixels) of every coded batch, in archive order, from the STAT chunk.

    For benchmarks (bits per sub-pixel along the archive); nothing is decoded.
    """
    for tag, payload in ArchiveReader(source).chunks():
        if tag == b"STAT":
            try:
                return [(int(batch[0]), int(batch[1])) for batch in read_json(payload, "the statistics")["batches"]]
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise ArchiveError(f"the statistics chunk is malformed ({type(error).__name__})") from None
    raise ArchiveError("archive has no statistics chunk")
