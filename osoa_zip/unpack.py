"""Reading an archive: decode every chunk in order, hand entries to a sink.

Decompression writes into a staging folder and moves the result into place
only after the END chunk has verified the whole archive; `test` decodes into
a sink that writes nothing.
"""
from __future__ import annotations

import fnmatch
import functools
import lzma
import math
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

import numpy as np

from .adapt.config import AdaptationConfig
from .adapt.flags import FLAG_SEGMENT_START
from .adapt.parts import MIN_SUBPIXELS as PARTS_MIN_SUBPIXELS
from .adapt.parts import PartWorker, attach, settings_allow, start_worker, subpixels_taken
from .adapt.segments import RunEndError, run_segments, split_runs
from .coding import native
from .coding.ans import CorruptStream
from .container.format import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    ArchiveError,
    ArchiveReader,
    OversizedEntry,
    SalvagingReader,
)
from .container.records import (
    KNOWN_TAGS,
    SIDE_PLANES,
    VERBATIM_SINCE,
    AlphaPlanes,
    Batch,
    BlockData,
    BlockMember,
    Chunk,
    Directory,
    FileEntry,
    Hardlink,
    Header,
    ImageEntry,
    ImageTable,
    PaletteIndices,
    SolidBlock,
    Statistics,
    Symlink,
)
from .exact import ENGINES
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
from .imaging.messages import Note, between_captures, library_messages
from .imaging.pixel_file import PixelFile
from .imaging.tiles import plan_batches
from .layout import (
    DATA_CHUNK_BYTES,
    Progress,
    Summary,
    UsageError,
    impossible_images,
    record_from_entry,
    xz_decompressor,
)
from .pause import pause_point
from .reading import BlockStream, ChunkReader, Damaged
from .torch_loading import load_model, online_adapter

if TYPE_CHECKING:
    from .adapt.engine import OnlineAdapter

_IMAGE_PARTS = (AlphaPlanes, PaletteIndices, Batch)  # what follows an image group's table


class _Decoder:
    """The restorer: takes typed entries from the reader (reading.py) in order, decides what
    happens to each, and hands finished entries to a sink.

    An entry that may not be restored (an unsafe name or link, a duplicate, an
    image whose declared size no encoder writes) is refused on its own: it is
    recorded in `refused` as (name, reason), its chunks are still read and
    checked, and decoding goes on.  Damage to the archive itself (framing,
    checksums, truncation, malformed entries) still stops everything, unless
    ``salvage``: then the damaged entry is recorded in ``summary.lost`` and,
    for image batches, nothing is decoded until a batch that starts a segment
    (the model state in between is unknown).

    ``wanted`` (partial extraction): a file or solid block holding no file it
    accepts is read (and so checksummed) but not decoded; image groups are always
    decoded, since every later batch depends on them through the adaptation.
    """

    def __init__(self, sink, progress: Progress | None, salvage: bool = False, threads: int = 1,
                 cluster=None, wanted: Callable[[str], bool] | None = None) -> None:
        self.sink = sink
        self.wanted = wanted
        self.progress = progress
        self.threads, self.cluster = threads, cluster
        self.salvage = salvage
        self.segment_lost = False
        self.summary = Summary()
        self.config: AdaptationConfig | None = None
        self._model: tuple[str, str] | None = None  # (name, SHA-256) from the header
        self._engine: dict | None = None  # the header's engine record
        self._adapter: OnlineAdapter | None = None
        self.parts = None  # the worker process for the first part of each batch (adapt/parts.py)
        self.batches_decoded = 0
        self.blocks_skipped = 0
        self.refused: list[tuple[str | None, str]] = []
        self._refused_group = ""  # an adapted group was refused: later groups cannot be replayed
        self.version = (FORMAT_MAJOR, FORMAT_MINOR)  # the archive's format (run() reads it)
        self._handlers = {Directory: self.directory, Symlink: self.symlink, Hardlink: self.hardlink,
                          FileEntry: self.general_file, ImageTable: self.images, SolidBlock: self.solid_block}

    def run(self, reader: ArchiveReader) -> Summary:
        try:
            return self._run(reader)
        finally:
            if self.parts is not None:
                self.parts.close()

    def _run(self, reader: ArchiveReader) -> Summary:
        chunks = ChunkReader(reader.chunks(), reader.version)
        self.version = reader.version
        self.header(chunks.header())
        while (entry := self._next_entry(chunks)) is not None:
            if entry is _SKIPPED or isinstance(entry, Statistics):
                continue
            handler = self._handlers.get(type(entry))
            if isinstance(entry, Damaged):
                self._damaged(entry)
            elif handler is None:  # a part out of place: damage, or (salvage) part of a lost entry
                if not self.salvage:
                    raise ArchiveError(f"unexpected chunk {entry.TAG!r}")
                self.segment_lost = self.segment_lost or entry.MODEL_STATE
            elif self.salvage:
                self._salvaging(handler, entry, chunks)
            else:
                handler(entry, chunks)
        for name, target in self.sink.finish():
            self._refuse(name, f"refusing link {name!r} -> {target!r}: through other links, it leaves the "
                               f"destination")
        return self.summary

    def _next_entry(self, chunks: ChunkReader):
        """The next entry, _SKIPPED for one that could not be read but is dealt with, None at the end."""
        try:
            return chunks.next_entry()
        except OversizedEntry as error:  # an image table or solid block larger than any writer writes
            if self.salvage:
                self._unreadable(chunks, error)
            elif chunks.last_kind is SolidBlock:
                self._refuse(None, str(error))
                chunks.skip_parts((BlockData,))
            else:
                self._refuse_group(chunks, [], str(error))
            return _SKIPPED
        except ArchiveError as error:  # intact checksum, unreadable payload
            if not self.salvage:
                raise
            self._unreadable(chunks, error)
            return _SKIPPED

    def _unreadable(self, chunks: ChunkReader, error: ArchiveError) -> None:
        self.summary.lost.append(f"(an entry without a readable name): {error}")
        kind = chunks.last_kind
        self.segment_lost = self.segment_lost or kind is None or kind.MODEL_STATE

    def _damaged(self, chunk: Damaged) -> None:
        """A chunk whose checksum failed (--salvage): its entry is lost, and for what the model
        reads (or a chunk of unknown kind), the rest of its segment."""
        kind = chunk.kind
        if kind is SolidBlock:
            self.summary.lost.append(f"(the files of a solid block whose index chunk {chunk.label!r} is damaged)")
        elif kind is None or kind.ROLE == "entry":
            self.summary.lost.append(f"(an entry whose {chunk.label!r} chunk is damaged)")
        if kind is None or kind.MODEL_STATE:
            self.segment_lost = True

    def _salvaging(self, handler, entry: Chunk, chunks: ChunkReader) -> None:
        """One entry under --salvage: damage loses the entry (and, for images, the segment), nothing more."""
        try:
            handler(entry, chunks)
        except (ArchiveError, UnsafeEntry, OSError) as error:
            names = ([image.name for image in entry.images] if isinstance(entry, ImageTable)
                     else [member.name for member in entry.files] if isinstance(entry, SolidBlock) else [entry.name])
            self.segment_lost = self.segment_lost or entry.MODEL_STATE
            self.summary.lost.extend(f"{name!r}: {error}" for name in names)

    def _refuse(self, name: str | None, reason: str) -> None:
        self.refused.append((name, reason))

    def header(self, header: Header) -> None:
        if header.engine not in ENGINES.values():
            raise ArchiveError(f"archive was written by numeric engine {header.engine.get('name')} "
                               f"v{header.engine.get('version')}, which this version cannot replay")
        self._engine = header.engine
        try:
            self.config = AdaptationConfig.from_header(header.adaptation)
        except (TypeError, ValueError) as error:
            raise ArchiveError(f"the header's adaptation settings are malformed ({error})") from None
        self._model = (str(header.model["name"]), str(header.model["sha256"]))

    @property
    def adapter(self) -> OnlineAdapter:
        """The model and its adaptation state, loaded when the first image batch needs them
        (an archive without model-coded images is decoded without torch)."""
        if self._adapter is None:
            bundle = load_model(*self._model)
            if bundle.engine != self._engine:
                raise ArchiveError(f"archive says numeric engine v{self._engine.get('version')}, but its model "
                                   f"{bundle.name} runs on engine v{bundle.engine['version']}")
            self._adapter = online_adapter(bundle, self.config)
        return self._adapter

    @adapter.setter
    def adapter(self, adapter: OnlineAdapter) -> None:
        self._adapter = adapter

    def _placed(self, name: str, place, *details) -> None:
        try:
            place(name, *details)
        except UnsafeEntry as error:
            self._refuse(name, str(error))

    def directory(self, entry: Directory, chunks: ChunkReader) -> None:
        self._placed(entry.name, self.sink.directory, entry.mode, entry.mtime_ns)

    def symlink(self, entry: Symlink, chunks: ChunkReader) -> None:
        self._placed(entry.name, self.sink.symlink, entry.target)

    def hardlink(self, entry: Hardlink, chunks: ChunkReader) -> None:
        self._placed(entry.name, self.sink.hardlink, entry.target)

    def general_file(self, entry: FileEntry, chunks: ChunkReader) -> None:
        if self.wanted is not None and not self.wanted(entry.name):
            chunks.skip_file(entry)
            return
        self._file(entry.name, chunks.file_pieces(entry, DATA_CHUNK_BYTES), entry.mode, entry.mtime_ns)

    def _file(self, name: str, pieces, mode: int, mtime_ns: int) -> None:
        """Hand one file's pieces to the sink; a refused file's pieces are still read and checked."""
        try:
            self.sink.file(name, pieces, mode, mtime_ns)
        except UnsafeEntry as error:
            self._refuse(name, str(error))
            for _ in pieces:
                pass
            return
        self.summary.files += 1

    def solid_block(self, block: SolidBlock, chunks: ChunkReader) -> None:
        """A solid block's files, decoded from its one stream in order: all of them, or none if
        no file in it is wanted.  Under --salvage, damage loses the file it hits and the
        block's files after it; the files before it are already restored."""
        what = f"solid block {self.summary.blocks + self.blocks_skipped} (files {block.files[0].name!r} ...)"
        if self.wanted is not None and not any(self.wanted(member.name) for member in block.files):
            chunks.skip_block(block)
            self.blocks_skipped += 1
            return
        self.summary.blocks += 1
        stream = BlockStream(chunks, block, what)
        for number, member in enumerate(block.files):
            try:
                self._file(member.name, stream.pieces(member, DATA_CHUNK_BYTES), member.mode, member.mtime_ns)
            except ArchiveError as error:
                if not self.salvage:
                    raise
                self._lose_block_files(block.files[number:], stream, error)
                return
        try:
            stream.finish()
        except ArchiveError as error:
            if not self.salvage:
                raise
            self.summary.lost.append(f"(after the last file of {what}): {error}")

    def _lose_block_files(self, members: list[BlockMember], stream: BlockStream, error: ArchiveError) -> None:
        self.summary.lost.extend(f"{member.name!r}: {error}" for member in members)
        stream.skip_rest()

    def _refuse_group(self, chunks: ChunkReader, names: list[str], reason: str) -> None:
        """Refuse every image of a group that cannot be decoded, and skip its chunks.  With
        adaptation, every later group depends on this one's pixels: those are refused too."""
        for name in names or [None]:
            self._refuse(name, f"image {name!r} not restored: {reason}" if name is not None else reason)
        for kind in chunks.skip_parts(_IMAGE_PARTS):
            if kind is Batch:
                self.adapter.skip_batch()  # segment starts stay where they are
        if self.config.adapt and not self._refused_group:
            self._refused_group = names[0] if names else "an image group"

    def images(self, table: ImageTable, chunks: ChunkReader) -> None:
        names = [image.name for image in table.images]
        if self._refused_group:
            self._refuse_group(chunks, names, f"the adaptation it is coded with depends on refused image "
                                              f"{self._refused_group!r}")
            return
        problem = impossible_images(table.images)
        if problem:
            self._refuse_group(chunks, names, problem)
            return
        older = next((image.name for image in table.images if image.since_1_5), None)
        if older is not None and self.version < VERBATIM_SINCE:
            raise ArchiveError(f"image {older!r} has fields of format 1.5 in a format "
                               f"{'%d.%d' % self.version} archive; the archive is damaged")
        group = _Group(table)
        lost: dict[int, str] = {}  # table index -> why (only under --salvage)
        alpha, indices = (self._side_planes(group, chunks, kind, lost) for kind in SIDE_PLANES)
        canvases = group.canvases(alpha)
        config = self.config
        planned = plan_batches([group.shapes[i] for i in group.modelled], config.tile_size, config.batch_size_for)
        # numba or not: the same pixels, less start-up for a small archive
        native.expect_decode(sum(math.prod(group.shapes[i]) for i in group.modelled))
        if self._adapter is None:
            self._start_parts_before_model(planned)
        side_by_side = self.cluster is not None or (
            self.threads > 1 and planned
            and len(split_runs(self.adapter.batches_seen, len(planned), config.segment_batches)) > 1)
        writer = _GroupWriter(self, group, canvases, indices, lost, planned, beside=self.threads > 1)
        try:
            if side_by_side and not self.salvage:
                self._decode_in_parallel(planned, chunks, canvases)
            else:
                self._attach_parts(planned)
                self._decode_in_order(planned, chunks, canvases, group.modelled, lost, writer)
            writer.finish()
        finally:
            writer.close()
        for plane in alpha + indices:  # large side planes not closed with their image
            if isinstance(plane, PixelFile):
                plane.close()

    def _parts_possible(self) -> bool:
        """Whether a worker process may take half of each batch (adapt/parts.py): with a second
        core, decoding in order; not under --salvage, whose restarts go batch by batch."""
        return self.threads > 1 and self.cluster is None and not self.salvage

    def _start_parts_before_model(self, planned: list) -> None:
        """Start the worker before this process loads the model, if the settings let it take
        PARTS_MIN_SUBPIXELS of the group's: the two load side by side (~1 s each), and the
        worker is ready when the first batch comes.  (A worker forked once the model is loaded
        costs less CPU but is ready ~0.5 s later, its warm-up after the load: tiles32_2048
        decompressed in 1.05x the wall time, docs/PERFORMANCE.md.)  If the model cannot share
        its batches after all, ``_attach_parts`` stops it."""
        if self.parts is not None or not self._parts_possible():
            return
        if len(split_runs(0, len(planned), self.config.segment_batches)) > 1:
            return  # segments decode side by side in threads instead
        taken = subpixels_taken(planned, lambda channels: settings_allow(self.config, channels))
        if taken and taken >= PARTS_MIN_SUBPIXELS:
            self.parts = PartWorker(*self._model, self.config.to_header(), decoding=True)

    def _attach_parts(self, planned: list) -> None:
        """With a second core, a group whose batches that a worker process would take half of
        (adapt/parts.py) hold PARTS_MIN_SUBPIXELS or more starts that worker (once), if it has not
        started yet, and offers it to the adapter (which takes it when it is ready)."""
        if not planned or not self._parts_possible():
            return  # (a group without model-coded images loads no model)
        if self.parts is not None and not self.adapter.can_use_parts():
            self.parts.close()  # started before the model was known, for a model that cannot share
            self.parts = None
            return
        taken = subpixels_taken(planned, self.adapter.parts_would_take)
        if not taken or taken < PARTS_MIN_SUBPIXELS:
            return
        if self.parts is None:
            self.parts = start_worker(self.adapter, decoding=True)
        attach(self.parts, self.adapter, taken)

    def _decode_in_order(self, planned: list, chunks: ChunkReader, canvases: list, modelled: list[int],
                         lost: dict[int, str], writer: "_GroupWriter") -> None:
        """Decode the group's batches one after the other; under --salvage a batch that does not
        decode loses its images (and the segment's later batches, until one starts a segment)."""
        ahead = _ChunksAhead(chunks, self.batches_decoded, planned if not self.salvage else [])
        for batch in planned:
            index = self.batches_decoded
            self.batches_decoded += 1
            try:
                tiles, size = self._decode_batch(ahead, index, batch)
            except ArchiveError as error:
                if not self.salvage:
                    raise
                self.segment_lost = True
                for member, _, _ in batch.members:
                    lost.setdefault(modelled[member], str(error))
                continue
            _paste_batch(batch, tiles, canvases)
            self.summary.image_bits += 8 * size
            if not self.salvage:  # (salvage may still lose the whole group: it hands all on at the end)
                writer.pasted(batch)
        if planned and not self.segment_lost:
            try:
                self.adapter.end_run()
            except ValueError as error:
                raise ArchiveError(f"batch {self.batches_decoded - 1} does not decode ({error})") from None

    def _decode_batch(self, ahead: "_ChunksAhead", index: int, batch) -> tuple[np.ndarray, int]:
        """The tiles of the next batch chunk, and its size in bytes."""
        part = ahead.take(index)
        if isinstance(part, Damaged):
            raise ArchiveError(f"batch {index}: chunk missing or damaged")
        if self.segment_lost:
            if not part.flags & FLAG_SEGMENT_START:
                raise ArchiveError(f"batch {index}: an earlier batch of its segment was lost")
            self.adapter.restart()  # a new segment: decoding can resume from θ0
            self.segment_lost = False
        try:
            return self.adapter.decode(part.data, batch.shape, ahead.following(index)), len(part.data)
        except (CorruptStream, ValueError) as error:
            raise ArchiveError(f"batch {index} does not decode ({error})") from None

    def _decode_in_parallel(self, planned: list, chunks: ChunkReader, canvases: list) -> None:
        """Read the group's batches, then decode its segments side by side (same result as in order)."""
        first = self.batches_decoded
        payloads = [(index, chunks.part(Batch, f"batch {index}: chunk").data)
                    for index in range(first, first + len(planned))]
        self.batches_decoded += len(planned)

        if self.cluster is not None:  # the same runs as tasks on a Dask cluster (osoa_zip/cluster.py)
            self.adapter = self.cluster.decode(self.adapter, payloads, [batch.shape for batch in planned],
                                               lambda k, tiles: _paste_batch(planned[k], tiles, canvases))
            self.summary.image_bits += sum(8 * len(payload) for _, payload in payloads)
            return
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

    def _write_image(self, image: ImageEntry, record) -> None:
        try:
            self.sink.image(image.name, record, image.mode, image.mtime_ns)
        except UnsafeEntry as error:
            self._refuse(image.name, str(error))
            return
        finally:
            if record.picture is not None:
                close_picture(record.picture)  # before the next image of the group is made
            if record.pixel_file is not None:
                record.pixel_file.close()
        self.summary.images += 1
        self.summary.files += 1
        if record.mode not in PaletteIndices.MODES:
            self.summary.image_subpixels += image.height * image.width * MODEL_MODES[record.mode]

    def _side_planes(self, group: _Group, chunks: ChunkReader, kind, lost: dict[int, str]) -> list:
        """The group's planes of this kind (one xz chunk), in table order, if any image has one:
        h x w x 1 arrays, or for a large image a PixelFile (the plane never held in memory)."""
        members = kind.members(group.table)
        if not members:
            return []
        what = f"an image group's {kind.WHAT} are missing or damaged"
        try:
            part = chunks.part(kind, what)
        except ArchiveError:
            raise ArchiveError(what) from None
        # An index plane's file is a P image (it is written from), an alpha plane's an L one.
        planes = [PixelFile("P" if kind is PaletteIndices else "L", w, h) if is_large(h, w, 1)
                  else np.zeros((h, w, 1), np.uint8) for h, w, _ in (group.shapes[i] for i in members)]
        if isinstance(part, Damaged) or not _inflate_planes(part.packed, planes):
            if not self.salvage:
                raise ArchiveError(what)
            for i in members:
                lost.setdefault(i, f"its {kind.WHAT} are damaged")
        return planes


_SKIPPED = object()  # an entry the restorer could not read but has dealt with (refused, or lost)


class _Group:
    """An image group's table with the shapes it declares: (height, width, channels the model codes)."""

    def __init__(self, table: ImageTable) -> None:
        self.table = table
        self.shapes = [(image.height, image.width, COLOR_CHANNELS[image.image_mode]) for image in table.images]
        self.modelled = [i for i, shape in enumerate(self.shapes) if shape[2]]

    def canvases(self, alpha: list) -> list[_Canvas]:
        """One canvas per image the model codes, with its alpha plane if it has one."""
        alpha_position = {i: k for k, i in enumerate(AlphaPlanes.members(self.table))}
        return [_Canvas(self.shapes[i][0], self.shapes[i][1], self.table.images[i].image_mode,
                        _side_plane_view(alpha[alpha_position[i]]) if i in alpha_position else None)
                for i in self.modelled]


class _ChunksAhead:
    """A group's batch chunks, read one ahead of the batch being decoded when ``planned`` is given
    (so that the engine can hand the next batch to its worker early, OnlineAdapter.decode); an
    error reading the next chunk is raised when that batch's turn comes, as reading it then would."""

    def __init__(self, chunks: ChunkReader, first: int, planned: list) -> None:
        self.chunks, self.first, self.planned = chunks, first, planned
        self._next: tuple[int, object, Exception | None] | None = None

    def take(self, index: int):
        """Batch ``index``'s chunk (Batch or Damaged), the one after it read ahead if it is planned."""
        if self._next is not None and self._next[0] == index:
            _, part, error = self._next
            self._next = None
            if error is not None:
                raise error
        else:
            part = self.chunks.part(Batch, f"batch {index}: chunk")
        if index + 1 - self.first < len(self.planned):
            try:
                self._next = (index + 1, self.chunks.part(Batch, f"batch {index + 1}: chunk"), None)
            except ArchiveError as error:
                self._next = (index + 1, None, error)
        return part

    def following(self, index: int) -> tuple[bytes, tuple] | None:
        """(payload, shape) of the batch after ``index``, if it has been read and is whole."""
        if self._next is None or self._next[0] != index + 1 or not isinstance(self._next[1], Batch):
            return None
        return self._next[1].data, self.planned[index + 1 - self.first].shape


class _GroupWriter:
    """Hands a group's images to the restorer's sink in table order, each as soon as it is whole
    (its last tile pasted; an image the model does not code at once), the rest at ``finish``;
    each canvas is dropped once its image is handed on.

    ``beside`` (a second core): the hand-overs run in order on a helper thread while the next
    batches decode.  Writing an image file is mostly the kernel creating it (~0.6 ms here, about
    a 32 x 32 RGB tile's share of decoding) and Pillow's encoder, both outside the GIL.  What
    the restorer records (refusals, losses) keeps the table's order, and the group's next entry
    waits for ``finish``, so the sink sees entries in archive order as before."""

    def __init__(self, restorer: "_Decoder", group: _Group, canvases: list, indices: list,
                 lost: dict[int, str], planned: list, beside: bool) -> None:
        self._restorer, self._group, self._indices, self._lost = restorer, group, indices, lost
        self._canvas = dict(zip(group.modelled, canvases))  # table number -> canvas
        self._tiles_left = [0] * len(group.table.images)
        for batch in planned:
            for member, _, _ in batch.members:
                self._tiles_left[group.modelled[member]] += 1
        self._index_position = {i: k for k, i in enumerate(PaletteIndices.members(group.table))}
        self._next = 0  # the first image (table order) not handed on yet
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="osoa-writer") if beside else None
        self._handed: list[Future] = []
        self._error: BaseException | None = None

    def pasted(self, batch) -> None:
        """A batch's tiles are in their canvases: hand on the images that are now whole."""
        for member, _, _ in batch.members:
            self._tiles_left[self._group.modelled[member]] -= 1
        self._hand_on(everything=False)

    def finish(self) -> None:
        """Hand on every image left (those a lost batch left unfinished are recorded lost) and
        wait until all are written; the first error raised in writing is raised here."""
        self._hand_on(everything=True)
        for handed in self._handed:
            handed.result()
        self._raise()
        pause_point("decompress-entry")  # test-only (pause.py)

    def close(self) -> None:
        """Stop: what is not written yet never is (an error or an interrupt is on its way)."""
        if self._helper is not None:
            self._helper.shutdown(wait=True, cancel_futures=True)

    def _hand_on(self, everything: bool) -> None:
        self._raise()
        images = self._group.table.images
        while self._next < len(images) and (everything or self._tiles_left[self._next] <= 0):
            number = self._next
            self._next += 1
            task = self._task(number, images[number], self._canvas.pop(number, None))
            if self._helper is None:
                task()
            else:
                self._handed.append(self._helper.submit(self._guarded, task))

    def _guarded(self, task) -> None:
        if self._error is None:  # after a failed write nothing more is written, as in one thread
            try:
                task()
            except BaseException as error:
                self._error = error

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _task(self, number: int, image: ImageEntry, canvas: "_Canvas | None"):
        """What handing on image ``number`` does; its picture is taken from the canvas now."""
        restorer = self._restorer
        if number in self._lost:
            return functools.partial(restorer.summary.lost.append, f"{image.name!r}: {self._lost[number]}")
        if image.format not in LOSSLESS_FORMATS:  # `test` would not notice (found by test_fuzz.py)
            return functools.partial(restorer._refuse, image.name,
                                     f"image {image.name!r}: unknown image format {image.format!r}")
        if image.image_mode in PaletteIndices.MODES:
            plane = self._indices[self._index_position[number]]
            record = record_from_entry(image, pixels=_side_plane_view(plane))
            record.pixel_file = plane if isinstance(plane, PixelFile) else None
        else:
            record = record_from_entry(image, picture=canvas.picture())
            record.pixel_file = canvas.pixel_file
        return functools.partial(restorer._write_image, image, record)


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


def _write_restored_image(path: Path, name: str, record, note: Note | None) -> None:
    """Write one restored image file, as decompress and `--stdout` both do: what the image
    library says goes to ``note``, and an image that cannot be reproduced is refused."""
    try:
        with library_messages(name, note):
            write_image(path, record)
    except CannotReproduce as error:
        raise UnsafeEntry(f"image {name!r}: {error}") from None


class _StagingSink:
    """Writes each entry into the staging folder."""

    def __init__(self, staging: Staging, note: Note | None = None) -> None:
        self.staging, self.note = staging, note
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
            _write_restored_image(path, name, record, self.note)
        except OSError as error:
            raise OSError(error.errno, f"restoring {name!r}: {error.strerror}") from None
        self.written.append((name, True))
        self.staging.finish_file(path, mode, mtime_ns)  # (the pause point: _GroupWriter.finish, main thread)

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

    def __init__(self, note: Note | None = None) -> None:
        self.names, self.note = EntryNames(), note

    def file(self, name, pieces, mode, mtime_ns) -> None:
        self.names.claim(name, "file")
        for _ in pieces:
            pass

    def image(self, name, record, mode, mtime_ns) -> None:
        self.names.claim(name, "file")
        if record.sha256:  # decompress would refuse it: so must `test` (found by tests/test_fuzz.py)
            try:
                with library_messages(name, self.note):
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
    # Reported between captures: images are written (and their messages caught) beside decoding.
    return source if progress is None else _CountingReader(source, between_captures(progress))


def test_archive(source: BinaryIO, progress: Progress | None = None, threads: int = 1,
                 note: Note | None = None, cluster=None) -> Summary:
    """Fully decode and verify an archive without writing anything (``note`` and ``cluster`` as
    for decompress)."""
    started = time.perf_counter()
    decoder = _Decoder(_CheckingSink(note), progress, threads=threads, cluster=cluster)
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
               salvage: bool = False, threads: int = 1, note: Note | None = None, cluster=None) -> Summary:
    """Restore an archive (or the entries matching ``patterns``) into ``destination``.

    Every chunk is read and verified even when only some entries are wanted, and
    every image batch decoded (each depends on the ones before it through the
    adaptation); files and solid blocks holding none of the wanted entries (nor a
    file a wanted hard link names) are not decoded, if the source can seek (a pipe
    is read once: everything is decoded then).  Entries
    that may not be restored are skipped; once everything else is in place,
    RefusedEntries names them (damage to the archive itself restores nothing).

    With ``salvage`` (a seekable archive file), damage does not stop the
    restore either: every intact entry is restored, and the summary's ``lost``
    and ``damage`` say what was not (images from a damaged batch to the end of
    its segment, see --segment-size).  Callers must check them.

    What the image library says while writing an image goes to ``note``, one line
    per message naming the entry (otherwise it is dropped).  ``cluster``
    (osoa_zip.cluster.connect) decodes the segments on a Dask cluster (not with
    ``salvage``, which goes batch by batch).
    """
    started = time.perf_counter()
    staging = Staging(Path(destination))
    try:
        sink = _StagingSink(staging, note)
        wanted = _wanted_by(source, patterns) if patterns and not salvage else None
        decoder = _Decoder(sink, progress, salvage, threads, cluster, wanted)
        reader = SalvagingReader(source, KNOWN_TAGS) if salvage else ArchiveReader(_counted(source, progress))
        summary = decoder.run(reader)
        if salvage:
            summary.damage = list(reader.damage)
        _commit(staging, sink, summary, patterns, force)
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


def _commit(staging: Staging, sink: _StagingSink, summary: Summary, patterns: list[str] | None, force: bool) -> None:
    """Move the staged entries (those matching ``patterns``, if any) into place."""
    if not patterns:
        staging.commit(force)
        return
    for pattern in patterns:
        if not any(selected(name, [pattern]) for name in staging.names.kinds):
            raise UsageError(f"no entry matches {pattern!r}")
    staging.commit(force, lambda name: selected(name, list(patterns)))
    kept = [is_image for name, is_image in sink.written if selected(name, list(patterns))]
    summary.files, summary.images = len(kept), sum(kept)


def _wanted_by(source: BinaryIO, patterns: list[str]) -> Callable[[str], bool] | None:
    """What partial extraction must decode: the selected names and the files that selected
    hard links name (hard links come last, so a first pass over the chunks finds them;
    nothing is decoded in it).  None (decode everything) for a source that cannot seek."""
    try:
        start = source.tell()
        source.seek(start)
    except (AttributeError, OSError, ValueError):
        return None
    targets = set()
    for tag, payload in ArchiveReader(source).chunks():
        if tag == Hardlink.TAG:
            link = Hardlink.parse(payload)
            if selected(link.name, patterns):
                targets.add(link.target)
    source.seek(start)
    return lambda name: name in targets or selected(name, patterns)


class _OneEntrySink(_CheckingSink):
    """`test`'s sink that also keeps the restored bytes of one entry, in a temporary
    file, exactly as decompress would write them (an image through the same
    write_image), for `decompress --stdout NAME`."""

    def __init__(self, wanted: str, scratch: Path, note: Note | None = None) -> None:
        super().__init__(note)
        self.wanted = wanted
        self.captured: Path | None = None
        self._scratch = scratch

    def file(self, name, pieces, mode, mtime_ns) -> None:
        if name != self.wanted:
            return super().file(name, pieces, mode, mtime_ns)
        self.names.claim(name, "file")
        path = self._scratch / "entry"
        with open(path, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
        self.captured = path

    def image(self, name, record, mode, mtime_ns) -> None:
        if name != self.wanted:
            return super().image(name, record, mode, mtime_ns)
        self.names.claim(name, "file")
        path = self._scratch / "entry"
        _write_restored_image(path, name, record, self.note)
        self.captured = path


def extract_entry(source: BinaryIO, name: str, output: BinaryIO, progress: Progress | None = None,
                  threads: int = 1, note: Note | None = None) -> Summary:
    """Write the restored bytes of the one entry ``name`` (a file, an image, or a hard
    link to one) to ``output``, as decompress would restore it, and nothing else.

    The archive's table is read first, so that a name that is not there, or is a
    folder or a symbolic link, fails at once, before anything is decoded (a
    source that cannot seek is spooled to a temporary file for that).  Nothing is
    written to ``output`` until the whole archive has been decoded and verified.
    """
    from .table import read_table  # the table reader, as `list` uses it

    with tempfile.TemporaryDirectory(prefix="osoa-zip-entry.") as scratch, ExitStack() as closing:
        source = _seekable(source, Path(scratch), closing)
        start = source.tell()
        _, listed = read_table(source)
        kinds = {entry.name: entry for entry in listed}
        wanted = name.removeprefix("./")
        entry = kinds.get(wanted)
        if entry is None:
            raise UsageError(f"{name!r}: no such entry in the archive")
        if entry.kind == "hardlink":
            wanted = entry.method.removeprefix("-> ")
            entry = kinds.get(wanted)
        if entry is None or entry.kind not in ("file", "image"):
            kind = {"dir": "folder", "symlink": "symbolic link"}.get(entry.kind, entry.kind) if entry else "link"
            raise UsageError(f"{name!r} is a {kind}, not a file")
        source.seek(start)
        started = time.perf_counter()
        sink = _OneEntrySink(wanted, Path(scratch), note)
        decoder = _Decoder(sink, progress, threads=threads, wanted={wanted}.__contains__)
        summary = decoder.run(ArchiveReader(_counted(source, progress)))
        refused = [reason for refused_name, reason in decoder.refused if refused_name in (wanted, None)]
        if refused or sink.captured is None:
            raise RefusedEntries(refused or [f"{name!r} could not be restored"], summary)
        with open(sink.captured, "rb") as captured:
            shutil.copyfileobj(captured, output)
        summary.seconds = time.perf_counter() - started
        return summary


def _seekable(source: BinaryIO, scratch: Path, closing: ExitStack) -> BinaryIO:
    """The source itself if it can seek, else a copy of it in the scratch folder (a pipe)."""
    try:
        source.seek(source.tell())
        return source
    except (AttributeError, OSError, ValueError):
        spooled = closing.enter_context(open(scratch / "archive", "w+b"))
        shutil.copyfileobj(source, spooled)
        spooled.seek(0)
        return spooled
