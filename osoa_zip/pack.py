"""Writing an archive: scan the sources, code image groups, stream the rest.

Chunk order (docs/FORMAT.md): HEAD; entries as they are scanned (DIRE,
LINK, FILE + DATA for a file that keeps its own stream), with model-path images
collected into groups, each an IMGS table (+ ALPH, PIDX) followed by its BATC
chunks; then the other files in solid blocks (BLCK + BDAT, solid.py); then HARD
links; STAT; END.
"""
from __future__ import annotations

import io
import lzma
import math
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO, Sequence

import numpy as np

from . import __version__
from .adapt.config import AdaptationConfig
from .adapt.defaults import adaptation_for
from .adapt.parts import MIN_SUBPIXELS as PARTS_MIN_SUBPIXELS
from .adapt.parts import PartWorker, attach, can_fork, settings_share, start_worker, subpixels_taken
from .adapt.segments import run_segments, split_runs
from .coding import native
from .container.format import ArchiveWriter
from .container.records import (
    DEFAULT_BLOCK_BYTES,
    MAX_BLOCK_BYTES,
    AlphaPlanes,
    Batch,
    BatchRecord,
    Data,
    Directory,
    FileEntry,
    Hardlink,
    Header,
    ImageTable,
    PaletteIndices,
    Statistics,
    Symlink,
    writes_verbatim,
)
from .files.scan import DIRECTORY, FILE, HARDLINK, SYMLINK, Entry, ExcludePatterns, SourceError, scan
from .imaging.io import (
    COLOR_CHANNELS,
    COLOUR_HINT_BYTES,
    LOSSLESS_SUFFIXES,
    ImageRecord,
    may_hold_colour,
    read_image,
    scratch_file,
)
from .imaging.messages import Note, between_captures
from .imaging.pixel_file import PixelView
from .imaging.tiles import gather, padded_size, plan_batches
from .layout import (
    CHUNK_OVERHEAD,
    DATA_CHUNK_BYTES,
    GROUP_SUBPIXELS,
    MAX_GROUP_IMAGES,
    Progress,
    Summary,
    UsageError,
    Warn,
    image_entry,
    xz_filters,
)
from .models.catalog import DEFAULT_MODEL, available_models
from .pause import pause_point
from .read_ahead import ReadAhead, reads_ahead
from .read_process import ReadProcess
from .solid import (
    OWN_STREAM_MIN,
    BlockCoder,
    FileChanged,
    file_pieces,
    incompressible,
    plan_blocks,
    write_coded,
)
from .torch_loading import load_model, online_adapter
from .triage_queue import TriageQueue

if TYPE_CHECKING:
    from .adapt.engine import OnlineAdapter
    from .triage import Triage

# Images read before triage decides on them together (its model passes cost ~20 ms each,
# however few tiles they hold); general-path files do not wait for them.  Images that
# triage's classical bound clears (prefilter.py) need no pass and do not count.
TRIAGE_IMAGES = 32
# With a second core, compress starts its worker process (adapt/parts.py) before it loads
# the model when the sources hold this many bytes of image files: the two load side by side,
# the worker measures triage's samples while this process reads on, and it is ready to take
# half of each adapting batch from the first.  Smaller folders are done before it would pay.
EARLY_WORKER_BYTES = 1 << 20
# Images judged, waiting for the worker's measurements (triage_queue.py), hold at most this many sub-pixels.
WAITING_SUBPIXELS = GROUP_SUBPIXELS
COLOUR_SAMPLE = 16  # image files whose headers say whether the worker would take colour batches


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
                 byte_exact: bool = False, threads: int = 1, note: Note | None = None,
                 triage: Triage | None = None, cluster=None, block_size: int = DEFAULT_BLOCK_BYTES) -> None:
        # Progress may be reported while the reader thread captures descriptor 2 (messages.py).
        self.writer, self.adapter, self.note = writer, adapter, note
        self.progress = between_captures(progress)
        self.reader: ReadAhead | None = None  # images read ahead (read_ahead.py), else read here
        self.read_process: ReadProcess | None = None  # small files read in a child (read_process.py)
        self.classical: dict[int, bool] = {}  # id() of an entry it read -> prefilter.record_clearly_pays
        self.triage = triage
        self.block_size = block_size
        self.solid: list[tuple[Entry, bool]] = []  # files for the solid blocks, and whether progress counted them
        self.block_counted: set[int] = set()  # of the blocks started early: ids of entries progress counted
        self.threads, self.cluster = threads, cluster
        self.byte_exact = byte_exact
        self.summary = Summary()
        self.group: list[tuple[Entry, ImageRecord]] = []
        self.group_subpixels = 0
        self.pending: list[tuple[Entry, ImageRecord, bool]] = []  # read, waiting for triage; cleared?
        self.pending_subpixels = 0
        self.pending_unclear = 0  # pending images that need θ0's pass
        # A frozen model's smaller images are judged after coding, by their own coded bits (triage.py).
        self.judge_after_coding = triage is not None and not adapter.config.adapt
        self.unjudged: set[int] = set()  # id() of the group's records to be judged so
        # A worker process (adapt/parts.py): it measures triage's samples and takes the first part
        # of each adapting batch; started early (compress) or once enough images are read.
        self.worker: PartWorker | None = None
        self.parts_allowed = False  # compress sets it: a second core
        self.parts_subpixels = 0  # the tiles' sub-pixels of the images read so far that it would take
        self.judged = TriageQueue(triage)  # judgements waiting to be carried out (_settle)
        self.settling = False

    def add(self, entry: Entry) -> None:
        if entry.kind == DIRECTORY:
            self._settle()
            Directory(entry.name, entry.mode, entry.mtime_ns).write(self.writer)
        elif entry.kind == SYMLINK:
            self._settle()
            Symlink(entry.name, entry.target).write(self.writer)
        elif entry.kind == FILE:
            self.summary.input_bytes += entry.size
            self.summary.files += 1
            record = self.reader.take(entry) if self.reader is not None and reads_ahead(entry) else self.read(entry)
            if record is None:
                self._general_file(entry)
            elif self.triage is None:
                self._queue_image(entry, record)
            elif self.judge_after_coding and self.triage.judged_by_coding(record):
                # Judged by its coded bits, unless triage's classical bound already clears it:
                # then nobody needs its bits, and the coding pass does not count them.
                if not self._clearly_pays(entry, record):
                    self.unjudged.add(id(record))
                self._settle()
                self._queue_image(entry, record)
            else:
                clear = self._clearly_pays(entry, record)
                self.pending.append((entry, record, clear))
                self.pending_subpixels += record.pixels.size
                self.pending_unclear += not clear
                if self.pending_unclear >= TRIAGE_IMAGES or self.pending_subpixels >= GROUP_SUBPIXELS:
                    self._decide_pending()

    def read(self, entry: Entry) -> ImageRecord | None:
        """The file's image record for the model path, or None (imaging.io.read_image); as the
        child process read it where one did (read_process.py)."""
        if self.read_process is not None:
            read = self.read_process.take(entry)
            if read is not None:
                if read.classical is not None:
                    self.classical[id(entry)] = read.classical
                return read.record
        return read_image(entry.source, self.byte_exact, pixels_in_file=True, note=self.note,
                          verbatim=writes_verbatim())

    def _clearly_pays(self, entry: Entry, record: ImageRecord) -> bool:
        return self.triage.clearly_pays(record, entry.source, entry.size, self.classical.pop(id(entry), None))

    def _decide_pending(self) -> None:
        """Triage the images read so far, together: each that pays joins the group, each that
        does not is stored as its file (from the packing triage made, if it made one).  With a
        worker, it measures θ0's samples while this thread reads on (triage_queue.py), and the
        verdicts are carried out later (``_settle``), exactly as they would be now."""
        pending, self.pending, self.pending_subpixels, self.pending_unclear = self.pending, [], 0, 0
        if not pending:
            return
        self.judged.judge(pending, self.worker)
        if not self.judged.waiting or self.judged.waiting_subpixels >= WAITING_SUBPIXELS:
            self._settle()

    def _settle(self) -> None:
        """Carry out every judgement's verdicts, oldest first, as if each had been carried out
        when it was made: before anything else is written or joins a group, and not within
        itself (a group that fills meanwhile is coded with the images carried out so far, as
        it would have been then).  The files that lose join self.solid later than they would
        have, which changes nothing: solid blocks order their files by type and name."""
        if self.settling or not self.judged:
            return
        self.settling = True
        try:
            for pending, verdicts in self.judged.take(self.worker):
                for (entry, record, _), verdict in zip(pending, verdicts):
                    if verdict.model:
                        self._queue_image(entry, record)
                        continue
                    if record.pixel_file is not None:
                        record.pixel_file.close()
                    self._general_file(entry, packed=verdict.packed)
        finally:
            self.settling = False

    def _general_file(self, entry: Entry, counted: bool = False, packed: Data | None = None) -> None:
        """A file off the model path: into a solid block (written at the end), or into a stream
        of its own if it is larger than a block or incompressible (solid.py says why).
        ``packed``: the file's one chunk as triage already packed it (for a stream of its own)."""
        raw = entry.size >= OWN_STREAM_MIN and incompressible(entry.source, entry.size)
        if self.block_size and entry.size <= self.block_size and not raw:
            self.solid.append((entry, counted))
            return
        self._settle()
        chunks = (entry.size + DATA_CHUNK_BYTES - 1) // DATA_CHUNK_BYTES
        FileEntry(entry.name, entry.mode, entry.mtime_ns, entry.size, chunks).write(self.writer)
        if packed is not None and chunks == 1:
            if self.progress and not counted:
                self.progress(entry.size)
            packed.write(self.writer)
            return
        try:
            for piece in file_pieces(entry, DATA_CHUNK_BYTES):
                if self.progress and not counted:
                    self.progress(len(piece))
                Data.packed(piece, try_xz=not raw).write(self.writer)
        except FileChanged as error:
            raise UsageError(str(error)) from None

    def start_blocks(self) -> BlockCoder:
        """Start coding the solid blocks of the files off the model path so far, on a helper
        thread (solid.BlockCoder), while the last image group codes.  Call after the last
        triage: files a group sends here after this go into blocks of their own."""
        self._decide_pending()
        self._settle()
        solid, self.solid = self.solid, []
        self.block_counted = {id(entry) for entry, counted in solid if counted}
        return BlockCoder(plan_blocks([entry for entry, _ in solid], self.block_size))

    def write_blocks(self, started: BlockCoder | None = None) -> None:
        """The solid blocks, after every image group (which may still send files here):
        those ``started`` codes (its caller closes it), then blocks of the files sent here since."""
        self._settle()
        counted = self.block_counted | {id(entry) for entry, was_counted in self.solid if was_counted}
        later = BlockCoder(plan_blocks([entry for entry, _ in self.solid], self.block_size)) if self.solid else None
        self.solid = []
        try:
            for coder in (started, later):
                for block in coder or ():
                    write_coded(self.writer, block)
                    uncounted = sum(entry.size for entry in block.members if id(entry) not in counted)
                    if self.progress and uncounted:
                        self.progress(uncounted)
                    self.summary.blocks += 1
        except FileChanged as error:
            raise UsageError(str(error)) from None
        finally:
            if later is not None:
                later.close()

    def _queue_image(self, entry: Entry, record: ImageRecord) -> None:
        channels = COLOR_CHANNELS[record.mode]
        if self.parts_allowed and self.worker is None and self.adapter.parts_would_take(channels):
            self.parts_subpixels += channels * math.prod(padded_size(*record.pixels.shape[:2]))  # its tiles'
            # Enough for the worker to pay: it starts now and loads beside the rest of the reading.
            if self.parts_subpixels >= PARTS_MIN_SUBPIXELS:
                self.worker = start_worker(self.adapter, decoding=False)
        self.group.append((entry, record))
        self.group_subpixels += record.pixels.size
        if self.group_subpixels >= GROUP_SUBPIXELS or len(self.group) >= MAX_GROUP_IMAGES:
            self.flush_images()

    def flush_images(self) -> None:
        if self.pending and not self.settling:
            self._decide_pending()  # may code full groups on the way
        self._settle()
        if not self.group:
            return
        group = self.group
        try:
            self._code_group()
        finally:
            for _, record in group:  # large images' pixel files
                if record.pixel_file is not None:
                    record.pixel_file.close()

    def _code_group(self, judged: bool = False) -> None:
        packed_table = ImageTable([image_entry(e.name, e.mode, e.mtime_ns, r) for e, r in self.group]).payload()
        # Views, not copies: gather() cuts tiles (and pads odd sides) from the pixels as they are
        # (a large image's from its file).
        colour = [_channels(r.pixels, slice(0, COLOR_CHANNELS[r.mode])) for _, r in self.group
                  if COLOR_CHANNELS[r.mode]]
        # Alpha planes (mostly flat or simple masks) and palette indices go beside
        # the model, xz-compressed (docs/FORMAT.md says why), on a helper thread while
        # the model codes (xz releases the GIL): the same bytes, off the critical path.
        side_planes = _SidePlanes([_channels(r.pixels, slice(-1, None)) for _, r in self.group
                                   if r.mode in AlphaPlanes.MODES],
                                  [r.pixels for _, r in self.group if r.mode in PaletteIndices.MODES])
        with side_planes:
            self._code_group_beside(packed_table, colour, side_planes, judged)

    def _code_group_beside(self, packed_table: bytes, colour: list, side_planes: "_SidePlanes",
                           judged: bool) -> None:
        config = self.adapter.config
        adapter = self.adapter
        before = adapter.snapshot()
        batches = plan_batches([c.shape for c in colour], config.tile_size, config.batch_size_for)
        group_bytes = sum(entry.size for entry, _ in self.group)
        if self.progress and not batches and not judged:
            self.progress(group_bytes)
        with _CodedBatches(self.group_subpixels) as store:
            keep = self._keeper(store, len(batches), group_bytes if not judged else 0)
            counted = self._batches_to_count(batches)
            if self.cluster is None:
                if len(split_runs(adapter.batches_seen, len(batches), config.segment_batches)) == 1:
                    # one run: the worker takes half of each batch it would take
                    self.judged.collect(self.worker)  # the worker's answers to triage, before it codes
                    attach(self.worker, adapter, subpixels_taken(batches, adapter.parts_would_take))
                coded, self.adapter = run_segments(adapter, batches, self._coder(colour, keep, counted),
                                                   self.threads, chain=adapter.batches_per_call)
            else:  # the same runs as tasks on a Dask cluster (osoa_zip/cluster.py)
                coded, self.adapter = self.cluster.encode(adapter, batches, lambda batch: gather(batch, colour), keep)
            if any(id(record) in self.unjudged for _, record in self.group) and self._drop_losers(batches, coded):
                adapter.restore(before)  # nothing was written: the rest is coded again, from here
                self.adapter = adapter
                if self.group:
                    self._code_group(judged=True)
                return
            group, self.group, self.group_subpixels = self.group, [], 0
            packed_alpha, packed_indices = side_planes.result()
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
            self.writer.write_chunk(ImageTable.TAG, packed_table)
            if packed_alpha:
                AlphaPlanes(packed_alpha).write(self.writer)
            if packed_indices:
                PaletteIndices(packed_indices).write(self.writer)
            for where, stats in coded:
                Batch(store.get(where)).write(self.writer)
                pause_point("compress-batch")  # test-only (pause.py)
                self.summary.batches.append(stats)
                self.summary.image_bits += stats.bits
        self.summary.images += len(group)
        self.summary.image_subpixels += sum(r.pixels.size for _, r in group if r.mode not in PaletteIndices.MODES)

    def _batches_to_count(self, batches: list) -> dict[int, np.ndarray]:
        """id() of each batch holding tiles of images to be judged by their coded bits, and which
        of its tiles are theirs (only those tiles' bits are counted)."""
        if not self.unjudged:
            return {}
        colour = [id(record) in self.unjudged for _, record in self.group if COLOR_CHANNELS[record.mode]]
        wanted = {id(batch): np.array([colour[image] for image, _, _ in batch.members]) for batch in batches}
        return {key: tiles for key, tiles in wanted.items() if tiles.any()}

    def _drop_losers(self, batches: list, coded: list) -> bool:
        """A frozen model's group, coded: triage judges each image left to it by the bits its
        tiles cost (sampled as usual where a batch did not count them); the images that lose
        leave the group for the general path.  Whether any did."""
        owners = [index for index, (_, record) in enumerate(self.group) if COLOR_CHANNELS[record.mode]]
        bits: list[float | None] = [0.0 if COLOR_CHANNELS[record.mode] else None for _, record in self.group]
        for batch, (_, stats) in zip(batches, coded):
            for (image, _, _), value in zip(batch.members, stats.tile_bits or [None] * len(batch.members)):
                owner = owners[image]
                bits[owner] = None if value is None or bits[owner] is None else bits[owner] + value
        judged = [index for index, (_, record) in enumerate(self.group) if id(record) in self.unjudged]
        self.unjudged -= {id(self.group[index][1]) for index in judged}
        items = [(self.group[index][1], self.group[index][0].source, self.group[index][0].size) for index in judged]
        verdicts = dict(zip(judged, self.triage.judge_coded(items, [bits[index] for index in judged])))
        if all(verdict.model for verdict in verdicts.values()):
            return False
        kept = []
        for index, (entry, record) in enumerate(self.group):
            verdict = verdicts.get(index)
            if verdict is None or verdict.model:
                kept.append((entry, record))
                continue
            if record.pixel_file is not None:
                record.pixel_file.close()
            self._general_file(entry, counted=True, packed=verdict.packed)  # counted as the group was coded
        self.group, self.group_subpixels = kept, sum(record.pixels.size for _, record in kept)
        return True

    @staticmethod
    def _coder(colour: list, keep, counted: dict[int, np.ndarray]):
        """What run_segments does per chain of batches: code them (counting the bits of the tiles
        ``counted`` names by their batch's id()), then ``keep`` them."""
        def code(segment_adapter: OnlineAdapter, chain: list) -> list:
            tiles = [gather(batch, colour) for batch in chain]
            counts = [counted.get(id(batch)) for batch in chain]
            return keep(segment_adapter.encode_chain(tiles, counts if any(c is not None for c in counts) else None))
        return code

    def _keeper(self, store: _CodedBatches, batch_count: int, group_bytes: int):
        """Keeps coded batches' bytes in the store and reports progress; returns [(where, stats)]."""
        def keep(coded: list) -> list:
            if self.progress and group_bytes:
                self.progress(group_bytes * len(coded) / batch_count)  # progress counts input bytes
            return [(store.put(data), stats) for data, stats in coded]
        return keep


def _early_worker(entries: list[Entry], model: str, adaptation: AdaptationConfig, bundle=None) -> PartWorker | None:
    """The worker, started before triage for sources with EARLY_WORKER_BYTES of image files or
    more, one of the first COLOUR_SAMPLE of them colour, whose settings adapt as a worker can
    share: forked once this process has loaded the model (``bundle``), or where it cannot
    fork, a process of its own started before that load, which it makes beside it.  Grey
    images alone do not start it: it would only measure their triage, which saved no time on
    gray32_2048 for 1.4x the CPU.  A model that cannot share batches still has its triage
    measured there."""
    images = [entry for entry in entries
              if entry.kind == FILE and os.path.splitext(entry.name)[1].lower() in LOSSLESS_SUFFIXES]
    if sum(entry.size for entry in images) < EARLY_WORKER_BYTES or not settings_share(adaptation):
        return None
    if not any(_may_hold_colour(entry) for entry in images[:COLOUR_SAMPLE]):
        return None
    found = available_models().get(model)
    if found is None:
        return None  # load_model says what is wrong
    return PartWorker(model, found["sha256"], adaptation.to_header(), decoding=False, bundle=bundle)


def _may_hold_colour(entry: Entry) -> bool:
    try:
        with open(entry.source, "rb") as handle:
            return may_hold_colour(handle.read(COLOUR_HINT_BYTES))
    except OSError:
        return False  # reading it later says what is wrong


def _channels(pixels, channels: slice):
    """Some channels of an image's H x W x C pixels: a view of the array, or of its PixelFile."""
    return pixels.channels(channels) if isinstance(pixels, PixelView) else pixels[:, :, channels]


class _SidePlanes:
    """A group's alpha planes and palette indices, xz-packed on a helper thread (``_packed_planes``)
    while the group codes; ``result()`` waits for them.  Leaving the ``with`` waits for the
    thread too (the planes may be views of pixel files the caller closes next)."""

    def __init__(self, alpha: list, indices: list) -> None:
        self._pool = None
        if not alpha and not indices:
            self._packed = None
            return
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osoa-planes")
        self._packed = self._pool.submit(lambda: (_packed_planes(alpha), _packed_planes(indices)))

    def result(self) -> tuple[bytes, bytes]:
        return (b"", b"") if self._packed is None else self._packed.result()

    def __enter__(self) -> "_SidePlanes":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


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
             warn: Warn = lambda message: None, byte_exact: bool = False, threads: int = 1,
             note: Note | None = None, triage: bool = True, excludes: Sequence[str] = (),
             cluster=None, block_size: int = DEFAULT_BLOCK_BYTES) -> Summary:
    """Archive the sources into ``output``.

    A source is a path (a directory contributes its contents, a file its name)
    or a (path, archive name) pair.  With segments, ``threads`` code them side
    by side, or ``cluster`` (osoa_zip.cluster.connect) codes them on a Dask
    cluster; the archive is the same for any number of threads or workers.
    Settings that ``adaptation`` leaves unset (or all, if None) are the model's
    defaults.  ``warn`` gets osoa-zip's own warnings; ``note`` what image libraries
    say about a file (one line each, naming it), which is otherwise dropped.  With
    ``triage`` (the default), each image takes the model path only if the frozen model's
    bits on a few samples of it beat its file, as the general path would pack it
    (triage.py); without, every image the model may code is grouped, and a group that
    codes larger than its files is stored as files.  Entries whose
    archive name matches one of ``excludes`` are left out, as tar --exclude does
    (files.scan.ExcludePatterns).  Files off the model path go into solid blocks of about
    ``block_size`` bytes (0: each file in a stream of its own; solid.py).  Image files of
    16 KiB or more are read on a helper thread ahead of triage and coding (read_ahead.py),
    the solid blocks and a group's side planes are xz-packed beside the coding, and with a
    second core a worker process measures triage's samples and takes half of each adapting
    batch (adapt/parts.py): none of it changes a byte.
    """
    started = time.perf_counter()
    if not 0 <= block_size <= MAX_BLOCK_BYTES:
        raise UsageError(f"the block size must be between 0 and {MAX_BLOCK_BYTES} bytes, not {block_size}")
    adaptation = adaptation_for(model, adaptation)
    try:
        entries = scan(list(sources), warn, _identity(output), ExcludePatterns(excludes))
    except SourceError as error:
        raise UsageError(str(error)) from None
    input_bytes = sum(entry.size for entry in entries if entry.kind == FILE)
    if progress is not None and hasattr(progress, "set_total"):
        progress.set_total(input_bytes)
    native.expect_compress(input_bytes)  # numba or not: the same bytes, less start-up for a small folder
    # With a second core, a worker process takes the first part of each adapting batch of
    # large groups (adapt/parts.py), and measures triage's samples: it starts now for a folder
    # of enough colour images, else once the images read hold enough work.
    beside = threads > 1 and cluster is None  # a second core for a worker process
    # Small files are read in a child process while this one imports torch (read_process.py).
    read_process = ReadProcess.start([entry for entry in entries if entry.kind == FILE and not reads_ahead(entry)],
                                     byte_exact, writes_verbatim(), note) if beside else None
    fork_worker = beside and can_fork()  # after the model loads (adapt/parts.py)
    worker = _early_worker(entries, model, adaptation) if beside and not fork_worker else None
    compressor = None
    try:
        bundle = load_model(model)
        if fork_worker:
            worker = _early_worker(entries, model, adaptation, bundle)
        writer = ArchiveWriter(output)
        Header(f"osoa-zip {__version__}", {"name": bundle.name, "sha256": bundle.sha256, "family": bundle.family},
               bundle.engine, adaptation.to_header()).write(writer)
        if triage:
            from .triage import Triage  # needs the engine (torch), as coding does
        compressor = _Compressor(writer, online_adapter(bundle, adaptation), progress, byte_exact, threads, note,
                                 Triage(bundle, adaptation) if triage else None, cluster, block_size)
        compressor.parts_allowed = beside
        compressor.worker = worker
        compressor.read_process = read_process
        # Files of some size are read as images on a helper thread, ahead of triage and coding
        # (read_ahead.py); small ones when the compressor comes to them.
        ahead = [entry for entry in entries if entry.kind == FILE and reads_ahead(entry)]
        with ReadAhead(ahead, compressor.read) as reader:
            compressor.reader = reader
            for entry in entries:
                compressor.add(entry)
            compressor.reader = None
        blocks = compressor.start_blocks() if block_size else None
        try:
            compressor.flush_images()
            compressor.write_blocks(blocks)
        finally:
            if blocks is not None:
                blocks.close()
    finally:
        if read_process is not None:
            read_process.close()
        running = compressor.worker if compressor is not None else worker
        if running is not None:
            running.close()
    for entry in entries:  # last, so that the file they name is always already restored
        if entry.kind == HARDLINK:
            Hardlink(entry.name, entry.target).write(writer)
    summary = compressor.summary
    # Bits and sizes only: timings would make identical inputs give different archives.
    Statistics([BatchRecord(s.bits, s.subpixels, s.flags) for s in summary.batches]).write(writer)
    writer.close()
    summary.seconds = time.perf_counter() - started
    return summary
