"""What a model's manifest entry chooses for adaptation, and how adapt.defaults resolves it.

An entry may recommend which parameters adapt (``adaptation.parameters``), a learning
rate (``adaptation.learning_rate``) and a rate per selection (``adaptation.learning_rates``),
which wins when that selection adapts: on engine 2, every layer of v7 adapts at 5e-5 but
its last layers alone at 3e-4 (docs/PERFORMANCE.md, "v7: adaptation that pays").  The
archive records the resolved settings, so the decoder never consults the manifest.
"""
from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLES, assert_same_tree, uncompressed_copy

from osoa_zip import compress, decompress
from osoa_zip.adapt.config import DEFAULT_LEARNING_RATE, AdaptationConfig
from osoa_zip.adapt.defaults import DEFAULT_PARAMETERS, adaptation_for
from osoa_zip.adapt.presets import PRESETS
from osoa_zip.models.catalog import DEFAULT_MODEL, MANIFEST, available_models, recommended_learning_rate
from osoa_zip.table import read_archive

BASE = "idf-tiny-test-e2"  # a real (tiny) engine-2 checkpoint the private entries point at
ALL_RATE, LAST_RATE, OTHER_RATE = 1e-3, 3e-3, 7e-4


@pytest.fixture
def private_models(tmp_path, monkeypatch) -> Path:
    """$OSOA_ZIP_MODELS (searched first) with entries that choose in every way an entry can."""
    entry = {k: v for k, v in available_models()[BASE].items() if k != "directory"}
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(Path(available_models()[BASE]["directory"]) / entry["file"], folder / entry["file"])
    entries = {
        "per-selection": {**entry, "adaptation": {"learning_rate": ALL_RATE, "parameters": "all",
                                                  "learning_rates": {"last": LAST_RATE}}},
        "rate-only": {**entry, "adaptation": {"learning_rate": OTHER_RATE}},
        "nothing": entry,
    }
    (folder / MANIFEST).write_text(json.dumps({"models": entries}))
    monkeypatch.setenv("OSOA_ZIP_MODELS", str(folder))
    return folder


def test_an_unset_rate_is_the_entry_s_rate_for_the_selection_that_adapts(private_models):
    default = adaptation_for("per-selection")
    assert (default.parameters, default.learning_rate) == ("all", ALL_RATE)
    last = adaptation_for("per-selection", AdaptationConfig(parameters="last"))
    assert (last.parameters, last.learning_rate) == ("last", LAST_RATE)
    bias = adaptation_for("per-selection", AdaptationConfig(parameters="bias"))  # no rate of its own
    assert (bias.parameters, bias.learning_rate) == ("bias", ALL_RATE)
    told = adaptation_for("per-selection", AdaptationConfig(parameters="last", learning_rate=1e-3))
    assert (told.parameters, told.learning_rate) == ("last", 1e-3)  # an explicit rate wins


def test_entries_without_per_selection_rates_resolve_as_before(private_models):
    for parameters in (None, "all", "last", "bias"):
        chosen = adaptation_for("rate-only", AdaptationConfig(parameters=parameters))
        assert chosen.learning_rate == OTHER_RATE and chosen.parameters == (parameters or DEFAULT_PARAMETERS)
        plain = adaptation_for("nothing", AdaptationConfig(parameters=parameters))
        assert plain.learning_rate == DEFAULT_LEARNING_RATE and plain.parameters == (parameters or DEFAULT_PARAMETERS)
    unknown = adaptation_for("not-installed")
    assert (unknown.parameters, unknown.learning_rate) == (DEFAULT_PARAMETERS, DEFAULT_LEARNING_RATE)
    assert recommended_learning_rate({}) is None and recommended_learning_rate({}, "last") is None


def test_the_grey_selection_is_not_the_model_s_choice(private_models):
    """The manifest chooses the colour selection and its rate; grey networks adapt their last
    layers at that same rate (one rate per archive), unless told otherwise."""
    chosen = adaptation_for("per-selection")
    assert chosen.gray_parameters == AdaptationConfig().gray_parameters == "last"
    assert (chosen.parameters_for(1), chosen.parameters_for(3)) == ("last", "all")


def _folder(tmp_path: Path) -> Path:
    """examples/images uncompressed (so the model path wins): RGB and grey, so both networks adapt."""
    return uncompressed_copy(EXAMPLES, tmp_path / "in")


@pytest.mark.parametrize("given, expected", [
    (AdaptationConfig(), {"parameters": "all", "learning_rate": ALL_RATE}),
    (AdaptationConfig(parameters="last"), {"parameters": "last", "learning_rate": LAST_RATE}),
], ids=["entry's-default", "last-layers"])
def test_the_resolved_choice_is_in_the_header_and_decodes_without_the_entry(private_models, tmp_path, given,
                                                                             expected):
    """Compress records what the entry chose; decompress replays it from the header alone:
    the entry's adaptation block is gone by then (the decoder never reads it)."""
    folder = _folder(tmp_path)
    config = dataclasses.replace(given, tile_size=16, batch_size=4, batch_pixels=0, gray_batch_pixels=0)
    output = io.BytesIO()
    summary = compress([folder], output, "per-selection", config, triage=False)
    assert summary.images == 9 and len(summary.batches) > 20
    header = read_archive(io.BytesIO(output.getvalue()))[0]["adaptation"]
    assert {key: header[key] for key in expected} == expected
    assert AdaptationConfig.from_header(header) == adaptation_for("per-selection", config)

    manifest = json.loads((private_models / MANIFEST).read_text())
    del manifest["models"]["per-selection"]["adaptation"]
    (private_models / MANIFEST).write_text(json.dumps(manifest))
    assert adaptation_for("per-selection").learning_rate == DEFAULT_LEARNING_RATE
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out")
    assert_same_tree(folder, tmp_path / "out")



def test_the_default_model_adapts_every_layer_slowly_and_its_last_layers_as_before():
    """v7's entry: -6 (and no level) adapts every layer at 5e-5; the levels that adapt the last
    layers only (-2 ... -4) keep the rate they had when the last layers were v7's default."""
    default = adaptation_for(DEFAULT_MODEL)
    assert (default.parameters, default.learning_rate, default.gray_parameters) == ("all", 5e-5, "last")
    for level in (2, 3, 4):
        chosen = adaptation_for(DEFAULT_MODEL, PRESETS[level].config())
        assert (chosen.parameters, chosen.learning_rate) == ("last", 3e-4)
    assert adaptation_for(DEFAULT_MODEL, PRESETS[6].config()) == default
    header = default.to_header()
    assert AdaptationConfig.from_header(json.loads(json.dumps(header))) == default
