"""A frozen model's per-image triage (-1, --no-adapt): an image whose samples would be a good
share of it is judged by the bits its own tiles cost in the coding pass, not by a separate pass
over samples (pack.py, triage.py); larger images are sampled as before."""
from __future__ import annotations

import dataclasses
import io
import shutil

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, MODEL, assert_same_tree
from PIL import Image

from osoa_zip import compress, decompress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.models.registry import load_model
from osoa_zip.table import read_table
from osoa_zip.triage import Triage

# Samples of 32 x 32: half of a 64 x 64 image, 44% of a 48 x 48 one (judged by coding).
FROZEN = AdaptationConfig(adapt=False, tile_size=64, batch_size=4, batch_pixels=0)


@pytest.mark.parametrize("model, channels", [(MODEL, 3), ("idf-tiny-test-e2", 1), ("idf-sublattice-v7", 3),
                                             ("idf-sublattice-v7", 1)])
def test_the_coding_pass_counts_each_tile_as_tile_bits_does(model, channels):
    """factor_tile_bits (from analyse's factors) is tile_bits exactly, mixtures and edge bins included."""
    network = load_model(model).network(channels)
    rng = np.random.default_rng(channels)
    pixels = torch.from_numpy(rng.integers(0, 256, (3, channels, 8, 12)).astype(np.float64))
    pixels[1] = pixels[1] // 32 * 32  # a smoother tile: different bits
    _, factors = network.analyse(pixels, with_loss=False)
    assert torch.equal(network.factor_tile_bits(factors, 3), network.tile_bits(pixels))


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("model, channels", [(MODEL, 3), ("idf-tiny-test-e2", 1), ("idf-sublattice-v7", 1)])
def test_counting_some_tiles_gives_each_of_them_the_whole_batchs_value(model, channels, numba, monkeypatch):
    """Only the tiles of images judged by their bits are counted: each one's bits are the float
    the whole batch gives it, bit for bit (so the same verdicts), whichever tiles are asked for."""
    from osoa_zip.exact import mixture_kernels
    if not numba:
        monkeypatch.setattr(mixture_kernels, "available", lambda: False)
    network = load_model(model).network(channels)
    rng = np.random.default_rng(7 + channels)
    pixels = torch.from_numpy(rng.integers(0, 256, (9, channels, 16, 12)).astype(np.float64))
    pixels[1::3] = pixels[1::3] // 32 * 32
    pixels[4] = 255.0  # edge bins
    _, factors = network.analyse(pixels, with_loss=False)
    whole = network.factor_tile_bits(factors, 9)
    for wanted in ([True] + [False] * 8, [False] * 8 + [True], [i % 2 == 1 for i in range(9)],
                   list(rng.random(9) < 0.3) + [False], [True] * 9):
        wanted = np.array(wanted[:9])
        some = network.factor_tile_bits(factors, 9, wanted)
        assert some[torch.from_numpy(wanted)].numpy().tobytes() == whole[torch.from_numpy(wanted)].numpy().tobytes()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen") / "src"
    (root / "sub").mkdir(parents=True)
    flat = np.zeros((64, 64, 3), np.uint8)
    flat[:32] = 200
    Image.fromarray(flat).save(root / "flat.png")  # no model codes it smaller than its file
    with Image.open(EXAMPLES / "0006.png") as image:
        image.save(root / "photo.png", compress_level=0)  # uncompressed: the model beats it and its xz
        image.convert("L").save(root / "sub" / "grey.png", compress_level=0)
    with Image.open(EXAMPLES / "0001.png") as image:
        image.save(root / "smooth.png", compress_level=0)  # the model beats its size, not its xz
    (root / "notes.txt").write_text("text\n" * 10)
    return root


def _methods(archive: bytes) -> dict:
    _, entries = read_table(io.BytesIO(archive))
    return {entry.name: (entry.kind, entry.method) for entry in entries if entry.kind != "dir"}


def test_a_frozen_archive_judges_images_by_their_coded_bits_alone(folder, tmp_path, monkeypatch):
    """No sample is coded for triage; the images that lose are stored as files, the rest coded
    once more without them, and everything comes back."""
    def sampled(*_):
        raise AssertionError("a frozen archive's images were sampled")

    monkeypatch.setattr(Triage, "measure", sampled)
    counted = []
    output = io.BytesIO()
    summary = compress([folder], output, model=MODEL, adaptation=FROZEN, progress=counted.append)
    methods = _methods(output.getvalue())
    assert methods["flat.png"][0] == "file" and methods["smooth.png"] == ("file", "solid")
    assert methods["photo.png"] == methods["sub/grey.png"] == ("image", "model")
    assert summary.images == 2
    assert sum(counted) == sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out")
    assert_same_tree(folder, tmp_path / "out")


def test_a_frozen_archive_keeps_what_sampled_triage_keeps(folder):
    """On these images the exact bits and the samples' estimate agree: the same images take the
    model path.  (The files may be blocked differently: an image found to lose after coding joins
    a block after the ones coded beside the last group.)"""
    frozen, adapting = io.BytesIO(), io.BytesIO()
    compress([folder], frozen, model=MODEL, adaptation=FROZEN)
    compress([folder], adapting, model=MODEL, adaptation=dataclasses.replace(FROZEN, adapt=True))
    kinds = [{name: kind for name, (kind, _) in _methods(archive.getvalue()).items()} for archive in (frozen, adapting)]
    assert kinds[0] == kinds[1] and kinds[0]["photo.png"] == "image" and kinds[0]["flat.png"] == "file"


def test_a_frozen_archive_with_every_image_codes_them_all(folder):
    output = io.BytesIO()
    compress([folder], output, model=MODEL, adaptation=FROZEN, triage=False)
    methods = _methods(output.getvalue())
    assert methods["flat.png"][0] == methods["photo.png"][0]  # one group: kept or stored whole


def test_large_images_are_still_judged_by_samples(folder, tmp_path, sampled):
    """A 256 x 192 image's two 32 x 32 samples are 4% of it: sampling costs less than counting."""
    shutil.copytree(folder, tmp_path / "src")
    with Image.open(EXAMPLES / "0001.png") as image:
        image.resize((256, 192)).save(tmp_path / "src" / "large.png", compress_level=0)
    output = io.BytesIO()
    compress([tmp_path / "src"], output, model=MODEL, adaptation=FROZEN)
    assert [record.pixels.shape[:2] for record in sampled] == [(192, 256)]
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out")
    assert_same_tree(tmp_path / "src", tmp_path / "out")


def test_images_the_classical_bound_clears_are_not_counted_and_code_alike(tmp_path, monkeypatch):
    """-1 on small deflated photos: triage's classical bound (prefilter.py) clears them, so the
    coding pass counts no tile bits for them, and the archive is the one that judging them by
    their coded bits writes (v7 beats every one of these files)."""
    from osoa_zip.adapt.engine import OnlineAdapter
    from osoa_zip.adapt.presets import PRESETS

    level_1 = PRESETS[1].config("idf-sublattice-v7")
    counting, cleared = [], {}
    encode_chain, clearly_pays = OnlineAdapter.encode_chain, Triage.clearly_pays

    def recording_encode_chain(self, batches, count_tiles=None):
        counting.append(count_tiles)
        return encode_chain(self, batches, count_tiles)

    def recording_clearly_pays(self, record, path, size, classical=None):
        cleared[path.name] = clearly_pays(self, record, path, size, classical)
        return cleared[path.name]

    def archive(source) -> bytes:
        output = io.BytesIO()
        compress([source], output, model="idf-sublattice-v7", adaptation=level_1)
        return output.getvalue()

    monkeypatch.setattr(OnlineAdapter, "encode_chain", recording_encode_chain)
    monkeypatch.setattr(Triage, "clearly_pays", recording_clearly_pays)
    archive(EXAMPLES)  # the bundled deflated 64 x 64 and 48 x 48 photos: which does the bound clear?
    source = tmp_path / "src"
    source.mkdir()
    for name in [name for name, clear in cleared.items() if clear]:
        shutil.copy(EXAMPLES / name, source / name)
    assert len(list(source.iterdir())) >= 3
    counting.clear()
    fast = archive(source)
    assert counting and not any(counting)
    counting.clear()
    monkeypatch.setattr(Triage, "clearly_pays", lambda self, *arguments: False)
    assert archive(source) == fast and any(counting)  # judged by their coded bits: counted, the same verdicts
    assert set(_methods(fast).values()) == {("image", "model")}
    decompress(io.BytesIO(fast), tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")
