"""What each compression level means for the models it is used with (osoa_zip/adapt/presets.py).

The command-line behaviour of levels (recorded settings, explicit options winning, every level
decoding exactly) is tested in test_cli_habits.py; here: that the levels are nine different
trade-offs for the default model and for the other shipped flows, ordered from fast to small.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from osoa_zip.adapt.defaults import adaptation_for
from osoa_zip.adapt.presets import DEFAULT_LEVEL, PRESETS
from osoa_zip.models.catalog import DEFAULT_MODEL, FAST_MODEL, available_models
from osoa_zip.models.registry import load_model, network_config

MODELS = (DEFAULT_MODEL, "idf-sublattice-v6")


def resolved(level: int, model: str):
    return adaptation_for(model, PRESETS[level].config(model))


@pytest.mark.parametrize("model", MODELS)
def test_every_level_is_its_own_setting_for_the_model(model):
    """No level repeats another's settings once the model's own choices are filled in (v7
    adapts its last layers by default, so "last layers" alone no longer tells -2 from -6)."""
    configs = [resolved(level, model) for level in sorted(PRESETS)]
    assert len({tuple(sorted(dataclasses.asdict(config).items())) for config in configs}) == len(configs)


@pytest.mark.parametrize("model", MODELS)
def test_levels_adapt_more_as_they_rise(model):
    """-1 is frozen; -2 ... -5 adapt on more and more batches; from -6 on adaptation never stops
    but by giving up, and -7 ... -9 take more and more steps per batch."""
    assert not resolved(1, model).adapt
    limits = [resolved(level, model).adapt_batches for level in range(2, DEFAULT_LEVEL)]
    assert all(limits) and limits == sorted(limits) and len(set(limits)) == len(limits)
    give_up = [resolved(level, model).give_up_after for level in range(2, DEFAULT_LEVEL + 1)]
    assert give_up == sorted(give_up)
    steps = [resolved(level, model).steps_per_batch for level in range(DEFAULT_LEVEL, 10)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert all(resolved(level, model).adapt_batches == 0 for level in range(DEFAULT_LEVEL, 10))
    assert resolved(9, model).give_up_after == 0


def test_the_middle_levels_adapt_the_last_layers_whatever_the_model():
    """-2 ... -4 name their parameters (at the model's rate for them); -5 and up keep the
    model's own choice (v6 and v7: every layer of colour networks, the last of grey ones)."""
    for model in MODELS:
        for level in (2, 3, 4):
            config = resolved(level, model)
            assert (config.parameters, config.gray_parameters) == ("last", "last")
            assert config.learning_rate == adaptation_for(model, dataclasses.replace(
                PRESETS[DEFAULT_LEVEL].config(model), parameters="last")).learning_rate
        assert resolved(5, model).parameters == resolved(DEFAULT_LEVEL, model).parameters


def test_the_frozen_level_codes_larger_batches_than_the_default():
    frozen, default = resolved(1, DEFAULT_MODEL), resolved(DEFAULT_LEVEL, DEFAULT_MODEL)
    for height, width, channels in ((28, 28, 1), (32, 32, 1), (32, 32, 3), (64, 64, 3), (128, 128, 3)):
        assert frozen.batch_size_for(height, width, channels) > default.batch_size_for(height, width, channels)


def test_small_colour_tiles_go_32_to_a_batch_below_level_7_and_16_from_it():
    """-2 ... -6 batch 32 x 32 colour tiles by 32768 pixels, the pixels of eight 64 x 64 tiles
    (per-batch work dominates small tiles); the levels for size take twice the steps on them.
    Grey tiles and larger colour tiles are batched alike by both."""
    for level in range(2, 10):
        config = resolved(level, DEFAULT_MODEL)
        assert config.batch_size_for(32, 32, 3) == (32 if level < 7 else 16)
        assert config.batch_size_for(64, 64, 3) == 8
        assert config.batch_size_for(128, 128, 3) == 4
        assert config.batch_size_for(32, 32, 1) == (64 if level < 7 else 72)


def test_summaries_fit_one_help_line_and_name_the_default():
    assert all(len(chosen.summary) <= 44 for chosen in PRESETS.values())
    assert PRESETS[DEFAULT_LEVEL].summary.startswith("default")
    assert "fastest" in PRESETS[1].summary and "smallest" in PRESETS[9].summary


def test_the_fastest_level_codes_grey_images_with_a_smaller_network_and_colour_ones_as_the_default():
    """-1 alone names a model: a shipped engine-2 flow whose colour network is the default
    model's, weight for weight (frozen, it is fast already), and whose grey network has the same
    architecture at a smaller width and depth (the default's frozen grey pass is not)."""
    assert [chosen.level for chosen in PRESETS.values() if chosen.model] == [1]
    assert PRESETS[1].model == FAST_MODEL
    models = available_models()
    fast, default = models[FAST_MODEL]["config"], models[DEFAULT_MODEL]["config"]
    assert network_config(fast, 3) == default
    grey, default_grey = network_config(fast, 1), network_config(default, 1)
    shape = ("hidden", "depth")
    assert {key: grey[key] for key in grey if key not in shape} == {key: default_grey[key] for key in default_grey
                                                                     if key not in shape}
    assert all(grey[key] < default_grey[key] for key in shape)
    fast_bundle, default_bundle = load_model(FAST_MODEL), load_model(DEFAULT_MODEL)
    colour, default_colour = fast_bundle.network(3).state_dict(), default_bundle.network(3).state_dict()
    assert colour.keys() == default_colour.keys()
    assert all(torch.equal(colour[key], default_colour[key]) for key in colour)
    assert sum(p.numel() for p in fast_bundle.network(1).parameters()) * 3 < \
        sum(p.numel() for p in default_bundle.network(1).parameters())
