"""`osoa-zip pretrain`: train on a folder, export, register, and compress with the result."""
from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, assert_same_tree, uncompressed_copy

from osoa_zip import compress, decompress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.cli import main
from osoa_zip.models.pretrain import collect_tiles


def test_collect_tiles_by_channel_count(tmp_path):
    tiles = collect_tiles(EXAMPLES, tile_size=16, crops_per_image=3, seed=0)
    assert tiles[3].shape == (6 * 3, 16, 16, 3) and tiles[1].shape == (3 * 3, 16, 16, 1)
    again = collect_tiles(EXAMPLES, tile_size=16, crops_per_image=3, seed=0)
    assert (again[3] == tiles[3]).all()  # seeded: the same crops every time


@pytest.mark.parametrize("family", ["flow", "vae"])
def test_pretrain_exports_a_model_that_compresses(family, tmp_path, monkeypatch):
    models = tmp_path / "models"
    result = CliRunner().invoke(main, ["pretrain", str(EXAMPLES), "--family", family, "-o",
                                       str(models / f"mine-{family}"), "--steps", "3", "--tile-size", "16",
                                       "--crops-per-image", "2", "--batch-size", "4", "--hidden", "4"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((models / "manifest.json").read_text())["models"][f"mine-{family}"]
    assert manifest["family"] == family and set(manifest["validation_bpsp"]) == {"gray", "rgb"}
    assert (models / f"mine-{family}.run" / "rgb.json").is_file()  # the checkpoint to resume from
    monkeypatch.setenv("OSOA_ZIP_MODELS", str(models))
    source = uncompressed_copy(EXAMPLES, tmp_path / "src")
    output = io.BytesIO()
    compress([source], output, model=f"mine-{family}", adaptation=AdaptationConfig(tile_size=16, batch_size=4,
                                                                                   batch_pixels=0))
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")
    again = CliRunner().invoke(main, ["pretrain", str(EXAMPLES), "-o", str(models / f"mine-{family}")])
    assert again.exit_code == 1 and "exists already" in again.output  # names are never reused


def test_pretrain_without_images_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["pretrain", str(tmp_path / "empty"), "-o", str(tmp_path / "m" / "x")])
    assert result.exit_code == 2 and "no images" in result.output


def test_export_is_byte_reproducible(tmp_path):
    """The same weights always give the same checkpoint file (and SHA-256)."""
    from osoa_zip.models.registry import load_model, save_checkpoint
    bundle = load_model("idf-tiny-test")
    digests = {save_checkpoint(tmp_path / f"{i}.safetensors", bundle.config, bundle.networks) for i in range(5)}
    assert len(digests) == 1


@pytest.mark.parametrize("start", ["idf-tiny-test", "idf-sublattice-v4"])
def test_fine_tuning_keeps_the_starting_models_architecture(start, tmp_path, monkeypatch):
    """--init-from a v4 (cross-channel couplings, deep levels, edge bins) trains and exports a v4."""
    from osoa_zip.models.registry import load_model
    models = tmp_path / "models"
    result = CliRunner().invoke(main, ["pretrain", str(EXAMPLES), "-o", str(models / "tuned"), "--init-from", start,
                                       "--steps", "1", "--tile-size", "16", "--crops-per-image", "1",
                                       "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("OSOA_ZIP_MODELS", str(models))
    assert load_model("tuned").config == load_model(start).config


def test_fine_tuning_cannot_change_the_width(tmp_path):
    result = CliRunner().invoke(main, ["pretrain", str(EXAMPLES), "-o", str(tmp_path / "m" / "x"),
                                       "--init-from", "idf-tiny-test", "--hidden", "16", "--steps", "1"])
    assert result.exit_code == 2 and "fine-tuning keeps its architecture" in result.output


def test_a_new_flow_gets_the_default_models_architecture():
    """The default model's architecture, on engine 1: pretraining starts a flow in float32 on
    engine 1's grids (scripts/train_engine2.py converts and trains one for engine 2)."""
    from osoa_zip.models.registry import DEFAULT_MODEL, family_class, load_model
    config = load_model(DEFAULT_MODEL).config
    assert config["engine"] == 2
    assert family_class("flow").default_config == {key: value for key, value in config.items() if key != "engine"}


def test_fine_tuning_can_turn_a_single_logistic_flow_into_a_mixture(tmp_path, monkeypatch):
    """--init-from v4 --mixture-components 3: v4's architecture plus mixtures, and it codes exactly."""
    from osoa_zip.models.registry import load_model
    models = tmp_path / "models"
    result = CliRunner().invoke(main, ["pretrain", str(EXAMPLES), "-o", str(models / "mixed"), "--init-from",
                                       "idf-sublattice-v4", "--mixture-components", "3", "--steps", "1",
                                       "--tile-size", "16", "--crops-per-image", "1", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("OSOA_ZIP_MODELS", str(models))
    assert load_model("mixed").config == {**load_model("idf-sublattice-v4").config, "mixture_components": 3}
    source = uncompressed_copy(EXAMPLES, tmp_path / "src")
    output = io.BytesIO()
    compress([source], output, model="mixed", adaptation=AdaptationConfig(tile_size=16, batch_size=4))
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")


def test_a_mixture_needs_edge_bins_when_fine_tuning(tmp_path):
    result = CliRunner().invoke(main, ["pretrain", str(EXAMPLES), "-o", str(tmp_path / "m" / "x"), "--init-from",
                                       "idf-tiny-test", "--mixture-components", "2", "--steps", "1"])
    assert result.exit_code == 2 and "edge_bins" in result.output
