"""Reading an archive: decode every chunk in order, hand entries to a sink.

Decompression writes into a staging folder and moves the result into place
only after the END chunk has verified the whole archive; `test` decodes into
a sink that writes nothing.
"""
from __future__ import annotations

import fnmatch
import lzma
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

import numpy as np

from .adapt.config import AdaptationConfig
from .adapt.flags import FLAG_SEGMENT_START
from .adapt.segments import RunEndError, run_segments, split_runs
from .coding.ans import CorruptStream
from .container.format import ArchiveError, ArchiveReader, SalvagingReader, read_json
from .exact import ENGINE
from .files.restore import Conflict, EntryNames, RefusedEntries, Staging, UnsafeEntry
from .imaging.io import (
    COLOR_CHANNELS,
    LOSSLESS_FORMATS,
    MODEL_MODES,
    CannotReproduce,
    blank_picture,
    check_reproduced,
    close_picture,
    is_large,
    paste,
    record_picture,
    save_picture,
    write_image,
)
from .imaging.pixel_file import PixelFile
from .imaging.tiles import plan_batches
from .layout import (
    ALPHA_MODES,
    CHUNK_TAGS,
    CODEC_STORE,
    CODEC_XZ,
    DATA_CHUNK_BYTES,
    GROUP_SUBPIXELS,
    INDEX_MODES,
    MAX_IMAGE_SUBPIXELS,
    SIDE_PLANES,
    OversizedEntry,
    Progress,
    Summary,
    UsageError,
    decode_name,
    read_entry,
    record_from_entry,
    side_plane_members,
    xz_decompressor,
)
from .pause import pause_point
from .torch_loading import load_model, online_adapter

if TYPE_CHECKING:
    from .adapt.engine import OnlineAdapter


class _Decoder:
    """Consumes chunks in order and hands finished entries to a sink.

    An entry that may not be restored (an unsafe name or link, a duplicate, an
    image whose declared size no encoder writes) is refused on its own: it is
    recorded in `refused` as (name, reason), its chunks are still read and
    checked, and decoding goes on.  Damage to the archive itself (framing,
    checksums, truncation, malformed entries) still stops everything, unless
    ``salvage``: then the damaged entry is recorded in ``summary.lost`` and,
    for image batches, nothing is decoded until a batch that starts a segment
    (the model state in between is unknown).
    """

    def __init__(self, sink, progress: Progress | None, salvage: bool = False, threads: int = 1) -> None:
        self.sink = sink
        self.progress = progress
        self.threads = threads
        self.salvage = salvage
        self.segment_lost = False
        self.summary = Summary()
        self.config: AdaptationConfig | None = None
        self._model: tuple[str, str] | None = None  # (name, SHA-256) from the header
        self._adapter: OnlineAdapter | None = None
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
            if self._skipping_group and tag in (b"ALPH", b"PIDX", b"BATC"):
                if tag == b"BATC":
                    self.adapter.skip_batch()
                continue
            self._skipping_group = False
            if tag == b"STAT":
                continue
            if self.salvage:
                self._salvaging(tag, payload, handlers, chunks)
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

    def _salvaging(self, tag, payload, handlers, chunks) -> None:
        """One entry under --salvage: damage loses the entry (and, for images, the segment), nothing more."""
        if payload is None or tag not in handlers:
            if payload is None and tag not in (b"DATA", b"BATC", b"ALPH", b"PIDX", b"STAT"):
                self.summary.lost.append(f"(an entry whose {tag.decode('ascii', 'replace')!r} chunk is damaged)")
            if tag not in (b"DATA", b"ALPH", b"PIDX", b"DIRE", b"LINK", b"HARD", b"FILE", b"STAT"):
                self.segment_lost = True  # it could have been an image table or batch
            return  # parts of an entry already lost (DATA, BATC, ...) are skipped
        entry = None
        try:
            entry = read_entry(tag, payload)
            handlers[tag](entry, chunks)
        except (ArchiveError, UnsafeEntry, OSError, KeyError, TypeError, ValueError, AttributeError) as error:
            if tag == b"IMGS":
                self.segment_lost = True
            entries = entry if isinstance(entry, list) else [entry]
            self.summary.lost.extend(f"{_name_or_unknown(e)}: {error}" for e in entries)

    def header(self, header: dict) -> None:
        if header["engine"] != ENGINE:
            raise ArchiveError(f"archive was written by numeric engine {header['engine'].get('name')} "
                               f"v{header['engine'].get('version')}, which this version cannot replay")
        self.config = AdaptationConfig.from_header(header["adaptation"])
        self._model = (str(header["model"]["name"]), str(header["model"]["sha256"]))

    @property
    def adapter(self) -> OnlineAdapter:
        """The model and its adaptation state, loaded when the first image batch needs them
        (an archive without model-coded images is decoded without torch)."""
        if self._adapter is None:
            self._adapter = online_adapter(load_model(*self._model), self.config)
        return self._adapter

    @adapter.setter
    def adapter(self, adapter: OnlineAdapter) -> None:
        self._adapter = adapter

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
        if self.config.adapt and not self._refused_group:
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
        lost: dict[int, str] = {}  # table index -> why (only under --salvage)
        alpha, indices = (self._side_planes(table, shapes, chunks, *plane, lost) for plane in SIDE_PLANES)
        alpha_index = _positions(table, ALPHA_MODES)
        index_index = _positions(table, INDEX_MODES)
        modelled_index = [i for i, shape in enumerate(shapes) if shape[2]]
        canvases = [_Canvas(shapes[i][0], shapes[i][1], table[i]["image_mode"],
                            _side_plane_view(alpha[alpha_index[i]]) if i in alpha_index else None)
                    for i in modelled_index]
        config = self.config
        planned = plan_batches([shapes[i] for i in modelled_index], config.tile_size, config.batch_size_for)
        if (self.threads > 1 and not self.salvage and planned
                and len(split_runs(self.adapter.batches_seen, len(planned), config.segment_batches)) > 1):
            self._decode_in_parallel(planned, chunks, canvases)
            planned = []
        for batch in planned:
            index = self.batches_decoded
            self.batches_decoded += 1
            tag, payload = next(chunks, (None, None))
            try:
                if tag != b"BATC" or payload is None:
                    raise ArchiveError(f"batch {index}: chunk missing or damaged")
                if self.segment_lost:
                    if not payload or not payload[0] & FLAG_SEGMENT_START:
                        raise ArchiveError(f"batch {index}: an earlier batch of its segment was lost")
                    self.adapter.restart()  # a new segment: decoding can resume from θ0
                    self.segment_lost = False
                try:
                    tiles = self.adapter.decode(payload, batch.shape)
                except (CorruptStream, ValueError) as error:
                    raise ArchiveError(f"batch {index} does not decode ({error})") from None
            except ArchiveError as error:
                if not self.salvage:
                    raise
                self.segment_lost = True
                for member, _, _ in batch.members:
                    lost.setdefault(modelled_index[member], str(error))
                continue
            _paste_batch(batch, tiles, canvases)
            self.summary.image_bits += 8 * len(payload)
        if planned and not self.segment_lost:
            try:
                self.adapter.end_run()
            except ValueError as error:
                raise ArchiveError(f"batch {self.batches_decoded - 1} does not decode ({error})") from None
        canvases.reverse()
        for number, (name, entry, (h, w, _)) in enumerate(zip(names, table, shapes)):
            canvas = canvases.pop() if shapes[number][2] else None  # dropped once written: one image at a time
            if number in lost:
                self.summary.lost.append(f"{name!r}: {lost[number]}")
                continue
            if str(entry["format"]) not in LOSSLESS_FORMATS:  # `test` would not notice (found by test_fuzz.py)
                self._refuse(name, f"image {name!r}: unknown image format {entry['format']!r}")
                continue
            if entry["image_mode"] in INDEX_MODES:
                plane = indices[index_index[number]]
                record = record_from_entry(entry, pixels=_side_plane_view(plane))
                record.pixel_file = plane if isinstance(plane, PixelFile) else None
            else:
                record = record_from_entry(entry, picture=canvas.picture())
                record.pixel_file = canvas.pixel_file
            del canvas
            try:
                self.sink.image(name, record, int(entry["mode"]), int(entry["mtime_ns"]))
            except UnsafeEntry as error:
                self._refuse(name, str(error))
                continue
            finally:
                if record.picture is not None:
                    close_picture(record.picture)  # before the next image of the group is made
                if record.pixel_file is not None:
                    record.pixel_file.close()
            self.summary.images += 1
            self.summary.files += 1
            if record.mode not in INDEX_MODES:
                self.summary.image_subpixels += h * w * MODEL_MODES[record.mode]
        for plane in alpha + indices:  # large side planes not closed with their image
            if isinstance(plane, PixelFile):
                plane.close()

    def _decode_in_parallel(self, planned: list, chunks, canvases: list) -> None:
        """Read the group's batches, then decode its segments side by side (same result as in order)."""
        first = self.batches_decoded
        payloads = []
        for index in range(first, first + len(planned)):
            tag, payload = next(chunks, (None, None))
            if tag != b"BATC" or payload is None:
                raise ArchiveError(f"batch {index}: chunk missing or damaged")
            payloads.append((index, payload))
        self.batches_decoded += len(planned)

        pasting = threading.Lock()  # a canvas makes its picture on its first tile: one thread at a time

        def decode(adapter: OnlineAdapter, item):
            (index, payload), batch = item
            try:
                tiles = adapter.decode(payload, batch.shape)
            except (CorruptStream, ValueError) as error:
                raise ArchiveError(f"batch {index} does not decode ({error})") from None
            with pasting:  # at once, so that the group's tiles are never all held besides its pictures
                _paste_batch(batch, tiles, canvases)

        try:
            _, self.adapter = run_segments(self.adapter, list(zip(payloads, planned)), decode, self.threads)
        except RunEndError as error:  # a run's last chain is cut short
            (index, _), _ = error.last_item
            raise ArchiveError(f"batch {index} does not decode ({error})") from None
        self.summary.image_bits += sum(8 * len(payload) for _, payload in payloads)

    def _side_planes(self, table: list, shapes: list, chunks, modes: tuple, tag_expected: bytes,
                     what: str, lost: dict) -> list[np.ndarray | PixelFile]:
        """The group's planes kept beside the model (one xz chunk), in table order, if any image has
        one: h x w x 1 arrays, or for a large image a PixelFile (the plane never held in memory)."""
        members = side_plane_members(table, modes)
        sizes = [shapes[i][:2] for i in members]
        if not sizes:
            return []
        tag, payload = next(chunks, (None, None))
        # An index plane's file is a P image (it is written from), an alpha plane's an L one.
        planes = [PixelFile("P" if table[i]["image_mode"] in INDEX_MODES else "L", w, h) if is_large(h, w, 1)
                  else np.zeros((h, w, 1), np.uint8) for i, (h, w) in zip(members, sizes)]
        if tag != tag_expected or not _inflate_planes(payload or b"", planes):
            if not self.salvage or tag != tag_expected:
                raise ArchiveError(f"an image group's {what} are missing or damaged")
            for i in members:
                lost.setdefault(i, f"its {what} are damaged")
        return planes


def _inflate_planes(payload: bytes, planes: list[np.ndarray | PixelFile]) -> bool:
    """Decompress the xz payload into the planes, in order, a band at a time; true if it holds
    exactly their bytes (then ends)."""
    decompressor, pending = xz_decompressor(), payload
    try:
        for plane in planes:
            size, offset = plane.size if isinstance(plane, np.ndarray) else plane.width * plane.height, 0
            while offset < size:
                piece = decompressor.decompress(pending, max_length=min(size - offset, DATA_CHUNK_BYTES))
                pending = b""
                if not piece:  # the stream ended, or its data did
                    return False
                if isinstance(plane, np.ndarray):
                    plane.reshape(-1)[offset:offset + len(piece)] = np.frombuffer(piece, np.uint8)
                else:
                    plane.write(offset, piece)
                offset += len(piece)
        # Nothing more: this also reads the stream's end, if it was not read yet.
        return decompressor.eof or (not decompressor.decompress(pending, max_length=1) and decompressor.eof)
    except (lzma.LZMAError, EOFError):
        return False


def _side_plane_view(plane: np.ndarray | PixelFile):
    """h x w x 1 pixels to cut from: the array, or a view of the file."""
    return plane.view() if isinstance(plane, PixelFile) else plane


def _positions(table: list, modes: tuple) -> dict[int, int]:
    """Table index -> position among the group's images of these modes (their side planes' order)."""
    return {i: k for k, i in enumerate(side_plane_members(table, modes))}


class _Canvas:
    """One image being decoded, held as the Pillow image it will be written from: the
    decoded tiles go straight into it (cut to the image, the padding dropped), so the
    group's images are never held twice (docs/SECURITY.md, "How memory grows").
    A large image's Pillow image is mapped from a PixelFile, not held in memory.
    The Pillow image is made on the first tile, so declared images cost nothing until
    their pixels decode.  ``alpha`` (LA, RGBA) is the H x W x 1 alpha plane: an array,
    or a PixelView of a large one's file."""

    def __init__(self, height: int, width: int, mode: str, alpha) -> None:
        self.height, self.width, self.mode, self.alpha = height, width, mode, alpha
        self._picture = None
        self.pixel_file: PixelFile | None = None

    def paste(self, tile: np.ndarray, y: int, x: int) -> None:
        """A decoded C x h x w tile of the padded image at (y, x)."""
        if self._picture is None:
            self._picture = self._blank()
        pixels = tile.transpose(1, 2, 0)[:self.height - y, :self.width - x]
        if self.alpha is not None:
            plane = self.alpha[y:y + pixels.shape[0], x:x + pixels.shape[1]]  # h x w x 1
            pixels = np.concatenate([pixels, plane], axis=2)
        paste(self._picture, pixels, y, x)

    def _blank(self):
        if is_large(self.height, self.width, MODEL_MODES[self.mode]):
            self.pixel_file = PixelFile(self.mode, self.width, self.height)  # zeros, as Image.new makes them
            return self.pixel_file.picture()
        return blank_picture(self.mode, self.width, self.height)

    def forget(self) -> None:
        """Unmap the pages pasted so far (a large image's; they stay in its file)."""
        if self.pixel_file is not None:
            self.pixel_file.forget()

    def picture(self):
        picture, self._picture = self._picture, None
        return picture if picture is not None else self._blank()


def _paste_batch(batch, tiles: np.ndarray, canvases: list[_Canvas]) -> None:
    for (i, y, x), tile in zip(batch.members, tiles):
        canvases[i].paste(tile, y, x)
    for i in {i for i, _, _ in batch.members}:
        canvases[i].forget()


class _StagingSink:
    """Writes each entry into the staging folder."""

    def __init__(self, staging: Staging) -> None:
        self.staging = staging
        self.written: list[tuple[str, bool]] = []  # (name, is an image), for partial extraction's summary

    def file(self, name, pieces, mode, mtime_ns) -> None:
        path = self.staging.path(name)
        try:
            with open(path, "wb") as handle:
                for piece in pieces:
                    handle.write(piece)
        except OSError as error:  # a full disk names the entry, not the staging folder
            path.unlink(missing_ok=True)
            raise OSError(error.errno, f"restoring {name!r}: {error.strerror}") from None
        except BaseException:
            path.unlink(missing_ok=True)  # under --salvage the rest goes on: no partial file
            raise
        self.written.append((name, False))
        self.staging.finish_file(path, mode, mtime_ns)
        pause_point("decompress-entry")  # test-only (pause.py)

    def image(self, name, record, mode, mtime_ns) -> None:
        path = self.staging.path(name)
        try:
            write_image(path, record)
        except CannotReproduce as error:
            raise UnsafeEntry(f"image {name!r}: {error}") from None
        except OSError as error:
            raise OSError(error.errno, f"restoring {name!r}: {error.strerror}") from None
        self.written.append((name, True))
        self.staging.finish_file(path, mode, mtime_ns)
        pause_point("decompress-entry")  # test-only (pause.py)

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
                check_reproduced(record, save_picture(record_picture(record), record, None)[0])
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


class _CountingReader:
    """Reports the archive bytes read: the decoder's progress, known even from a pipe."""

    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        self._stream, self._progress = stream, progress

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._progress(len(data))
        return data


def _counted(source: BinaryIO, progress: Progress | None) -> BinaryIO:
    return source if progress is None else _CountingReader(source, progress)


def test_archive(source: BinaryIO, progress: Progress | None = None, threads: int = 1) -> Summary:
    """Fully decode and verify an archive without writing anything."""
    started = time.perf_counter()
    decoder = _Decoder(_CheckingSink(), progress, threads=threads)
    summary = decoder.run(ArchiveReader(_counted(source, progress)))
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
               progress: Progress | None = None, patterns: list[str] | None = None,
               salvage: bool = False, threads: int = 1) -> Summary:
    """Restore an archive (or the entries matching ``patterns``) into ``destination``.

    Everything is decoded and verified even when only some entries are wanted:
    each batch depends on the ones before it through the adaptation.  Entries
    that may not be restored are skipped; once everything else is in place,
    RefusedEntries names them (damage to the archive itself restores nothing).

    With ``salvage`` (a seekable archive file), damage does not stop the
    restore either: every intact entry is restored, and the summary's ``lost``
    and ``damage`` say what was not (images from a damaged batch to the end of
    its segment, see --segment-size).  Callers must check them.
    """
    started = time.perf_counter()
    staging = Staging(Path(destination))
    try:
        sink = _StagingSink(staging)
        decoder = _Decoder(sink, progress, salvage, threads)
        reader = SalvagingReader(source, CHUNK_TAGS) if salvage else ArchiveReader(_counted(source, progress))
        summary = decoder.run(reader)
        if salvage:
            summary.damage = list(reader.damage)
        if patterns:
            for pattern in patterns:
                if not any(selected(name, [pattern]) for name in staging.names.kinds):
                    raise UsageError(f"no entry matches {pattern!r}")
            staging.commit(force, lambda name: selected(name, list(patterns)))
            kept = [is_image for name, is_image in sink.written if selected(name, list(patterns))]
            summary.files, summary.images = len(kept), sum(kept)
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
    if refused and salvage:
        summary.lost.extend(refused)
    elif refused:
        raise RefusedEntries(refused, summary)
    return summary


def _name_or_unknown(entry) -> str:
    try:
        return repr(decode_name(entry))
    except Exception:  # noqa: BLE001 — a damaged entry may not even have a name
        return "(an entry without a readable name)"
