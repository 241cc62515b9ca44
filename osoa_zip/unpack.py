"""Reading an archive: decode every chunk in order, hand entries to a sink.

Decompression writes into a staging folder and moves the result into place
only after the END chunk has verified the whole archive; `test` decodes into
a sink that writes nothing.
"""
from __future__ import annotations

import fnmatch
import lzma
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from .adapt.engine import AdaptationConfig, OnlineAdapter
from .coding.ans import CorruptStream
from .container.format import ArchiveError, ArchiveReader, read_json
from .exact import ENGINE
from .files.restore import Conflict, EntryNames, RefusedEntries, Staging, UnsafeEntry
from .imaging.io import (COLOR_CHANNELS, LOSSLESS_FORMATS, MODEL_MODES, CannotReproduce, checked_image_bytes,
                         write_image)
from .imaging.tiles import plan_batches, scatter
from .layout import (ALPHA_MODES, CODEC_STORE, CODEC_XZ, DATA_CHUNK_BYTES, GROUP_SUBPIXELS, MAX_IMAGE_SUBPIXELS,
                     OversizedEntry, Progress, Summary, UsageError, decode_name, read_entry, record_from_entry,
                     xz_decompressor)
from .models.registry import load_model


class _Decoder:
    """Consumes chunks in order and hands finished entries to a sink.

    An entry that may not be restored (an unsafe name or link, a duplicate, an
    image whose declared size no encoder writes) is refused on its own: it is
    recorded in `refused` as (name, reason), its chunks are still read and
    checked, and decoding goes on.  Damage to the archive itself (framing,
    checksums, truncation, malformed entries) still stops everything.
    """

    def __init__(self, sink, progress: Progress | None) -> None:
        self.sink = sink
        self.progress = progress
        self.summary = Summary()
        self.adapter: OnlineAdapter | None = None
        self.batches_decoded = 0
        self.refused: list[tuple[str | None, str]] = []
        self._skipping_group = False  # the ALPH/BATC chunks of a refused image group are skipped
        self._refused_group = ""      # an adapted group was refused: later groups cannot be replayed

    def run(self, reader: ArchiveReader) -> Summary:
        try:
            return self._run(reader)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ArchiveError(f"archive entry is malformed ({type(error).__name__}: {error})") from None

    def _refuse(self, name: str | None, reason: str) -> None:
        self.refused.append((name, reason))

    def _run(self, reader: ArchiveReader) -> Summary:
        chunks = reader.chunks()
        tag, payload = next(chunks, (None, None))
        if tag != b"HEAD":
            raise ArchiveError("archive has no header chunk")
        self.header(read_json(payload, "the header"))
        handlers = {b"FILE": self.general_file, b"IMGS": self.images, b"DIRE": self.directory,
                    b"LINK": self.symlink, b"HARD": self.hardlink}
        for tag, payload in chunks:
            if self._skipping_group and tag in (b"ALPH", b"BATC"):
                continue
            self._skipping_group = False
            if tag == b"STAT":
                continue
            if tag not in handlers:
                raise ArchiveError(f"unexpected chunk {tag!r}")
            if tag == b"IMGS":
                try:
                    table = read_entry(tag, payload)
                except OversizedEntry as error:
                    self._refuse_group([], str(error))
                    continue
                self.images(table, chunks)
            else:
                handlers[tag](read_entry(tag, payload), chunks)
        for name, target in self.sink.finish():
            self._refuse(name, f"refusing link {name!r} -> {target!r}: through other links, it leaves the "
                               f"destination")
        return self.summary

    def header(self, header: dict) -> None:
        if header["engine"] != ENGINE:
            raise ArchiveError(f"archive was written by numeric engine {header['engine'].get('name')} "
                               f"v{header['engine'].get('version')}, which this version cannot replay")
        config = AdaptationConfig.from_header(header["adaptation"])
        bundle = load_model(header["model"]["name"], header["model"]["sha256"])
        self.adapter = OnlineAdapter(bundle, config)

    def directory(self, entry: dict, chunks) -> None:
        name, mode, mtime_ns = decode_name(entry), int(entry["mode"]), int(entry["mtime_ns"])
        try:
            self.sink.directory(name, mode, mtime_ns)
        except UnsafeEntry as error:
            self._refuse(name, str(error))

    def symlink(self, entry: dict, chunks) -> None:
        name, target = decode_name(entry), str(entry["target"])
        try:
            self.sink.symlink(name, target)
        except UnsafeEntry as error:
            self._refuse(name, str(error))

    def hardlink(self, entry: dict, chunks) -> None:
        name, target = decode_name(entry), str(entry["target"])
        try:
            self.sink.hardlink(name, target)
        except UnsafeEntry as error:
            self._refuse(name, str(error))

    def general_file(self, entry: dict, chunks) -> None:
        name = decode_name(entry)
        pieces = self._file_pieces(name, entry, chunks)
        try:
            self.sink.file(name, pieces, int(entry["mode"]), int(entry["mtime_ns"]))
        except UnsafeEntry as error:
            self._refuse(name, str(error))
            for _ in pieces:  # its data chunks are still read and checked
                pass
            return
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
                    body = xz_decompressor().decompress(body, max_length=DATA_CHUNK_BYTES + 1)
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

    def _refuse_group(self, names: list[str], reason: str) -> None:
        """Refuse every image of a group that cannot be decoded, and skip its chunks.  With
        adaptation, every later group depends on this one's pixels: those are refused too."""
        for name in names or [None]:
            self._refuse(name, f"image {name!r} not restored: {reason}" if name is not None else reason)
        self._skipping_group = True
        if self.adapter.config.adapt and not self._refused_group:
            self._refused_group = names[0] if names else "an image group"

    def images(self, table: list, chunks) -> None:
        if not isinstance(table, list):
            raise ArchiveError("an image table is not a list")
        names = [decode_name(entry) for entry in table]
        if self._refused_group:
            self._refuse_group(names, f"the adaptation it is coded with depends on refused image "
                                      f"{self._refused_group!r}")
            return
        shapes, problems = [], []
        for name, entry in zip(names, table):
            height, width, mode = int(entry["height"]), int(entry["width"]), entry["image_mode"]
            if mode not in MODEL_MODES or height <= 0 or width <= 0:
                problems.append(f"image {name!r} declares a bad mode or size ({mode!r}, {width}x{height})")
            elif height * width * MODEL_MODES[mode] > MAX_IMAGE_SUBPIXELS:
                problems.append(f"image {name!r} declares {width}x{height} pixels, more than any encoder writes")
            else:
                shapes.append((height, width, COLOR_CHANNELS[mode]))
        if not problems and sum(h * w * MODEL_MODES[e["image_mode"]] for (h, w, _), e in zip(shapes, table)) \
                > 4 * GROUP_SUBPIXELS + MAX_IMAGE_SUBPIXELS:
            problems.append(f"its group of {len(table)} images declares more pixels than any encoder writes")
        if problems:
            self._refuse_group(names, problems[0])
            return
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
        for name, entry, pixels, (h, w, _) in zip(names, table, padded, shapes):
            pixels = pixels[:h, :w]
            if entry["image_mode"] in ALPHA_MODES:
                pixels = np.concatenate([pixels, alpha.pop(0)[:, :, None]], axis=2)
            if str(entry["format"]) not in LOSSLESS_FORMATS:  # `test` would not notice (found by test_fuzz.py)
                self._refuse(name, f"image {name!r}: unknown image format {entry['format']!r}")
                continue
            record = record_from_entry(entry, pixels)
            try:
                self.sink.image(name, record, int(entry["mode"]), int(entry["mtime_ns"]))
            except UnsafeEntry as error:
                self._refuse(name, str(error))
                continue
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
        decompressor = xz_decompressor()
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
        try:
            with open(path, "wb") as handle:
                for piece in pieces:
                    handle.write(piece)
        except OSError as error:  # a full disk names the entry, not the staging folder
            raise OSError(error.errno, f"restoring {name!r}: {error.strerror}") from None
        self.staging.finish_file(path, mode, mtime_ns)

    def image(self, name, record, mode, mtime_ns) -> None:
        path = self.staging.path(name)
        try:
            write_image(path, record)
        except CannotReproduce as error:
            raise UnsafeEntry(f"image {name!r}: {error}") from None
        except OSError as error:
            raise OSError(error.errno, f"restoring {name!r}: {error.strerror}") from None
        self.staging.finish_file(path, mode, mtime_ns)

    def directory(self, name, mode, mtime_ns) -> None:
        self.staging.directory(name, mode, mtime_ns)

    def symlink(self, name, target) -> None:
        self.staging.symlink(name, target)

    def hardlink(self, name, target) -> None:
        self.staging.hardlink(name, target)

    def finish(self) -> list[tuple[str, str]]:
        return self.staging.drop_links_leaving()


class _CheckingSink:
    """Decodes everything, writes nothing: for `osoa-zip test`.  Names obey the
    same rules as in decompress (files.restore.EntryNames)."""

    def __init__(self) -> None:
        self.names = EntryNames()

    def file(self, name, pieces, mode, mtime_ns) -> None:
        self.names.claim(name, "file")
        for _ in pieces:
            pass

    def image(self, name, record, mode, mtime_ns) -> None:
        self.names.claim(name, "file")
        if record.sha256:  # decompress would refuse it: so must `test` (found by tests/test_fuzz.py)
            try:
                checked_image_bytes(record)
            except CannotReproduce as error:
                raise UnsafeEntry(f"image {name!r}: {error}") from None

    def directory(self, name, mode, mtime_ns) -> None:
        self.names.claim(name, "dir")

    def symlink(self, name, target) -> None:
        self.names.claim_symlink(name, target)

    def hardlink(self, name, target) -> None:
        self.names.check_hardlink(name, target)
        self.names.claim(name, "file")

    def finish(self) -> list[tuple[str, str]]:
        return [(name, self.names.links[name]) for name in self.names.links_leaving()]


def test_archive(source: BinaryIO, progress: Progress | None = None) -> Summary:
    """Fully decode and verify an archive without writing anything."""
    started = time.perf_counter()
    decoder = _Decoder(_CheckingSink(), progress)
    summary = decoder.run(ArchiveReader(source))
    summary.seconds = time.perf_counter() - started
    if decoder.refused:
        raise RefusedEntries([reason for _, reason in decoder.refused], summary)
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
    each batch depends on the ones before it through the adaptation.  Entries
    that may not be restored are skipped; once everything else is in place,
    RefusedEntries names them (damage to the archive itself restores nothing).
    """
    started = time.perf_counter()
    staging = Staging(Path(destination))
    try:
        sink = _StagingSink(staging)
        decoder = _Decoder(sink, progress)
        summary = decoder.run(ArchiveReader(source))
        if patterns:
            for pattern in patterns:
                if not any(selected(name, [pattern]) for name in staging.names.kinds):
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
    refused = [reason for name, reason in decoder.refused
               if not patterns or name is None or selected(name, list(patterns))]
    if refused:
        raise RefusedEntries(refused, summary)
    return summary
