"""Writing an archive: scan the sources, code image groups, stream the rest.

Chunk order (docs/FORMAT.md): HEAD; entries as they are scanned (DIRE,
LINK, FILE + DATA), with model-path images collected into groups, each an
IMGS table (+ ALPH, PIDX) followed by its BATC chunks; then HARD links; STAT; END.
"""
from __future__ import annotations

import io
import lzma
import os
import stat
import threading
import time
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from . import __version__
from .adapt.config import AdaptationConfig
from .adapt.defaults import adaptation_for
from .adapt.segments import run_segments
from .container.format import ArchiveWriter, canonical_json
from .exact import ENGINE
from .files.scan import DIRECTORY, FILE, HARDLINK, SYMLINK, Entry, SourceError, scan
from .imaging.io import COLOR_CHANNELS, ImageRecord, read_image, scratch_file
from .imaging.pixel_file import PixelView
from .imaging.tiles import gather, plan_batches
from .layout import (
    ALPHA_MODES,
    CHUNK_OVERHEAD,
    CODEC_STORE,
    CODEC_XZ,
    DATA_CHUNK_BYTES,
    GROUP_SUBPIXELS,
    INDEX_MODES,
    MAX_GROUP_IMAGES,
    Progress,
    Summary,
    UsageError,
    Warn,
    encode_name,
    image_extras,
    xz_compress,
    xz_filters,
)
from .models.catalog import DEFAULT_MODEL
from .pause import pause_point
from .torch_loading import load_model, online_adapter

if TYPE_CHECKING:
    from .adapt.engine import OnlineAdapter


class _CodedBatches:
    """A group's coded batches until it is known whether the model path pays (they are
    ~bpsp/8 bytes per sub-pixel: half a copy of a large image, were they kept in memory).
    Segments coded on several threads append side by side; each batch is read back by
    its (offset, length)."""

    def __init__(self, size_hint: int) -> None:
        self.file = scratch_file(size_hint)
        self.lock = threading.Lock()
        self.end = 0

    def put(self, data: bytes) -> tuple[int, int]:
        with self.lock:
            self.file.seek(self.end)
            self.file.write(data)
            offset, self.end = self.end, self.end + len(data)
        return offset, len(data)

    def get(self, where: tuple[int, int]) -> bytes:
        offset, length = where
        self.file.seek(offset)
        return self.file.read(length)

    def __enter__(self) -> "_CodedBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


class _Compressor:
    def __init__(self, writer: ArchiveWriter, adapter: OnlineAdapter, progress: Progress | None,
                 byte_exact: bool = False, threads: int = 1) -> None:
        self.writer, self.adapter, self.progress = writer, adapter, progress
        self.threads = threads
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
            record = read_image(entry.source, self.byte_exact, pixels_in_file=True)
            if record is None:
                self._general_file(entry)
            else:
                self._queue_image(entry, record)

    def _general_file(self, entry: Entry, counted: bool = False) -> None:
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
                if self.progress and not counted:
                    self.progress(len(piece))
                packed = xz_compress(piece)
                if len(packed) < len(piece):
                    self.writer.write_chunk(b"DATA", bytes([CODEC_XZ]) + packed)
                else:
                    self.writer.write_chunk(b"DATA", bytes([CODEC_STORE]) + piece)
            if handle.read(1):
                raise UsageError(f"{entry.source}: file grew while it was being archived")

    def _queue_image(self, entry: Entry, record: ImageRecord) -> None:
        self.group.append((entry, record))
        self.group_subpixels += record.pixels.size
        if self.group_subpixels >= GROUP_SUBPIXELS or len(self.group) >= MAX_GROUP_IMAGES:
            self.flush_images()

    def flush_images(self) -> None:
        if not self.group:
            return
        group = self.group
        try:
            self._code_group()
        finally:
            for _, record in group:  # large images' pixel files
                if record.pixel_file is not None:
                    record.pixel_file.close()

    def _code_group(self) -> None:
        table = [{**encode_name(e.name), "mode": e.mode, "mtime_ns": e.mtime_ns, "height": r.pixels.shape[0],
                  "width": r.pixels.shape[1], "image_mode": r.mode, "format": r.format, **image_extras(r)}
                 for e, r in self.group]
        # xz: on 28x28 images the plain JSON table alone would cost ~1 bit per sub-pixel.
        packed_table = xz_compress(canonical_json(table))
        # Views, not copies: gather() cuts tiles (and pads odd sides) from the pixels as they are
        # (a large image's from its file).
        colour = [_channels(r.pixels, slice(0, COLOR_CHANNELS[r.mode])) for _, r in self.group
                  if COLOR_CHANNELS[r.mode]]
        # Alpha planes (mostly flat or simple masks) and palette indices go beside
        # the model, xz-compressed (docs/FORMAT.md says why).
        packed_alpha = _packed_planes([_channels(r.pixels, slice(-1, None)) for _, r in self.group
                                       if r.mode in ALPHA_MODES])
        packed_indices = _packed_planes([r.pixels for _, r in self.group if r.mode in INDEX_MODES])
        config = self.adapter.config
        adapter = self.adapter
        before = adapter.snapshot()
        batches = plan_batches([c.shape for c in colour], config.tile_size, config.batch_size_for)
        group_bytes = sum(entry.size for entry, _ in self.group)
        if self.progress and not batches:
            self.progress(group_bytes)
        with _CodedBatches(self.group_subpixels) as store:
            coded, self.adapter = run_segments(adapter, batches, self._coder(store, colour, batches, group_bytes),
                                               self.threads, chain=adapter.chain_length)
            group, self.group, self.group_subpixels = self.group, [], 0
            coded_bytes = (len(packed_table) + len(packed_alpha) + len(packed_indices) + 3 * CHUNK_OVERHEAD
                           + sum(length + CHUNK_OVERHEAD for (_, length), _ in coded))
            if coded_bytes > sum(entry.size for entry, _ in group):
                # Never larger than the files themselves: forget this group's adaptation
                # (the decoder never sees it) and store the files as they are.
                adapter.restore(before)
                self.adapter = adapter
                for entry, _ in group:
                    self._general_file(entry, counted=True)
                return
            self.writer.write_chunk(b"IMGS", packed_table)
            if packed_alpha:
                self.writer.write_chunk(b"ALPH", packed_alpha)
            if packed_indices:
                self.writer.write_chunk(b"PIDX", packed_indices)
            for where, stats in coded:
                self.writer.write_chunk(b"BATC", store.get(where))
                pause_point("compress-batch")  # test-only (pause.py)
                self.summary.batches.append(stats)
                self.summary.image_bits += stats.bits
        self.summary.images += len(group)
        self.summary.image_subpixels += sum(r.pixels.size for _, r in group if r.mode not in INDEX_MODES)

    def _coder(self, store: _CodedBatches, colour: list, batches: list, group_bytes: int):
        """What run_segments does per chain of batches: code them, keep their bytes in the store,
        report progress."""
        def code(segment_adapter: OnlineAdapter, chain: list) -> list:
            coded = segment_adapter.encode_chain([gather(batch, colour) for batch in chain])
            if self.progress:
                self.progress(group_bytes * len(chain) / len(batches))  # progress counts input bytes
            return [(store.put(data), stats) for data, stats in coded]
        return code


def _channels(pixels, channels: slice):
    """Some channels of an image's H x W x C pixels: a view of the array, or of its PixelFile."""
    return pixels.channels(channels) if isinstance(pixels, PixelView) else pixels[:, :, channels]


def _packed_planes(planes: list) -> bytes:
    """xz of the planes' bytes in order (H x W x 1 each), b"" if there are none.  They are
    compressed band by band, never joined: a palette image's plane is a whole copy of it
    (the same bytes as xz_compress of them joined)."""
    size = sum(plane.size for plane in planes)
    if not size:
        return b""
    compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, filters=xz_filters(size))
    packed = []
    for plane in planes:
        for band in plane.bands() if isinstance(plane, PixelView) else (plane,):
            packed.append(compressor.compress(np.ascontiguousarray(band).tobytes()))
    packed.append(compressor.flush())
    return b"".join(packed)


def _identity(output: BinaryIO) -> frozenset[tuple[int, int]]:
    """(device, inode) of the output when it is a file, so it never archives itself."""
    try:
        info = os.fstat(output.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return frozenset()
    return frozenset({(info.st_dev, info.st_ino)}) if stat.S_ISREG(info.st_mode) else frozenset()


def compress(sources: list, output: BinaryIO, model: str = DEFAULT_MODEL,
             adaptation: AdaptationConfig | None = None, progress: Progress | None = None,
             warn: Warn = lambda message: None, byte_exact: bool = False, threads: int = 1) -> Summary:
    """Archive the sources into ``output``.

    A source is a path (a directory contributes its contents, a file its name)
    or a (path, archive name) pair.  With segments, ``threads`` code them side
    by side; the archive is the same for any number of threads.  Settings that
    ``adaptation`` leaves unset (or all, if None) are the model's defaults.
    """
    started = time.perf_counter()
    adaptation = adaptation_for(model, adaptation)
    try:
        entries = scan(list(sources), warn, _identity(output))
    except SourceError as error:
        raise UsageError(str(error)) from None
    if progress is not None and hasattr(progress, "set_total"):
        progress.set_total(sum(entry.size for entry in entries if entry.kind == FILE))
    bundle = load_model(model)
    writer = ArchiveWriter(output)
    writer.write_json(b"HEAD", {
        "creator": f"osoa-zip {__version__}",
        "model": {"name": bundle.name, "sha256": bundle.sha256, "family": bundle.family},
        "engine": ENGINE,
        "adaptation": adaptation.to_header(),
    })
    compressor = _Compressor(writer, online_adapter(bundle, adaptation), progress, byte_exact, threads)
    for entry in entries:
        compressor.add(entry)
    compressor.flush_images()
    for entry in entries:  # last, so that the file they name is always already restored
        if entry.kind == HARDLINK:
            writer.write_json(b"HARD", {**encode_name(entry.name), "target": entry.target})
    summary = compressor.summary
    # Bits and sizes only: timings would make identical inputs give different archives.
    writer.write_json(b"STAT", {"batches": [[s.bits, s.subpixels, s.flags] for s in summary.batches]})
    writer.close()
    summary.seconds = time.perf_counter() - started
    return summary
