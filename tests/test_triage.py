"""Per-image triage (issue #17), on by default: an image takes the model path only if the
frozen model's bits on a few samples of it beat its file, as the general path would pack it;
decided before any group is coded."""
from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, MODEL, assert_same_tree
from PIL import Image

from osoa_zip import compress, decompress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.container.records import Data
from osoa_zip.imaging.io import read_image
from osoa_zip.imaging.tiles import padded_size
from osoa_zip.models.registry import load_model
from osoa_zip.table import read_table
from osoa_zip.triage import DEFLATED, MARGIN, SAMPLE_TILES, Triage, _sample

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
    with Image.open(EXAMPLES / "0001.png") as image:
        image.save(root / "smooth.png", compress_level=0)  # the tiny model beats its size, not its xz
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
    assert kinds["smooth.png"] == ("file", "solid")  # a file like any other: into a solid block
    assert summary.images == 1
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out")
    assert_same_tree(folder, tmp_path / "out")
    assert (tmp_path / "out" / "flat.png").read_bytes() == (folder / "flat.png").read_bytes()


def test_the_second_step_sets_the_model_against_the_file_as_the_general_path_packs_it(folder):
    triage = Triage(load_model(MODEL), CONFIG)
    path = folder / "smooth.png"
    record, size = read_image(path), path.stat().st_size
    assert triage.model_pays(record, size)  # it beats the file's own size ...
    (verdict,) = triage.judge([(record, path, size)])
    packed = Data.packed(path.read_bytes())
    assert not verdict.model and verdict.packed == packed  # ... not its xz, which is kept for storing it
    assert verdict.estimate > MARGIN * (len(packed.body) + 1)


def test_a_png_of_deflated_pixels_is_judged_without_packing_it(tmp_path):
    """xz is not paid for a PNG whose bytes zlib cannot shrink: its cost is taken as DEFLATED of
    its size, which its xz (on this photo) does not undercut; an uncompressed PNG is still packed."""
    triage = Triage(load_model(MODEL), CONFIG)
    with Image.open(EXAMPLES / "0006.png") as image:
        image.save(tmp_path / "deflated.png", compress_level=9)
        image.save(tmp_path / "stored.png", compress_level=0)
    deflated, stored = tmp_path / "deflated.png", tmp_path / "stored.png"
    verdicts = triage.judge([(read_image(path), path, path.stat().st_size) for path in (deflated, stored)])
    size = deflated.stat().st_size
    assert verdicts[0].packed is None and verdicts[0].model == (verdicts[0].estimate <= MARGIN * DEFLATED * size)
    assert len(Data.packed(deflated.read_bytes()).body) >= DEFLATED * size
    assert verdicts[1].packed == Data.packed(stored.read_bytes())


def test_images_judged_together_are_judged_as_alone(folder, tmp_path):
    """Samples of many images share passes through the model; each image's estimate is its own."""
    triage = Triage(load_model(MODEL), CONFIG)
    for index, (width, height) in enumerate([(40, 40), (17, 9), (64, 33), (1, 1)]):
        with Image.open(EXAMPLES / f"000{index}.png") as image:
            image.crop((0, 0, width, height)).save(tmp_path / f"{index}.png")
    records = [read_image(path) for path in sorted(tmp_path.glob("*.png"))]
    records += [read_image(folder / name) for name in ("flat.png", "photo.png", "smooth.png")]
    together = triage.estimates(records)
    alone = [triage.estimates([record])[0] for record in records]
    assert np.allclose(together, alone, rtol=1e-9) and len(set(together)) == len(together)


def test_triage_is_the_default(folder):
    """compress() without ``triage`` decides per image; triage=False codes every image the model
    can take (here as one group, which is stored as files if it codes larger)."""
    default, triaged, every = io.BytesIO(), io.BytesIO(), io.BytesIO()
    compress([folder], default, model=MODEL, adaptation=CONFIG)
    compress([folder], triaged, model=MODEL, adaptation=CONFIG, triage=True)
    compress([folder], every, model=MODEL, adaptation=CONFIG, triage=False)
    assert default.getvalue() == triaged.getvalue() != every.getvalue()


def test_the_command_line_decides_per_image_unless_told_every_image(folder, tmp_path):
    from osoa_zip.cli import main
    runner = CliRunner()
    listings = {}
    for flags in ((), ("--every-image",)):
        archive = tmp_path / f"out{len(flags)}.osoa"
        result = runner.invoke(main, ["compress", "-q", "--model", MODEL, "--tile-size", "16", "--batch-size", "4",
                                      "--batch-pixels", "0", *flags, str(folder), str(archive)])
        assert result.exit_code == 0, result.output
        listed = runner.invoke(main, ["list", str(archive)])
        assert listed.exit_code == 0
        listings[flags] = {line.split()[-1]: line for line in listed.output.splitlines() if ".png" in line}
        restored = tmp_path / f"restored{len(flags)}"
        assert runner.invoke(main, ["decompress", "-q", str(archive), str(restored)]).exit_code == 0
        assert_same_tree(folder, restored)
    assert "model" in listings[()]["photo.png"] and "model" not in listings[()]["flat.png"]
    assert "model" not in listings[()]["smooth.png"]
