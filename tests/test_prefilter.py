"""Triage's classical prefilter (prefilter.py): small images whose MED-residual entropy already
beats their deflated file by a clear margin take the model path without θ0's pass; the rest are
judged by θ0 as before.  Decisions are integer-only, so the same files give the same archive."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from conftest import EXAMPLES, MODEL, assert_same_tree
from PIL import Image

from osoa_zip import compress, decompress, prefilter
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.defaults import adaptation_for
from osoa_zip.imaging.io import read_image
from osoa_zip.models.catalog import DEFAULT_MODEL
from osoa_zip.models.registry import load_model
from osoa_zip.prefilter import FRACTION_BITS, classical_bits, log2_fixed
from osoa_zip.table import read_table
from osoa_zip.triage import Triage

CONFIG = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0)


def test_the_integer_log2_is_log2_to_within_one_unit_below():
    values = np.arange(1, 70000)
    fixed = log2_fixed(values)
    exact = np.array([math.log2(value) for value in values.tolist()]) * (1 << FRACTION_BITS)
    assert fixed.dtype == np.int64
    assert ((exact - fixed) >= -1e-6).all() and ((exact - fixed) < 1.01).all()
    assert (np.diff(fixed) >= 0).all()
    assert log2_fixed(np.array([1, 2, 1024, 1 << 31])).tolist() == [0, 1 << 16, 10 << 16, 31 << 16]
    with pytest.raises(ValueError):
        log2_fixed(np.array([0]))


def _photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    with Image.open(EXAMPLES / name) as image:
        pixels = np.asarray(image.convert("RGB") if image.mode != "L" else image)
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    return pixels if size is None else pixels[:size[0], :size[1]]


def test_the_bound_is_an_entropy_with_a_floor():
    flat = np.full((32, 32, 3), 77, np.uint8)
    assert classical_bits(flat) == (3 * flat.size << FRACTION_BITS) // 2  # 1.5 bits a sub-pixel
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    assert classical_bits(noise) > (7 * noise.size) << FRACTION_BITS  # ~8 bits a sub-pixel
    photo = _photo("0000.png")
    assert classical_bits(photo) == classical_bits(photo.copy())  # integers: deterministic
    # green first, red and blue as differences: a grey picture in RGB costs its grey plane plus
    # two planes of zero residuals
    grey = _photo("0006.png")
    tripled = np.repeat(grey, 3, axis=2)
    assert classical_bits(tripled) == max(classical_bits(grey), (3 * tripled.size << FRACTION_BITS) // 2)


def _plane_by_plane(colour: np.ndarray) -> int:
    """The bound spelled out one plane at a time (MED's median of left, up and left + up - corner;
    the first row from the left, the first column from above; the entropy of each plane's
    residuals mod 256), for the all-planes-at-once implementation to match."""
    pixels = colour.astype(np.int64)
    planes = ([pixels[:, :, 1], pixels[:, :, 0] - pixels[:, :, 1], pixels[:, :, 2] - pixels[:, :, 1]]
              if pixels.shape[2] == 3 else [pixels[:, :, 0]])
    bits = 0
    for plane in planes:
        height, width = plane.shape
        residuals = np.zeros(256, dtype=np.int64)
        for y in range(height):
            for x in range(width):
                if y == 0 and x == 0:
                    predicted = 0
                elif y == 0:
                    predicted = plane[0, x - 1]
                elif x == 0:
                    predicted = plane[y - 1, 0]
                else:
                    left, up, corner = plane[y, x - 1], plane[y - 1, x], plane[y - 1, x - 1]
                    predicted = max(min(left, up), min(max(left, up), left + up - corner))
                residuals[(plane[y, x] - predicted) & 255] += 1
        used = residuals[residuals > 0]
        total = int(used.sum())
        bits += int((used * (log2_fixed(np.array([total]))[0] - log2_fixed(used))).sum())
    return max(bits, (3 * pixels.size << FRACTION_BITS) // 2)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 9, 1), (7, 1, 3), (13, 17, 3), (32, 32, 1), (24, 20, 3)])
def test_the_bound_is_the_per_plane_definition(shape):
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    ramp = ((np.add.outer(np.arange(shape[0]), 3 * np.arange(shape[1]))[:, :, None] + rng.integers(0, 9, shape))
            % 256).astype(np.uint8)
    for pixels in (noise, ramp, _photo("0000.png")[:shape[0], :shape[1], :shape[2]]):
        assert classical_bits(pixels) == _plane_by_plane(pixels)


def _save(path, pixels, **options):
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path, **options)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Deflated photos (clear winners), and images the model loses or that need θ0's pass."""
    root = tmp_path_factory.mktemp("prefilter") / "src"
    root.mkdir()
    rng = np.random.default_rng(7)
    for index in range(4):
        _save(root / f"photo{index}.png", _photo(f"000{index}.png"), compress_level=9)
    _save(root / "grey.png", _photo("0007.png", (32, 32)), compress_level=9)
    _save(root / "noise.png", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    _save(root / "flat.png", np.full((32, 32, 3), 200, np.uint8))
    ramp = np.broadcast_to(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 16, 3)).copy()
    _save(root / "tiny_gradient.png", ramp)  # below MIN_PIXELS
    _save(root / "stored.png", _photo("0001.png"), compress_level=0)  # zlib shrinks it: xz might too
    return root


def _clear(triage: Triage, path) -> bool:
    return triage.clearly_pays(read_image(path), path, path.stat().st_size)


def test_clear_winners_are_deflated_photos_only(images):
    triage = Triage(load_model(DEFAULT_MODEL), adaptation_for(DEFAULT_MODEL, None))
    cleared = {path.name for path in sorted(images.iterdir()) if _clear(triage, path)}
    assert "grey.png" in cleared and len(cleared) >= 3
    assert cleared <= {"photo0.png", "photo1.png", "photo2.png", "photo3.png", "grey.png"}  # not noise,
    # flat, a gradient below MIN_PIXELS or a PNG that zlib shrinks (xz might pack it below the model)


def test_a_file_that_changed_since_it_was_read_is_not_cleared(images, tmp_path):
    triage = Triage(load_model(DEFAULT_MODEL), adaptation_for(DEFAULT_MODEL, None))
    path = images / "grey.png"
    record = read_image(path)
    assert triage.clearly_pays(record, path, path.stat().st_size)
    assert not triage.clearly_pays(record, path, path.stat().st_size - 1)


def test_every_image_the_prefilter_clears_is_one_theta0_sends_to_the_model(images):
    """The prefilter only saves θ0's pass: on these images (and on the evaluation sets and the
    mixed folder, docs/PERFORMANCE.md) θ0's own triage takes the same decision."""
    triage = Triage(load_model(DEFAULT_MODEL), adaptation_for(DEFAULT_MODEL, None))
    paths = sorted(images.iterdir())
    items = [(read_image(path), path, path.stat().st_size) for path in paths]
    by_theta0 = triage.judge(items, [False] * len(items))
    by_default = triage.judge(items)
    for path, theta0, default in zip(paths, by_theta0, by_default):
        if _clear(triage, path):
            assert theta0.model and default.model, path.name
        else:
            assert (theta0.model, theta0.estimate) == (default.model, default.estimate), path.name
    assert not by_theta0[[path.name for path in paths].index("noise.png")].model


def test_cleared_images_skip_theta0s_pass_and_the_archive_is_the_same(images, tmp_path, monkeypatch, sampled):
    """Compressing with the prefilter writes the bytes θ0's triage alone writes, and only the
    images it does not clear go through θ0's samples."""
    seen = sampled
    with_prefilter = io.BytesIO()
    compress([images], with_prefilter)
    sampled = len(seen)
    triage = Triage(load_model(DEFAULT_MODEL), adaptation_for(DEFAULT_MODEL, None))
    cleared = [path for path in images.iterdir() if _clear(triage, path)]
    assert cleared and sampled == len(list(images.iterdir())) - len(cleared)  # no pass for those cleared
    monkeypatch.setattr(Triage, "clearly_pays", lambda self, *arguments, **options: False)
    without = io.BytesIO()
    compress([images], without)
    assert len(seen) - sampled == len(list(images.iterdir()))
    assert with_prefilter.getvalue() == without.getvalue()
    decompress(io.BytesIO(with_prefilter.getvalue()), tmp_path / "out")
    assert_same_tree(images, tmp_path / "out")


def test_an_image_cleared_that_then_loses_is_still_stored_exactly(images, tmp_path, monkeypatch):
    """Were the bound wrong, the image would go to the model path; its group's own check (never
    larger than its files) and the round trip still hold.  Alone in its group, noise the prefilter
    wrongly clears codes larger than its file, so the group is stored as files."""
    monkeypatch.setattr(prefilter, "CLEAR_SHARE", (1000, 1))
    monkeypatch.setattr(prefilter, "MIN_PIXELS", 0)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "noise.png").write_bytes((images / "noise.png").read_bytes())
    for source, name in ((alone, "alone"), (images, "all")):
        output = io.BytesIO()
        summary = compress([source], output, model=MODEL, adaptation=CONFIG)
        _, entries = read_table(io.BytesIO(output.getvalue()))
        methods = {entry.name: entry.method for entry in entries}
        if name == "alone":
            assert summary.images == 0 and methods["noise.png"] != "model"  # stored as its file
        decompress(io.BytesIO(output.getvalue()), tmp_path / f"out-{name}")
        assert_same_tree(source, tmp_path / f"out-{name}")
