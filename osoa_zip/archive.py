"""Folder <-> archive.  The library behind the CLI, usable from Python.

Chunk order (docs/FORMAT.md): HEAD, then FILE+DATA per general-path file,
then IMGS (the model-path image table), BATC per coded batch, STAT, END.
Every entry needed to decode a chunk precedes it, so both directions stream.
Decompression writes into a temporary folder beside the destination and
moves files into place only after the END chunk has verified the whole
archive, so a damaged archive leaves nothing behind.
"""
from __future__ import annotations

import lzma
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

import numpy as np

from . import __version__
from .adapt.engine import AdaptationConfig, OnlineAdapter
from .coding.ans import CorruptStream
from .container.format import ArchiveError, ArchiveReader, ArchiveWriter, read_json
from .exact import ENGINE
from .imaging.io import MODEL_MODES, ImageRecord, read_image, write_image
from .imaging.tiles import gather, pad_even, plan_batches, scatter
from .models.registry import DEFAULT_MODEL, ModelError, load_model

DATA_CHUNK_BYTES = 1 << 24
Progress = Callable[[int], None]


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


# -- compress ---------------------------------------------------------------

def _walk(source: Path) -> list[tuple[str, Path]]:
    """Regular files below source, sorted, as (archive path, real path)."""
    if source.is_file():
        return [(source.name, source)]
    if not source.is_dir():
        raise UsageError(f"{source}: no such file or directory")
    found = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                found.append((PurePosixPath(path.relative_to(source).as_posix()).as_posix(), path))
    return found


def compress(sources: list[Path], output: BinaryIO, model: str = DEFAULT_MODEL,
             adaptation: AdaptationConfig = AdaptationConfig(), progress: Progress | None = None) -> Summary:
    """Archive the files below each source into ``output``."""
    started = time.perf_counter()
    entries = [item for source in sources for item in _walk(Path(source))]
    bundle = load_model(model)
    adapter = OnlineAdapter(bundle, adaptation)
    writer = ArchiveWriter(output)
    writer.write_json(b"HEAD", {
        "creator": f"osoa-zip {__version__}",
        "model": {"name": bundle.name, "sha256": bundle.sha256, "family": "flow"},
        "engine": ENGINE,
        "adaptation": adaptation.to_header(),
        "general_codec": "xz",
    })
    summary = Summary()
    images: list[tuple[str, ImageRecord]] = []
    for archive_path, path in entries:
        summary.input_bytes += path.stat().st_size
        record = read_image(path)
        if record is not None:
            images.append((archive_path, record))
        else:
            _write_general_file(writer, archive_path, path.read_bytes())
            summary.files += 1
            if progress:
                progress(1)
    writer.write_json(b"IMGS", [{"path": p, "height": r.pixels.shape[0], "width": r.pixels.shape[1],
                                 "mode": r.mode, "format": r.format} for p, r in images])
    padded = [pad_even(r.pixels) for _, r in images]
    for batch in plan_batches([r.pixels.shape for _, r in images], adaptation.tile_size, adaptation.batch_size):
        data, stats = adapter.encode(gather(batch, padded))
        writer.write_chunk(b"BATC", data)
        summary.batches.append(stats)
        if progress:
            progress(len(batch.members))
    summary.images = len(images)
    summary.files += len(images)
    summary.image_subpixels = sum(r.pixels.size for _, r in images)
    summary.image_bits = sum(s.bits for s in summary.batches)
    # Bits and sizes only: timings would make identical inputs give different archives.
    writer.write_json(b"STAT", {"batches": [[s.bits, s.subpixels] for s in summary.batches]})
    writer.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _write_general_file(writer: ArchiveWriter, archive_path: str, content: bytes) -> None:
    packed = lzma.compress(content, preset=9)
    codec = "xz" if len(packed) < len(content) else "store"
    data = packed if codec == "xz" else content
    pieces = [data[i:i + DATA_CHUNK_BYTES] for i in range(0, len(data), DATA_CHUNK_BYTES)] or [b""]
    writer.write_json(b"FILE", {"path": archive_path, "size": len(content), "codec": codec, "chunks": len(pieces)})
    for piece in pieces:
        writer.write_chunk(b"DATA", piece)


# -- decompress -------------------------------------------------------------

def safe_relative_path(name: str) -> PurePosixPath:
    """Refuse absolute paths, '..', empty parts and NUL: nothing may leave DEST."""
    path = PurePosixPath(name)
    if (not name or "\x00" in name or path.is_absolute() or "\\" in name
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise ArchiveError(f"refusing unsafe path {name!r} in archive")
    return path


class _Decoder:
    """Consumes chunks in order, writing into a staging folder."""

    def __init__(self, staging: Path, progress: Progress | None) -> None:
        self.staging = staging
        self.progress = progress
        self.summary = Summary()
        self.adapter: OnlineAdapter | None = None
        self.written: set[str] = set()

    def target(self, name: str) -> Path:
        path = safe_relative_path(name)
        if name in self.written:
            raise ArchiveError(f"duplicate path {name!r} in archive")
        self.written.add(name)
        destination = self.staging.joinpath(*path.parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        return destination

    def run(self, reader: ArchiveReader) -> Summary:
        try:
            return self._run(reader)
        except (KeyError, TypeError, ValueError) as error:
            raise ArchiveError(f"archive entry is malformed ({type(error).__name__}: {error})") from None

    def _run(self, reader: ArchiveReader) -> Summary:
        chunks = reader.chunks()
        tag, payload = next(chunks, (None, None))
        if tag != b"HEAD":
            raise ArchiveError("archive has no header chunk")
        self.header(read_json(payload, "the header"))
        for tag, payload in chunks:
            if tag == b"FILE":
                self.general_file(read_json(payload, "a file entry"), chunks)
            elif tag == b"IMGS":
                self.images(read_json(payload, "the image table"), chunks)
            elif tag == b"STAT":
                continue
            else:
                raise ArchiveError(f"unexpected chunk {tag!r}")
        return self.summary

    def header(self, header: dict) -> None:
        try:
            if header["engine"] != ENGINE:
                raise ArchiveError(f"archive was written by numeric engine {header['engine'].get('name')} "
                                   f"v{header['engine'].get('version')}, which this version cannot replay")
            config = AdaptationConfig.from_header(header["adaptation"])
            bundle = load_model(header["model"]["name"], header["model"]["sha256"])
            self.adapter = OnlineAdapter(bundle, config)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ArchiveError(f"the header is malformed ({error})") from None

    def general_file(self, entry: dict, chunks) -> None:
        pieces = []
        for _ in range(int(entry["chunks"])):
            tag, payload = next(chunks, (None, None))
            if tag != b"DATA":
                raise ArchiveError(f"file {entry['path']!r}: data chunk missing")
            pieces.append(payload)
        data = b"".join(pieces)
        if entry["codec"] == "xz":
            try:
                data = lzma.decompress(data)
            except lzma.LZMAError:
                raise ArchiveError(f"file {entry['path']!r}: compressed data are damaged") from None
        elif entry["codec"] != "store":
            raise ArchiveError(f"file {entry['path']!r}: unknown codec {entry['codec']!r}")
        if len(data) != entry["size"]:
            raise ArchiveError(f"file {entry['path']!r}: size mismatch")
        self.target(entry["path"]).write_bytes(data)
        self.summary.files += 1
        if self.progress:
            self.progress(1)

    def images(self, table: list, chunks) -> None:
        shapes = []
        for entry in table:
            if entry["mode"] not in MODEL_MODES or not (0 < entry["height"] and 0 < entry["width"]):
                raise ArchiveError(f"image {entry.get('path')!r}: bad mode or size")
            if entry["height"] * entry["width"] > 1 << 28:
                raise ArchiveError(f"image {entry['path']!r}: declared size is too large")
            shapes.append((entry["height"], entry["width"], MODEL_MODES[entry["mode"]]))
        padded = [np.zeros((h + h % 2, w + w % 2, c), np.uint8) for h, w, c in shapes]
        config = self.adapter.config
        for index, batch in enumerate(plan_batches(shapes, config.tile_size, config.batch_size)):
            tag, payload = next(chunks, (None, None))
            if tag != b"BATC":
                raise ArchiveError(f"batch {index}: chunk missing")
            try:
                tiles = self.adapter.decode(payload, batch.shape)
            except (CorruptStream, ValueError) as error:
                raise ArchiveError(f"batch {index} does not decode ({error})") from None
            scatter(batch, tiles, padded)
            self.summary.image_bits += 8 * len(payload)
            if self.progress:
                self.progress(len(batch.members))
        for entry, pixels, (h, w, _) in zip(table, padded, shapes):
            record = ImageRecord(pixels=pixels[:h, :w], mode=entry["mode"], format=entry["format"])
            write_image(self.target(entry["path"]), record)
            self.summary.images += 1
            self.summary.files += 1
            self.summary.image_subpixels += pixels[:h, :w].size


def decompress(source: BinaryIO, destination: Path, force: bool = False,
               progress: Progress | None = None) -> Summary:
    """Restore an archive into ``destination`` (created if missing)."""
    started = time.perf_counter()
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".osoa-zip-", dir=destination))
    try:
        summary = _Decoder(staging, progress).run(ArchiveReader(source))
        moves = [(path, destination / path.relative_to(staging))
                 for path in sorted(staging.rglob("*")) if path.is_file()]
        existing = [str(target) for _, target in moves if target.exists()]
        if existing and not force:
            raise UsageError(f"{existing[0]} exists (use -f to overwrite)")
        for path, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary.seconds = time.perf_counter() - started
    return summary


__all__ = ["compress", "decompress", "Summary", "UsageError", "ArchiveError", "ModelError", "AdaptationConfig"]
