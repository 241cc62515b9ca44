"""Tiling and batching: the decoder must rebuild the encoder's batches from shapes alone.

If a padded pixel were coded twice or never, or the decoder's plan differed
from the encoder's, images would come back wrong (or not at all).
"""
from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from osoa_zip.adapt.parts import subpixels_taken
from osoa_zip.imaging.tiles import edge_tile, gather, pad_even, padded_size, plan_batches, scatter

shapes_st = st.lists(st.tuples(st.integers(1, 45), st.integers(1, 45), st.sampled_from([1, 3])),
                     min_size=0, max_size=7)
tiles_st = st.integers(1, 20).map(lambda k: 2 * k)  # the CLI and the engine require even tiles
batch_sizes_st = st.integers(1, 9)


def padded_images(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [pad_even(rng.integers(0, 256, (h, w, c), dtype=np.uint8)) for h, w, c in shapes]


@settings(max_examples=150, deadline=None)
@given(shapes_st, tiles_st, batch_sizes_st)
def test_every_padded_pixel_is_covered_exactly_once(shapes, tile, batch_size):
    coverage = [np.zeros(padded_size(h, w), dtype=np.int32) for h, w, _ in shapes]
    for batch in plan_batches(shapes, tile, batch_size):
        for image, y, x in batch.members:
            assert batch.channels == shapes[image][2], "tile batched with images of another channel count"
            assert y + batch.height <= coverage[image].shape[0] and x + batch.width <= coverage[image].shape[1]
            coverage[image][y:y + batch.height, x:x + batch.width] += 1
    for index, counts in enumerate(coverage):
        assert counts.min() == 1 and counts.max() == 1, f"image {index} {shapes[index]}"


@settings(max_examples=150, deadline=None)
@given(shapes_st, tiles_st, batch_sizes_st)
def test_batches_are_uniform(shapes, tile, batch_size):
    """One tile shape per batch, even sides (the flow halves them), at most batch_size tiles,
    and only the last batch of each tile shape may be short."""
    batches = plan_batches(shapes, tile, batch_size)
    by_shape: dict = {}
    for batch in batches:
        assert 1 <= len(batch.members) <= batch_size
        assert batch.height % 2 == 0 and batch.width % 2 == 0
        assert 2 <= batch.height <= tile and 2 <= batch.width <= tile
        assert batch.shape == (len(batch.members), batch.channels, batch.height, batch.width)
        by_shape.setdefault((batch.channels, batch.height, batch.width), []).append(len(batch.members))
    for sizes in by_shape.values():
        assert all(size == batch_size for size in sizes[:-1])


@settings(max_examples=100, deadline=None)
@given(shapes_st, tiles_st, batch_sizes_st, st.integers(0, 2 ** 32 - 1))
def test_gather_scatter_round_trip(shapes, tile, batch_size, seed):
    """Gathering every batch and scattering it into blank images rebuilds the padded images."""
    images = padded_images(shapes, seed)
    rebuilt = [np.zeros_like(image) for image in images]
    for batch in plan_batches(shapes, tile, batch_size):
        tiles = gather(batch, images)
        assert tiles.shape == batch.shape and tiles.dtype == np.uint8 and tiles.flags.c_contiguous
        scatter(batch, tiles.copy(), rebuilt)
    for original, copy in zip(images, rebuilt):
        assert np.array_equal(original, copy)


@settings(max_examples=100, deadline=None)
@given(shapes_st, tiles_st, batch_sizes_st, st.integers(0, 2 ** 32 - 1))
def test_gather_from_unpadded_images_equals_gather_from_padded(shapes, tile, batch_size, seed):
    """The encoder no longer pads whole images (np.pad copies every one): tiles cut from the
    unpadded pixels, edge-replicated past an odd side, are the tiles of the padded image."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, c), dtype=np.uint8) for h, w, c in shapes]
    padded = [pad_even(image) for image in images]
    for batch in plan_batches(shapes, tile, batch_size):
        assert np.array_equal(gather(batch, images), gather(batch, padded))


def test_edge_tile_is_a_view_inside_the_image():
    """Tiles that do not reach past the image are not copied (only the last row/column pads)."""
    pixels = np.zeros((5, 7, 3), np.uint8)
    assert np.shares_memory(edge_tile(pixels, 0, 0, 4, 4), pixels)
    corner = edge_tile(pixels, 4, 4, 2, 4)
    assert corner.shape == (2, 4, 3) and not np.shares_memory(corner, pixels)


@settings(max_examples=100, deadline=None)
@given(shapes_st, tiles_st, batch_sizes_st)
def test_decoder_plan_equals_encoder_plan(shapes, tile, batch_size):
    """The encoder plans from pixel arrays, the decoder from the IMGS table it reads back (JSON)."""
    images = padded_images(shapes)
    originals = [image[:h, :w] for image, (h, w, _) in zip(images, shapes)]
    encoder_plan = plan_batches([pixels.shape for pixels in originals], tile, batch_size)
    table = json.loads(json.dumps([{"height": p.shape[0], "width": p.shape[1], "mode": "L" if p.shape[2] == 1
                                    else "RGB"} for p in originals]))
    decoder_plan = plan_batches([(e["height"], e["width"], {"L": 1, "RGB": 3}[e["mode"]]) for e in table],
                                tile, batch_size)
    as_tuples = lambda plan: [(b.channels, b.height, b.width, list(b.members)) for b in plan]  # noqa: E731
    assert as_tuples(decoder_plan) == as_tuples(encoder_plan)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.sampled_from([1, 3]), st.integers(0, 2 ** 32 - 1))
def test_pad_even_replicates_the_edge(height, width, channels, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    padded = pad_even(pixels)
    assert padded.shape == (*padded_size(height, width), channels)
    assert padded.shape[0] % 2 == 0 and padded.shape[1] % 2 == 0
    assert padded.shape[0] - height <= 1 and padded.shape[1] - width <= 1
    assert np.array_equal(padded[:height, :width], pixels)
    if height % 2:
        assert np.array_equal(padded[height, :width], pixels[-1])
    if width % 2:
        assert np.array_equal(padded[:height, width], pixels[:, -1])


def test_plan_of_known_shapes():
    """A hand-checked example: a 31x17 RGB image (padded 32x18) in 16-pixel tiles."""
    batches = plan_batches([(31, 17, 3), (1, 1, 1)], tile=16, batch_size=4)
    assert [(b.shape, b.members) for b in batches] == [
        ((2, 3, 16, 16), [(0, 0, 0), (0, 16, 0)]),
        ((2, 3, 16, 2), [(0, 0, 16), (0, 16, 16)]),
        ((1, 1, 2, 2), [(1, 0, 0)]),
    ]


@given(shapes_st, tiles_st, batch_sizes_st)
@settings(max_examples=200, deadline=None)
def test_the_compressors_running_count_is_what_the_plans_batches_hold(shapes, tile, batch_size):
    """compress starts the worker on a running count of sub-pixels (channels x padded area of each
    image read, pack.py); the group then attaches it by what the plan's batches hold
    (parts.subpixels_taken).  The two are the same after every image."""
    running = 0
    for index, (height, width, channels) in enumerate(shapes):
        running += channels * math.prod(padded_size(height, width))
        planned = plan_batches(shapes[:index + 1], tile, batch_size)
        assert running == subpixels_taken(planned, lambda channels: True)
