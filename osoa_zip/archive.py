"""Folder <-> archive.  The library behind the CLI, usable from Python.

Chunk sequence (docs/FORMAT.md): HEAD; then entries as they are scanned —
DIRE, LINK, FILE (+ DATA chunks) — with model-path images collected into
groups, each an IMGS table followed by its BATC chunks; then HARD links;
then STAT and END.  Everything a chunk needs precedes it, so both directions
stream, and a group's pixel budget bounds the encoder's memory.
Decompression writes into a staging folder and moves the result into place
only after END has verified the whole archive.
"""
from __future__ import annotations

import base64
import fnmatch
import io
import lzma
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from . import __version__
from .adapt.engine import AdaptationConfig, OnlineAdapter
from .coding.ans import CorruptStream
from .container.format import ArchiveError, ArchiveReader, ArchiveWriter, canonical_json, read_json
from .exact import ENGINE
from .files.restore import Conflict, Staging, UnsafeEntry, checked_name
from .files.scan import DIRECTORY, FILE, HARDLINK, SYMLINK, Entry, SourceError, link_stays_inside, scan
from .imaging.io import COLOR_CHANNELS, MODEL_MODES, CannotReproduce, ImageRecord, read_image, write_image
from .imaging.tiles import gather, pad_even, plan_batches, scatter
from .models.registry import DEFAULT_MODEL, ModelError, load_model

DATA_CHUNK_BYTES = 1 << 24
CHUNK_OVERHEAD = 16  # tag, length and CRC of one chunk
ALPHA_MODES = ("LA", "RGBA")
GROUP_SUBPIXELS = 1 << 25       # images are coded in groups of about this many sub-pixels
MAX_IMAGE_SUBPIXELS = 1 << 30   # a declared image larger than this is refused
CODEC_STORE, CODEC_XZ = 0, 1
Progress = Callable[[int], None]
Warn = Callable[[str], None]


class UsageError(Exception):
    """The request itself is wrong: missing sources, existing output, ..."""


@dataclass
class Summary:
    files: int = 0
    images: int = 0
    input_bytes: int = 0
    image_subpixels: int = 0
    image_bits: int = 0
    batches: list = field(default_factory=list)
    seconds: float = 0.0

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


def read_entry(tag: bytes, payload: bytes):
    """The JSON of an entry chunk; image tables are xz-compressed (and bounded)."""
    what = f"a {tag.decode('ascii', 'replace')} entry"
    if tag == b"IMGS":
        decompressor = lzma.LZMADecompressor()
        try:
            payload = decompressor.decompress(payload, max_length=MAX_TABLE_BYTES)
        except lzma.LZMAError:
            raise ArchiveError("an image table is damaged") from None
        if not decompressor.eof:
            raise ArchiveError("an image table is too large or truncated")
    return read_json(payload, what)


# -- compress ---------------------------------------------------------------

def _image_extras(record: ImageRecord) -> dict:
    """Optional fields: verbatim PNG metadata chunks, and the hash promised by --byte-exact."""
    extras = {}
    if record.png_before:
        extras["png_before"] = base64.b64encode(record.png_before).decode("ascii")
    if record.png_after:
        extras["png_after"] = base64.b64encode(record.png_after).decode("ascii")
    if record.sha256:
        extras["sha256"] = record.sha256
    return extras


def _record_from_entry(entry: dict, pixels: np.ndarray) -> ImageRecord:
    return ImageRecord(pixels=pixels, mode=entry["image_mode"], format=str(entry["format"]),
                       png_before=base64.b64decode(entry.get("png_before", ""), validate=True),
                       png_after=base64.b64decode(entry.get("png_after", ""), validate=True),
                       sha256=str(entry.get("sha256", "")))


class _Compressor:
    def __init__(self, writer: ArchiveWriter, adapter: OnlineAdapter, progress: Progress | None,
                 byte_exact: bool = False) -> None:
        self.writer, self.adapter, self.progress = writer, adapter, progress
        self.byte_exact = byte_exact
        self.summary = Summary()
        self.group: list[tuple[Entry, ImageRecord]] = []
        self.group_subpixels = 0

    def add(self, entry: Entry) -> None:
        if entry.kind == DIRECTORY:
            self.writer.write_json(b"DIRE", {**encode_name(entry.name), "mode": entry.mode, "mtime_ns": entry.mtime_ns})
        elif entry.kind == SYMLINK:
            self.writer.write_json(b"LINK", {**encode_name(entry.name), "target": entry.target})
        elif entry.kind == FILE:
            self.summary.input_bytes += entry.size
            self.summary.files += 1
            record = read_image(entry.source, self.byte_exact)
            if record is None:
                self._general_file(entry)
            else:
                self._queue_image(entry, record)

    def _general_file(self, entry: Entry) -> None:
        chunks = (entry.size + DATA_CHUNK_BYTES - 1) // DATA_CHUNK_BYTES
        self.writer.write_json(b"FILE", {**encode_name(entry.name), "mode": entry.mode, "mtime_ns": entry.mtime_ns,
                                         "size": entry.size, "chunks": chunks})
        remaining = entry.size
        with open(entry.source, "rb") as handle:
            for _ in range(chunks):
                piece = handle.read(min(remaining, DATA_CHUNK_BYTES))
                if len(piece) != min(remaining, DATA_CHUNK_BYTES):
                    raise UsageError(f"{entry.source}: file shrank while it was being archived")
                remaining -= len(piece)
                packed = lzma.compress(piece, preset=9)
                if len(packed) < len(piece):
                    self.writer.write_chunk(b"DATA", bytes([CODEC_XZ]) + packed)
                else:
                    self.writer.write_chunk(b"DATA", bytes([CODEC_STORE]) + piece)
            if handle.read(1):
                raise UsageError(f"{entry.source}: file grew while it was being archived")
        if self.progress:
            self.progress(1)

    def _queue_image(self, entry: Entry, record: ImageRecord) -> None:
        self.group.append((entry, record))
        self.group_subpixels += record.pixels.size
        if self.group_subpixels >= GROUP_SUBPIXELS:
            self.flush_images()

    def flush_images(self) -> None:
        if not self.group:
            return
        table = [{**encode_name(e.name), "mode": e.mode, "mtime_ns": e.mtime_ns, "height": r.pixels.shape[0],
                  "width": r.pixels.shape[1], "image_mode": r.mode, "format": r.format, **_image_extras(r)}
                 for e, r in self.group]
        # xz: on 28x28 images the plain JSON table alone would cost ~1 bit per sub-pixel.
        packed_table = lzma.compress(canonical_json(table), preset=9)
        colour = [r.pixels[:, :, :COLOR_CHANNELS[r.mode]] for _, r in self.group]
        # Alpha planes (mostly flat or simple masks) go beside the model, xz-compressed.
        alpha = b"".join(r.pixels[:, :, -1].tobytes() for _, r in self.group if r.mode in ALPHA_MODES)
        packed_alpha = lzma.compress(alpha, preset=9) if alpha else b""
        padded = [pad_even(c) for c in colour]
        config = self.adapter.config
        before = self.adapter.snapshot()
        coded = [self.adapter.encode(gather(batch, padded))
                 for batch in plan_batches([c.shape for c in colour], config.tile_size, config.batch_size)]
        group, self.group, self.group_subpixels = self.group, [], 0
        coded_bytes = (len(packed_table) + len(packed_alpha) + CHUNK_OVERHEAD
                       + sum(len(data) + CHUNK_OVERHEAD for data, _ in coded))
        if coded_bytes > sum(entry.size for entry, _ in group):
            # Never larger than the files themselves: forget this group's adaptation
            # (the decoder never sees it) and store the files as they are.
            self.adapter.restore(before)
            for entry, _ in group:
                self._general_file(entry)
            return
        self.writer.write_chunk(b"IMGS", packed_table)
        if alpha:
            self.writer.write_chunk(b"ALPH", packed_alpha)
        for data, stats in coded:
            self.writer.write_chunk(b"BATC", data)
            self.summary.batches.append(stats)
            self.summary.image_bits += stats.bits
        self.summary.images += len(group)
        self.summary.image_subpixels += sum(r.pixels.size for _, r in group)
        if self.progress:
            self.progress(len(group))


def _identity(output: BinaryIO) -> frozenset[tuple[int, int]]:
    """(device, inode) of the output when it is a file, so it never archives itself."""
    try:
        info = os.fstat(output.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return frozenset()
    return frozenset({(info.st_dev, info.st_ino)}) if stat.S_ISREG(info.st_mode) else frozenset()


def compress(sources: list, output: BinaryIO, model: str = DEFAULT_MODEL,
             adaptation: AdaptationConfig = AdaptationConfig(), progress: Progress | None = None,
             warn: Warn = lambda message: None, byte_exact: bool = False) -> Summary:
    """Archive the sources into ``output``.

    A source is a path (a directory contributes its contents, a file its name)
    or a (path, archive name) pair.
    """
    started = time.perf_counter()
    try:
        entries = scan(list(sources), warn, _identity(output))
    except SourceError as error:
        raise UsageError(str(error)) from None
    bundle = load_model(model)
    writer = ArchiveWriter(output)
    writer.write_json(b"HEAD", {
        "creator": f"osoa-zip {__version__}",
        "model": {"name": bundle.name, "sha256": bundle.sha256, "family": "flow"},
        "engine": ENGINE,
        "adaptation": adaptation.to_header(),
    })
    compressor = _Compressor(writer, OnlineAdapter(bundle, adaptation), progress, byte_exact)
    for entry in entries:
        compressor.add(entry)
    compressor.flush_images()
    for entry in entries:  # last, so that the file they name is always already restored
        if entry.kind == HARDLINK:
            writer.write_json(b"HARD", {**encode_name(entry.name), "target": entry.target})
    summary = compressor.summary
    # Bits and sizes only: timings would make identical inputs give different archives.
    writer.write_json(b"STAT", {"batches": [[s.bits, s.subpixels] for s in summary.batches]})
    writer.close()
    summary.seconds = time.perf_counter() - started
    return summary


# -- decompress -------------------------------------------------------------

class _Decoder:
    """Consumes chunks in order and hands finished entries to a sink."""

    def __init__(self, sink, progress: Progress | None) -> None:
        self.sink = sink
        self.progress = progress
        self.summary = Summary()
        self.adapter: OnlineAdapter | None = None
        self.batches_decoded = 0

    def run(self, reader: ArchiveReader) -> Summary:
        try:
            return self._run(reader)
        except UnsafeEntry as error:
            raise ArchiveError(str(error)) from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ArchiveError(f"archive entry is malformed ({type(error).__name__}: {error})") from None

    def _run(self, reader: ArchiveReader) -> Summary:
        chunks = reader.chunks()
        tag, payload = next(chunks, (None, None))
        if tag != b"HEAD":
            raise ArchiveError("archive has no header chunk")
        self.header(read_json(payload, "the header"))
        handlers = {b"FILE": self.general_file, b"IMGS": self.images, b"DIRE": self.directory,
                    b"LINK": self.symlink, b"HARD": self.hardlink}
        for tag, payload in chunks:
            if tag == b"STAT":
                continue
            if tag not in handlers:
                raise ArchiveError(f"unexpected chunk {tag!r}")
            handlers[tag](read_entry(tag, payload), chunks)
        return self.summary

    def header(self, header: dict) -> None:
        if header["engine"] != ENGINE:
            raise ArchiveError(f"archive was written by numeric engine {header['engine'].get('name')} "
                               f"v{header['engine'].get('version')}, which this version cannot replay")
        config = AdaptationConfig.from_header(header["adaptation"])
        bundle = load_model(header["model"]["name"], header["model"]["sha256"])
        self.adapter = OnlineAdapter(bundle, config)

    def directory(self, entry: dict, chunks) -> None:
        self.sink.directory(decode_name(entry), int(entry["mode"]), int(entry["mtime_ns"]))

    def symlink(self, entry: dict, chunks) -> None:
        self.sink.symlink(decode_name(entry), str(entry["target"]))

    def hardlink(self, entry: dict, chunks) -> None:
        self.sink.hardlink(decode_name(entry), str(entry["target"]))

    def general_file(self, entry: dict, chunks) -> None:
        name = decode_name(entry)
        self.sink.file(name, self._file_pieces(name, entry, chunks), int(entry["mode"]), int(entry["mtime_ns"]))
        self.summary.files += 1
        if self.progress:
            self.progress(1)

    def _file_pieces(self, name: str, entry: dict, chunks) -> Iterator[bytes]:
        remaining = int(entry["size"])
        for index in range(int(entry["chunks"])):
            tag, payload = next(chunks, (None, None))
            if tag != b"DATA" or not payload:
                raise ArchiveError(f"file {name!r}: data chunk {index} missing")
            codec, body = payload[0], payload[1:]
            if codec == CODEC_XZ:
                try:
                    body = lzma.LZMADecompressor().decompress(body, max_length=DATA_CHUNK_BYTES + 1)
                except lzma.LZMAError:
                    raise ArchiveError(f"file {name!r}: data chunk {index} is damaged") from None
            elif codec != CODEC_STORE:
                raise ArchiveError(f"file {name!r}: unknown codec {codec}")
            remaining -= len(body)
            if len(body) > DATA_CHUNK_BYTES or remaining < 0:
                raise ArchiveError(f"file {name!r}: more data than declared")
            yield body
        if remaining:
            raise ArchiveError(f"file {name!r}: less data than declared")

    def images(self, table: list, chunks) -> None:
        shapes = []
        for entry in table:
            height, width, mode = int(entry["height"]), int(entry["width"]), entry["image_mode"]
            if mode not in MODEL_MODES or height <= 0 or width <= 0:
                raise ArchiveError(f"image {decode_name(entry)!r}: bad mode or size")
            if height * width * MODEL_MODES[mode] > MAX_IMAGE_SUBPIXELS:
                raise ArchiveError(f"image {decode_name(entry)!r}: declared size {width}x{height} is too large")
            shapes.append((height, width, COLOR_CHANNELS[mode]))
        if sum(h * w * MODEL_MODES[e["image_mode"]] for (h, w, _), e in zip(shapes, table)) \
                > 4 * GROUP_SUBPIXELS + MAX_IMAGE_SUBPIXELS:
            raise ArchiveError("an image group declares more pixels than any encoder writes")
        alpha = self._alpha_planes(table, shapes, chunks)
        padded = [np.zeros((h + h % 2, w + w % 2, c), np.uint8) for h, w, c in shapes]
        config = self.adapter.config
        for batch in plan_batches(shapes, config.tile_size, config.batch_size):
            index = self.batches_decoded
            self.batches_decoded += 1
            tag, payload = next(chunks, (None, None))
            if tag != b"BATC":
                raise ArchiveError(f"batch {index}: chunk missing")
            try:
                tiles = self.adapter.decode(payload, batch.shape)
            except (CorruptStream, ValueError) as error:
                raise ArchiveError(f"batch {index} does not decode ({error})") from None
            scatter(batch, tiles, padded)
            self.summary.image_bits += 8 * len(payload)
        for entry, pixels, (h, w, _) in zip(table, padded, shapes):
            pixels = pixels[:h, :w]
            if entry["image_mode"] in ALPHA_MODES:
                pixels = np.concatenate([pixels, alpha.pop(0)[:, :, None]], axis=2)
            record = _record_from_entry(entry, pixels)
            self.sink.image(decode_name(entry), record, int(entry["mode"]), int(entry["mtime_ns"]))
            self.summary.images += 1
            self.summary.files += 1
            self.summary.image_subpixels += record.pixels.size
        if self.progress:
            self.progress(len(table))


    @staticmethod
    def _alpha_planes(table: list, shapes: list, chunks) -> list[np.ndarray]:
        """The group's alpha planes (ALPH chunk), in table order, if any image has one."""
        sizes = [(h, w) for (h, w, _), e in zip(shapes, table) if e["image_mode"] in ALPHA_MODES]
        if not sizes:
            return []
        tag, payload = next(chunks, (None, None))
        expected = sum(h * w for h, w in sizes)
        decompressor = lzma.LZMADecompressor()
        try:
            data = decompressor.decompress(payload or b"", max_length=expected + 1) if tag == b"ALPH" else b""
        except lzma.LZMAError:
            data = b""
        if tag != b"ALPH" or len(data) != expected or not decompressor.eof:
            raise ArchiveError("an image group's alpha planes are missing or damaged")
        planes, offset = [], 0
        for h, w in sizes:
            planes.append(np.frombuffer(data, np.uint8, h * w, offset).reshape(h, w))
            offset += h * w
        return planes


class _StagingSink:
    """Writes each entry into the staging folder."""

    def __init__(self, staging: Staging) -> None:
        self.staging = staging

    def file(self, name, pieces, mode, mtime_ns) -> None:
        path = self.staging.path(name)
        with open(path, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
        self.staging.finish_file(path, mode, mtime_ns)

    def image(self, name, record, mode, mtime_ns) -> None:
        path = self.staging.path(name)
        try:
            write_image(path, record)
        except CannotReproduce as error:
            raise ArchiveError(f"image {name!r}: {error}") from None
        self.staging.finish_file(path, mode, mtime_ns)

    def directory(self, name, mode, mtime_ns) -> None:
        self.staging.directory(name, mode, mtime_ns)

    def symlink(self, name, target) -> None:
        self.staging.symlink(name, target)

    def hardlink(self, name, target) -> None:
        self.staging.hardlink(name, target)


class _CheckingSink:
    """Decodes everything, writes nothing: for `osoa-zip test`.  Names are still checked."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def _claim(self, name: str) -> None:
        checked_name(name)
        if name in self.names:
            raise UnsafeEntry(f"duplicate path {name!r} in archive")
        self.names.add(name)

    def file(self, name, pieces, mode, mtime_ns) -> None:
        self._claim(name)
        for _ in pieces:
            pass

    def image(self, name, record, mode, mtime_ns) -> None:
        self._claim(name)

    def directory(self, name, mode, mtime_ns) -> None:
        self._claim(name)

    def symlink(self, name, target) -> None:
        self._claim(name)
        if not link_stays_inside(name, target):
            raise UnsafeEntry(f"refusing link {name!r} -> {target!r}: it leaves the destination")

    def hardlink(self, name, target) -> None:
        self._claim(name)
        if target not in self.names:
            raise UnsafeEntry(f"hard link {name!r} names {target!r}, which is not an earlier file")


def test_archive(source: BinaryIO, progress: Progress | None = None) -> Summary:
    """Fully decode and verify an archive without writing anything."""
    started = time.perf_counter()
    summary = _Decoder(_CheckingSink(), progress).run(ArchiveReader(source))
    summary.seconds = time.perf_counter() - started
    return summary


def selected(name: str, patterns: list[str]) -> bool:
    """tar-like selection: a pattern matches the name or any folder above it."""
    parts = name.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, pattern) for pattern in patterns for prefix in prefixes)


def decompress(source: BinaryIO, destination: Path, force: bool = False,
               progress: Progress | None = None, patterns: list[str] | None = None) -> Summary:
    """Restore an archive (or the entries matching ``patterns``) into ``destination``.

    Everything is decoded and verified even when only some entries are wanted:
    each batch depends on the ones before it through the adaptation.
    """
    started = time.perf_counter()
    staging = Staging(Path(destination))
    try:
        sink = _StagingSink(staging)
        summary = _Decoder(sink, progress).run(ArchiveReader(source))
        if patterns:
            for pattern in patterns:
                if not any(selected(name, [pattern]) for name in staging.names):
                    raise UsageError(f"no entry matches {pattern!r}")
            staging.commit(force, lambda name: selected(name, list(patterns)))
        else:
            staging.commit(force)
    except Conflict as error:
        staging.abort()
        raise UsageError(str(error)) from None
    except BaseException:
        staging.abort()
        raise
    summary.seconds = time.perf_counter() - started
    return summary


test_archive.__test__ = False  # not a pytest test

__all__ = ["compress", "decompress", "test_archive", "Summary", "UsageError", "ArchiveError", "ModelError", "AdaptationConfig"]
