"""Per image, before any coding: would the model path pay for it?

An image group is coded whole and kept only if it codes smaller than its files; a
group that does not is thrown away whole (issue #17: 220 s of a 226 s profile went
to groups that were then stored as files, and a photo the model would have coded
30% smaller went with its group's majority).  Triage decides per image, as it is
read: the frozen model (θ0, no adaptation, no guard) codes up to SAMPLE_TILES of
the image's tiles exactly as the encoder would, and the bits it spends, scaled to
the whole image, are set against the file's size, as the group's own check does
(what the general path costs is the file's business: its own xz today, a share of
a solid block later).  An image that loses is stored as a file on its own;
the group's own check still confirms the rest once they are coded.

Adaptation lowers the model's bits on average, so θ0's estimate overstates what the
coded image will cost: an image goes to the general path only when θ0 loses by more
than MARGIN.  Nothing here changes the format: an image stored as
a file is a FILE entry like any other, and the decision is deterministic.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .adapt.engine import AdaptationConfig, OnlineAdapter
from .imaging.io import COLOR_CHANNELS, ImageRecord
from .imaging.pixel_file import PixelView
from .imaging.tiles import Batch, gather, padded_size

SAMPLE_TILES = 4
MARGIN = 1.1            # the model path is given up only when θ0's estimate exceeds the file's cost by this
TABLE_ENTRY_BYTES = 24  # an image's share of its group's xz'd table, roughly


class Triage:
    """Estimates an image's model-path bytes with θ0 on a few of its tiles."""

    def __init__(self, bundle, config: AdaptationConfig) -> None:
        frozen = dataclasses.replace(config, adapt=False, guard=False, segment_batches=0, chain_batches=1)
        self._adapter = OnlineAdapter(bundle, frozen)
        self._tile = config.tile_size

    def estimate(self, record: ImageRecord) -> float:
        """θ0's bytes for the image's colour channels, from a sample of its tiles (the alpha plane
        and palette indices go beside the model and are not counted)."""
        channels = COLOR_CHANNELS[record.mode]
        if not channels:
            return 0.0
        pixels = record.pixels
        colour = pixels.channels(slice(0, channels)) if isinstance(pixels, PixelView) else pixels[:, :, :channels]
        tiles = gather(_sample(colour.shape[0], colour.shape[1], channels, self._tile), [colour])
        _, statistics = self._adapter.encode(tiles)
        height, width = colour.shape[:2]
        return statistics.bits / 8 * (height * width * channels) / tiles.size + TABLE_ENTRY_BYTES

    def model_pays(self, record: ImageRecord, size: int) -> bool:
        """Whether the image of a ``size``-byte file should take the model path rather than be
        stored as its file."""
        if not COLOR_CHANNELS[record.mode]:
            return True  # palette images: their index plane is xz'd either way
        return self.estimate(record) <= MARGIN * size


def _sample(height: int, width: int, channels: int, tile: int) -> Batch:
    """Up to SAMPLE_TILES whole tiles of one shape, spread evenly over the image in raster order
    (an image smaller than a tile is one tile, padded as the encoder pads it)."""
    padded_height, padded_width = padded_size(height, width)
    tile_height, tile_width = min(tile, padded_height), min(tile, padded_width)
    places = [(y, x) for y in range(0, padded_height - tile_height + 1, tile)
              for x in range(0, padded_width - tile_width + 1, tile)]
    chosen = sorted({int(i) for i in np.linspace(0, len(places) - 1, min(SAMPLE_TILES, len(places))).round()})
    return Batch(channels, tile_height, tile_width, [(0, *places[i]) for i in chosen])
