"""Per-image triage (issue #17): an image takes the model path only if the frozen model's
bits on a few of its tiles beat its file; decided before any group is coded."""
from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import EXAMPLES, MODEL, assert_same_tree
from PIL import Image

from osoa_zip import compress, decompress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.imaging.io import read_image
from osoa_zip.imaging.tiles import padded_size
from osoa_zip.models.registry import load_model
from osoa_zip.table import read_table
from osoa_zip.triage import SAMPLE_TILES, Triage, _sample

CONFIG = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0)


@pytest.mark.parametrize("height, width", [(1, 1), (5, 9), (16, 16), (33, 17), (64, 64), (401, 533)])
def test_samples_are_whole_tiles_of_one_shape_inside_the_image(height, width):
    batch = _sample(height, width, 3, 16)
    padded_height, padded_width = padded_size(height, width)
    assert 1 <= len(batch.members) <= SAMPLE_TILES and len(set(batch.members)) == len(batch.members)
    assert batch.height == min(16, padded_height) and batch.width == min(16, padded_width)
    assert all(y + batch.height <= padded_height and x + batch.width <= padded_width for _, y, x in batch.members)
    assert _sample(height, width, 3, 16) == batch  # deterministic


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("triage") / "src"
    root.mkdir()
    flat = np.zeros((64, 64, 3), np.uint8)
    flat[:32] = 200
    Image.fromarray(flat).save(root / "flat.png")  # ~130 bytes: no model codes it smaller
    with Image.open(EXAMPLES / "0006.png") as image:
        image.save(root / "photo.png", compress_level=0)  # uncompressed: even the tiny model beats it and its xz
    (root / "notes.txt").write_text("text\n" * 10)
    return root


def test_triage_tells_a_flat_synthetic_image_from_a_photo(folder):
    triage = Triage(load_model(MODEL), CONFIG)
    for name, pays in (("flat.png", False), ("photo.png", True)):
        path = folder / name
        assert triage.model_pays(read_image(path), path.stat().st_size) is pays, name


def test_an_image_that_loses_is_stored_as_its_file_and_the_rest_takes_the_model(folder, tmp_path):
    output = io.BytesIO()
    summary = compress([folder], output, model=MODEL, adaptation=CONFIG, triage=True)
    _, entries = read_table(io.BytesIO(output.getvalue()))
    kinds = {entry.name: (entry.kind, entry.method) for entry in entries}
    assert kinds["flat.png"][0] == "file" and kinds["photo.png"] == ("image", "model")
    assert summary.images == 1
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out")
    assert_same_tree(folder, tmp_path / "out")
    assert (tmp_path / "out" / "flat.png").read_bytes() == (folder / "flat.png").read_bytes()
