"""Per image, before any coding: would the model path pay for it?  (On by default.)

Without it, an image group is coded whole and kept only if it codes smaller than its
files (issue #17: 220 s of a 226 s profile went to groups that were then stored as
files, and a photo the model would have coded 30% smaller went with its group's
majority).  Triage decides per image, as it is read, in two cheap steps:

1. the frozen model θ0 (no adaptation) measures its bits (the loss it adapts on,
   ``CodingModel.tile_bits``) on a few patches of at most SAMPLE_SIDE pixels a side,
   spread over the image (two, more for large images), and scales them to the whole
   image; the verbatim bytes the image would carry beside its pixels are added;
2. only if that beats the file's own size does the general path's cost of the file
   matter: the file is packed as the general path packs it (Data.packed: xz if
   smaller, else stored), and the model must beat that too.  The packing is kept
   for an image that loses and takes a stream of its own (``--block-size 0``).
   A PNG whose bytes zlib's fastest level cannot shrink is not packed: its
   general-path cost is taken as DEFLATED of its size (xz gains next to nothing on
   deflated pixels), so the xz that most model-path images would throw away is
   not paid for (~0.25 s of CPU on the mixed folder, benchmarks/mixed_folder.py).

An image that loses is stored as a file on its own; the rest of its group is coded
as before, and the group's own check (never larger than its files, pack.py) still
confirms the rest once they are coded.  Adaptation lowers the model's bits on
average, so θ0's estimate overstates what the coded image will cost: an image goes to
the general path only when θ0 loses by more than MARGIN.  The samples are small
(a forward pass over a whole 128-pixel tile costs about as much as coding it, which
is what triage saves), so the estimate is rough at the margin.  Images are judged
in batches (pack.py's TRIAGE_IMAGES): the samples of one shape from all of them go
through the model in one pass.
With a frozen model (no adaptation: -1, --no-adapt) the image's bits under θ0 are
exactly what coding it costs and do not depend on the other images, so pack.py
codes each group first and judges its smaller images (those whose sample would be at
least CODED_JUDGE_SHARE of them: all of a 32 x 32 tile, half of a 64 x 64 one) by the
bits the coding pass counted, tile by tile (``judge_coded``): step 1 costs them no pass
of its own.
Before step 1, a classical bound (prefilter.py: MED residuals' entropy, integers only) sends
a small image whose deflated file it already beats by a clear margin to the model path with
no pass of θ0 at all; the group's check still confirms it once coded.  Images it clears do
not count towards pack.py's TRIAGE_IMAGES, so θ0's passes hold only the images it does not.
Judging is cut in two (``begin``, then ``Judging.verdicts``) so that θ0's passes over the
samples can run elsewhere meanwhile: with a second core compress has its worker process
measure them (triage_queue.py, ``models.protocol.tile_bits_of``: the same bits).
Nothing here changes the format: an image stored as a file is a FILE entry like any
other, and every decision is deterministic (the same files give the same archive).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adapt.engine import AdaptationConfig
from .container.records import DATA_CHUNK_BYTES, Data
from .imaging.io import COLOR_CHANNELS, ImageRecord
from .imaging.pixel_file import PixelView
from .imaging.tiles import Batch, gather, padded_size
from .models.protocol import tile_bits_of
from .prefilter import DEFLATED_SHARE, TABLE_ENTRY_BYTES, record_clearly_pays

SAMPLE_TILES = 8        # at most; two, and one more per SAMPLE_AREA pixels of the image
SAMPLE_AREA = 256 * 256
PASS_TILES = 64         # sample tiles per pass through the model (bounded memory)
SAMPLE_SIDE = 32        # patches of at most this side
# A frozen archive judges an image by its coded bits when its sample is at least this share of
# it: counting every tile's bits from the coding pass's factors costs ~1/5 of that pass, less
# than a pass over samples of a quarter of the image (a 64 x 64 tile's two samples: half).
CODED_JUDGE_SHARE = 0.25
MARGIN = 1.1            # the model path is given up only when θ0's estimate exceeds the file's cost by this
DEFLATED = DEFLATED_SHARE[0] / DEFLATED_SHARE[1]


@dataclass
class Verdict:
    """Whether an image takes the model path; if not, maybe its file already packed for the general path."""
    model: bool
    estimate: float = 0.0
    packed: Data | None = None


class Triage:
    """Estimates images' model-path bytes with θ0 on a few small patches of each, many images at once."""

    def __init__(self, bundle, config: AdaptationConfig) -> None:
        self._bundle = bundle
        self._side = min(SAMPLE_SIDE, config.tile_size)

    def estimates(self, records: list[ImageRecord]) -> list[float]:
        """θ0's bytes for each image's colour channels, from a sample of it, plus what it keeps
        beside them verbatim (alpha planes and palette indices go beside the model and are not
        counted).  Samples of one shape from all the images go through the model together
        (CodingModel.tile_bits): a pass costs ~20 ms however few tiles it holds."""
        samples = _Samples(records, self._side)
        return samples.estimates([self.measure(channels, tiles) for channels, tiles in samples.passes])

    def measure(self, channels: int, tiles: np.ndarray) -> np.ndarray:
        """θ0's bits of each of one pass's ``tiles`` (N x C x h x w uint8), here (float64; the
        worker of adapt/parts.py measures the same values with ``tile_bits_of``)."""
        return tile_bits_of(self._bundle.network(channels), tiles)

    def judge(self, items: list[tuple[ImageRecord, Path, int]], clear: list[bool] | None = None) -> list[Verdict]:
        """For each (image, its file's path, its size): whether it should take the model path
        rather than be stored as its file (then with the file's packing, if deciding needed it).
        ``clear``: for each, ``clearly_pays`` if the caller asked it already."""
        return self.judge_coded(items, [None] * len(items), clear)

    def judged_by_coding(self, record: ImageRecord) -> bool:
        """Whether a frozen archive judges this image by its coded bits (``judge_coded``) rather
        than by samples: when counting all of its bits costs less than coding its samples."""
        channels = COLOR_CHANNELS[record.mode]
        if not channels:
            return True  # nothing to sample: palette images take the model path
        height, width = record.pixels.shape[:2]
        sample = _sample(height, width, channels, self._side)
        return len(sample.members) * sample.height * sample.width >= CODED_JUDGE_SHARE * height * width

    def judge_coded(self, items: list[tuple[ImageRecord, Path, int]], bits: list[float | None],
                    clear: list[bool] | None = None) -> list[Verdict]:
        """``judge`` for images whose bits under θ0 are known exactly (a frozen model's coding
        pass counted them tile by tile): nothing is coded again.  None: not known, sampled as
        ``judge`` does, unless the classical bound clears the image (``clearly_pays``, or
        ``clear`` if given)."""
        judging = self.begin(items, bits, clear)
        return judging.verdicts([self.measure(channels, tiles) for channels, tiles in judging.passes])

    def begin(self, items: list[tuple[ImageRecord, Path, int]], bits: list[float | None] | None = None,
              clear: list[bool] | None = None) -> "Judging":
        """``judge_coded`` up to θ0's passes: the images cleared, the samples cut.  The caller
        measures ``Judging.passes`` here (``measure``) or has another process measure them
        (adapt/parts.py, ``tile_bits_of`` on the same model: the same bits), then asks for
        the verdicts."""
        bits = [None] * len(items) if bits is None else bits
        unknown = [index for index, value in enumerate(bits) if value is None]
        cleared = {index for index in unknown
                   if (clear[index] if clear is not None else self.clearly_pays(*items[index]))}
        unknown = [index for index in unknown if index not in cleared]
        return Judging(items, bits, cleared, unknown, _Samples([items[index][0] for index in unknown], self._side))

    def clearly_pays(self, record: ImageRecord, path: Path, size: int, classical: bool | None = None) -> bool:
        """Whether a small image's classical bound already beats its deflated file by a clear
        margin (prefilter.py): then it takes the model path without θ0's pass.  ``classical``:
        ``prefilter.record_clearly_pays`` of it, if already worked out."""
        channels = COLOR_CHANNELS[record.mode]
        if not channels or isinstance(record.pixels, PixelView) or not self.judged_by_coding(record):
            return False
        return record_clearly_pays(record, path, size) if classical is None else classical

    @staticmethod
    def verdict(record: ImageRecord, path: Path, size: int, estimate: float) -> Verdict:
        if not COLOR_CHANNELS[record.mode]:
            return Verdict(True, estimate)  # palette images: their index plane is xz'd either way
        if estimate > MARGIN * size:
            return Verdict(False, estimate)
        if size > DATA_CHUNK_BYTES:
            return Verdict(True, estimate)  # a file of several DATA chunks: its size stands for its cost
        with open(path, "rb") as handle:
            data = handle.read(DATA_CHUNK_BYTES + 1)
        if len(data) != size:
            return Verdict(False, estimate)  # it changed since it was read: the general path says so
        if record.format == "PNG" and len(zlib.compress(data, 1)) > DEFLATED * len(data):
            # Its pixels are deflated already: xz would gain at most a few percent (on the mixed
            # folder, 109 such PNGs: xz kept 98.3-100% of each), so it is not paid for here.
            return Verdict(estimate <= MARGIN * DEFLATED * size, estimate)
        packed = Data.packed(data)
        return Verdict(estimate <= MARGIN * (len(packed.body) + 1), estimate, packed)

    def model_pays(self, record: ImageRecord, size: int) -> bool:
        """Whether the image beats its file's size (the first step of ``judge`` alone)."""
        return not COLOR_CHANNELS[record.mode] or self.estimates([record])[0] <= MARGIN * size


class _Samples:
    """Each image's sample tiles, stacked by shape and cut into θ0's passes."""

    def __init__(self, records: list[ImageRecord], side: int) -> None:
        self.records = records
        self.sample_size = [0] * len(records)
        sampled: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        for index, record in enumerate(records):
            channels = COLOR_CHANNELS[record.mode]
            if channels:
                pixels = record.pixels
                colour = (pixels.channels(slice(0, channels)) if isinstance(pixels, PixelView)
                          else pixels[:, :, :channels])
                tiles = gather(_sample(colour.shape[0], colour.shape[1], channels, side), [colour])
                sampled.setdefault(tiles.shape[1:], []).append((index, tiles))
                self.sample_size[index] = tiles.size
        self.passes: list[tuple[int, np.ndarray]] = []  # (channels, N x C x h x w tiles), at most PASS_TILES
        self._owners: list[int] = []  # each tile's image, in the passes' order
        for shape, items in sampled.items():
            stacked = np.concatenate([tiles for _, tiles in items])
            self.passes += [(shape[0], stacked[start:start + PASS_TILES])
                            for start in range(0, len(stacked), PASS_TILES)]
            self._owners += [index for index, tiles in items for _ in range(len(tiles))]

    def estimates(self, measured: list[np.ndarray]) -> list[float]:
        """Each image's estimate (``Triage.estimates``) from each pass's tile bits."""
        bits = [0.0] * len(self.records)
        for owner, value in zip(self._owners, np.concatenate(measured).tolist() if measured else []):
            bits[owner] += value
        return [_estimate(record, bits[index], self.sample_size[index]) for index, record in enumerate(self.records)]


@dataclass
class Judging:
    """``Triage.begin``'s images, cleared and sampled, waiting for θ0's bits of their samples."""
    items: list
    bits: list
    cleared: set
    unknown: list
    samples: _Samples

    @property
    def passes(self) -> list[tuple[int, np.ndarray]]:
        """(channels, tiles) per pass of θ0 (``tile_bits``) that the verdicts need."""
        return self.samples.passes

    def verdicts(self, measured: list[np.ndarray]) -> list[Verdict]:
        """Each image's verdict, given each of ``passes``' tile bits."""
        sampled = dict(zip(self.unknown, self.samples.estimates(measured))) if self.unknown else {}
        verdicts = []
        for index, ((record, path, size), value) in enumerate(zip(self.items, self.bits)):
            if index in self.cleared:
                verdicts.append(Verdict(True))
                continue
            estimate = sampled[index] if value is None else _estimate(record, value, _colour_subpixels(record))
            verdicts.append(Triage.verdict(record, path, size, estimate))
        return verdicts


def _colour_subpixels(record: ImageRecord) -> int:
    height, width = record.pixels.shape[:2]
    return height * width * COLOR_CHANNELS[record.mode]


def _estimate(record: ImageRecord, bits: float, sample_size: int) -> float:
    """An image's model-path bytes: its sample's bits scaled to its colour sub-pixels, plus its
    share of the table and the bytes it keeps verbatim beside its pixels."""
    side_bytes = len(record.verbatim) + len(record.png_before) + len(record.png_after)
    if not sample_size:
        return float(side_bytes)
    height, width = record.pixels.shape[:2]
    return bits / 8 * (height * width * COLOR_CHANNELS[record.mode]) / sample_size + TABLE_ENTRY_BYTES + side_bytes


def _sample(height: int, width: int, channels: int, tile: int) -> Batch:
    """Whole tiles of one shape, spread evenly over the image in raster order: two, one more per
    SAMPLE_AREA pixels, at most SAMPLE_TILES (an image smaller than a tile is one tile, padded as
    the encoder pads it).  On the mixed folder (benchmarks/mixed_folder.py) two tiles of 32 x 32
    decided all 156 images as four did, for 1.6 s of CPU instead of 2.5."""
    count = min(SAMPLE_TILES, 2 + height * width // SAMPLE_AREA)
    padded_height, padded_width = padded_size(height, width)
    tile_height, tile_width = min(tile, padded_height), min(tile, padded_width)
    places = [(y, x) for y in range(0, padded_height - tile_height + 1, tile)
              for x in range(0, padded_width - tile_width + 1, tile)]
    if len(places) <= count:  # every place (what the spread below gives then, without numpy's call)
        chosen = range(len(places))
    else:
        chosen = sorted({int(i) for i in np.linspace(0, len(places) - 1, count).round()})
    return Batch(channels, tile_height, tile_width, [(0, *places[i]) for i in chosen])
