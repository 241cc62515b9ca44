"""A new model family plugs in with one decorator (models/protocol.py, docs/MODELS.md).

The family here lives in this module only: every sub-pixel is independent,
one discretized logistic per channel whose mean and log-scale are the only
parameters, registered with ``@register_family``.  Nothing else in the
package knows it, yet the engine codes, adapts and decodes it, and
``compress``/``decompress`` load it from a checkpoint and a manifest entry
like a shipped model.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, assert_same_tree
from PIL import Image
from torch import nn

from osoa_zip import compress, decompress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.engine import FLAG_PRETRAINED, OnlineAdapter
from osoa_zip.coding.logistic_coder import pop_factor, push_factors
from osoa_zip.exact.fixed import quantize_activation
from osoa_zip.exact.logistic import LogisticTables, nll_bits
from osoa_zip.models.protocol import CodingModel
from osoa_zip.models.registry import (
    MANIFEST,
    FlowBundle,
    ModelError,
    build_networks,
    families,
    family_class,
    register_family,
    save_checkpoint,
)
from osoa_zip.table import read_archive

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILY = "test-per-pixel"
TILE = 8
PIXEL_MAX = 255.0


@register_family(FAMILY, architecture="per-pixel-logistic")
class PerPixelLogistic(CodingModel):
    """Every sub-pixel ~ one discretized logistic per channel (edge bins at 0 and 255)."""

    config_keys = frozenset({"initial_mean"})

    def __init__(self, channels: int, initial_mean: float) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.full((channels,), float(initial_mean)))
        self.log_scale = nn.Parameter(torch.full((channels,), 3.0))
        self.tables: LogisticTables | None = None

    @classmethod
    def from_config(cls, channels: int, config: dict) -> "PerPixelLogistic":
        return cls(channels, config["initial_mean"])

    def adaptable_parameters(self, selection: str) -> set[str]:
        """Only the means adapt (whatever the selection): the tiny adaptable parameter."""
        return {"mean"}

    def _distribution(self, shape) -> tuple:
        """(mean, log_scale, lower, upper) per sub-pixel, on the exact core's activation grid."""
        view = (1, -1, 1, 1)
        mean = quantize_activation(self.mean).view(view).expand(shape)
        log_scale = quantize_activation(self.log_scale).view(view).expand(shape)
        return (mean, log_scale, torch.zeros(shape, dtype=self.mean.dtype),
                torch.full(shape, PIXEL_MAX, dtype=self.mean.dtype))

    def nll(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.mean.dtype)
        mean, log_scale, lower, upper = self._distribution(pixels.shape)
        return nll_bits(pixels, mean, log_scale, self.tables, lower, upper).sum()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, coder, initial: bool = True) -> None:
        mean, log_scale, lower, upper = self._distribution(pixels.shape)
        push_factors(coder, self.tables, [(pixels.to(torch.float64), mean, log_scale, lower, upper)])

    @torch.no_grad()
    def decode(self, coder, shape, initial: bool = True) -> torch.Tensor:
        mean, log_scale, lower, upper = self._distribution(shape)
        return pop_factor(coder, self.tables, mean, log_scale, bounds=(lower, upper))


# Far from the images' means, so that adapting pays.
CONFIG = {"family": FAMILY, "initial_mean": 40.0}
MODEL_PATH_IMAGES = ["0003.png", "0004.png", "0007.png", "0008.png"]


def _bundle() -> FlowBundle:
    tables = LogisticTables.from_tensors(LogisticTables.build())
    networks = build_networks(CONFIG)
    for network in networks.values():
        network.to(torch.float64)
        network.tables = tables
    return FlowBundle(name="per-pixel-untrained", sha256="", config=CONFIG, networks=networks)


def _batches(image: str, mode: str, count: int) -> list[np.ndarray]:
    """``count`` batches of two TILE x TILE tiles (B x C x H x W uint8) of one example image."""
    with Image.open(EXAMPLES / image) as opened:
        pixels = np.asarray(opened.convert(mode)).reshape(opened.height, opened.width, -1)
    height, width = pixels.shape[:2]
    tiles = [pixels[top:top + TILE, left:left + TILE].transpose(2, 0, 1)
             for top in range(0, height - TILE + 1, TILE) for left in range(0, width - TILE + 1, TILE)]
    return [np.stack(tiles[2 * i:2 * i + 2]) for i in range(count)]


def test_the_decorator_is_all_a_family_needs_to_be_found():
    assert FAMILY in families()
    assert family_class(FAMILY) is PerPixelLogistic
    assert PerPixelLogistic.family == FAMILY and PerPixelLogistic.architecture == "per-pixel-logistic"
    networks = build_networks(CONFIG)
    assert sorted(networks) == [1, 3] and all(isinstance(n, PerPixelLogistic) for n in networks.values())
    assert networks[3].mean.shape == (3,)


def test_a_family_name_is_registered_once_and_only_for_coding_models():
    with pytest.raises(ValueError, match="registered already"):
        register_family(FAMILY, architecture="another")(PerPixelLogistic)
    with pytest.raises(TypeError, match="not a CodingModel"):
        register_family("test-not-a-model", architecture="none")(nn.Linear)
    with pytest.raises(ModelError, match="test-unknown"):
        family_class("test-unknown")


@pytest.mark.parametrize(("image", "mode"), [("0002.png", "RGB"), ("0006.png", "L")])
def test_the_engine_codes_adapts_and_decodes_a_new_family(image, mode):
    batches = _batches(image, mode, 8)
    config = AdaptationConfig(tile_size=TILE, batch_size=2, batch_pixels=0, learning_rate=8.0)
    encoder, frozen = OnlineAdapter(_bundle(), config), OnlineAdapter(_bundle(), AdaptationConfig(
        tile_size=TILE, batch_size=2, batch_pixels=0, adapt=False))
    coded = [encoder.encode(batch)[0] for batch in batches]
    decoder = OnlineAdapter(_bundle(), config)
    for batch, data in zip(batches, coded):
        assert np.array_equal(decoder.decode(data, batch.shape), batch)
    channels = batches[0].shape[1]
    adapted, replayed = encoder.adapted_network(channels), decoder.adapted_network(channels)
    assert torch.equal(adapted.mean, replayed.mean) and torch.equal(adapted.log_scale, replayed.log_scale)
    assert not torch.equal(adapted.mean, _bundle().network(channels).mean)  # it adapted
    assert not any(data[0] & FLAG_PRETRAINED for data in coded[1:])  # and the adapted model coded
    frozen_sizes = [len(frozen.encode(batch)[0]) for batch in batches]
    assert all(map(int.__le__, map(len, coded), frozen_sizes)) and sum(map(len, coded)) < sum(frozen_sizes)


def test_compress_loads_a_new_family_from_its_checkpoint(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    digest = save_checkpoint(models / "per-pixel-test.safetensors", CONFIG, build_networks(CONFIG))
    (models / MANIFEST).write_text(json.dumps({"models": {"per-pixel-test": {
        "file": "per-pixel-test.safetensors", "sha256": digest, "family": FAMILY,
        "architecture": PerPixelLogistic.architecture, "config": CONFIG}}}))
    monkeypatch.setenv("OSOA_ZIP_MODELS", str(models))
    # Images a per-pixel model codes smaller than their uncompressed files (it codes others larger,
    # and those are stored as files instead).
    source = tmp_path / "source"
    source.mkdir()
    for name in MODEL_PATH_IMAGES:
        with Image.open(EXAMPLES / name) as image:
            image.save(source / name, compress_level=0)
    archive = io.BytesIO()
    compress([source], archive, model="per-pixel-test",
             adaptation=AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=8.0),
             triage=False)
    header, _, batches = read_archive(io.BytesIO(archive.getvalue()))
    assert header["model"] == {"name": "per-pixel-test", "sha256": digest, "family": FAMILY}
    assert len(batches) > 3  # the images took the model path, in several batches each
    decompress(io.BytesIO(archive.getvalue()), tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")
