"""Restored images are written as soon as each is whole (unpack._GroupWriter): beside the
decoding of later batches when a second core is there, in table order, and a failed write
stops the rest with nothing left behind."""
from __future__ import annotations

import errno
import io

import numpy as np
import pytest
from conftest import BATCH_SIZE, MODEL, TILE_SIZE, assert_same_tree
from PIL import Image

from osoa_zip import compress, decompress, unpack
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.engine import OnlineAdapter

CONFIG = AdaptationConfig(tile_size=TILE_SIZE, batch_size=BATCH_SIZE, batch_pixels=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Sixteen one-tile images (four batches) with a 40 x 24 one (several tiles, two batches) between."""
    folder, generator = tmp_path_factory.mktemp("writer"), np.random.default_rng(7)
    for index in range(16):
        pixels = np.cumsum(generator.integers(-3, 4, (TILE_SIZE, TILE_SIZE, 3)), axis=1) + 128
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index:02d}.png", compress_level=0)
        if index == 5:
            wide = np.clip(np.cumsum(generator.integers(-2, 3, (24, 40, 3)), axis=0) + 100, 0, 255)
            Image.fromarray(wide.astype(np.uint8)).save(folder / "05b.png", compress_level=0)
    return folder


@pytest.fixture(scope="module")
def archive(folder):
    output = io.BytesIO()
    compress([folder], output, model=MODEL, adaptation=CONFIG, triage=False)
    return output.getvalue()


@pytest.mark.parametrize("threads", [1, 2])
def test_images_are_written_while_later_batches_decode(folder, archive, tmp_path, monkeypatch, threads):
    decoded, written = [0], []
    original_decode, original_write = OnlineAdapter.decode, unpack._write_restored_image

    def counted(self, *arguments, **options):
        result = original_decode(self, *arguments, **options)
        decoded[0] += 1
        return result

    def write(path, name, record, note):
        written.append((name, decoded[0]))
        original_write(path, name, record, note)
    monkeypatch.setattr(OnlineAdapter, "decode", counted)
    monkeypatch.setattr(unpack, "_write_restored_image", write)
    decompress(io.BytesIO(archive), tmp_path / "out", threads=threads)
    assert_same_tree(folder, tmp_path / "out")
    names = [name for name, _ in written]
    assert names == sorted(names)  # table order
    assert written[0][1] < decoded[0], "the first image waited for the group's last batch"


def test_a_failed_write_stops_the_rest_and_leaves_nothing(archive, tmp_path, monkeypatch):
    written = []
    original = unpack._write_restored_image

    def failing(path, name, record, note):
        written.append(name)
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, name, record, note)
    monkeypatch.setattr(unpack, "_write_restored_image", failing)
    with pytest.raises(OSError, match="restoring '02.png'"):
        decompress(io.BytesIO(archive), tmp_path / "out", threads=2)
    assert written == ["00.png", "01.png", "02.png"]
    assert list(tmp_path.iterdir()) == []
