"""Cut images into tiles and group same-shaped tiles into batches.

The plan depends only on the images' shapes, the tile size and the batch
size, all of which the archive records, so the decoder rebuilds the same
batches before it has decoded a single pixel.  Odd sides are padded by one
replicated row/column because the flow halves each side per level.

The padding is never made for a whole image: gather() replicates the edge of
the few tiles that reach past it (the last row and column of tiles), so the
encoder holds each image once, unpadded (docs/SECURITY.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Batch:
    channels: int
    height: int
    width: int
    members: list[tuple[int, int, int]] = field(default_factory=list)  # (image, y, x)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.members), self.channels, self.height, self.width)


def padded_size(height: int, width: int) -> tuple[int, int]:
    return height + height % 2, width + width % 2


def pad_even(pixels: np.ndarray) -> np.ndarray:
    height, width = padded_size(*pixels.shape[:2])
    return np.pad(pixels, ((0, height - pixels.shape[0]), (0, width - pixels.shape[1]), (0, 0)), mode="edge")


def plan_batches(shapes: list[tuple[int, int, int]], tile: int,
                 batch_size: int | Callable[[int, int, int], int]) -> list[Batch]:
    """shapes: (height, width, channels) per image, in archive order.

    batch_size is a number, or a function of a tile's (height, width, channels)
    giving how many such tiles go in one batch (AdaptationConfig.batch_size_for).
    """
    size_for = batch_size if callable(batch_size) else (lambda height, width, channels: batch_size)
    groups: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for index, (height, width, channels) in enumerate(shapes):
        height, width = padded_size(height, width)
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                key = (channels, min(tile, height - y), min(tile, width - x))
                groups.setdefault(key, []).append((index, y, x))
    batches = []
    for (channels, height, width), members in groups.items():
        size = size_for(height, width, channels)
        for start in range(0, len(members), size):
            batches.append(Batch(channels, height, width, members[start:start + size]))
    return batches


def edge_tile(pixels: np.ndarray, y: int, x: int, height: int, width: int) -> np.ndarray:
    """The height x width tile at (y, x) of pad_even(pixels), cut from the unpadded pixels:
    the one row/column past an odd side repeats the last one, as pad_even would."""
    tile = pixels[y:y + height, x:x + width]
    missing_rows, missing_columns = height - tile.shape[0], width - tile.shape[1]
    if missing_rows or missing_columns:
        tile = np.pad(tile, ((0, missing_rows), (0, missing_columns), (0, 0)), mode="edge")
    return tile


def gather(batch: Batch, images: list[np.ndarray]) -> np.ndarray:
    """The batch's tiles from H x W x C images (padded or not), as B x C x h x w uint8."""
    tiles = [edge_tile(images[i], y, x, batch.height, batch.width) for i, y, x in batch.members]
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2))


def scatter(batch: Batch, tiles: np.ndarray, images: list[np.ndarray]) -> None:
    for (i, y, x), tile in zip(batch.members, tiles):
        images[i][y:y + batch.height, x:x + batch.width] = tile.transpose(1, 2, 0)
