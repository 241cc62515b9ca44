"""The OSOA engine's options and per-batch flags, through the Python API and `info`/`list`.

The guard (never worse than frozen) is checked with a learning rate large
enough to wreck the model: unguarded, adaptation costs far more than
--no-adapt; guarded, at most a few bytes per batch more, and the decoder
replays the flags exactly.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import BATCH_SIZE, EXAMPLES, MODEL, TILE_SIZE, assert_same_tree, uncompressed_copy
from PIL import Image

from osoa_zip import compress, decompress
from osoa_zip.adapt.config import DEFAULT_LEARNING_RATE, LEGACY_VALUES, AdaptationConfig
from osoa_zip.adapt.defaults import adaptation_for
from osoa_zip.adapt.engine import (
    FLAG_GIVE_UP,
    FLAG_PRETRAINED,
    FLAG_ROLLBACK,
    FLAG_SEGMENT_START,
    BatchError,
    OnlineAdapter,
)
from osoa_zip.cli import main
from osoa_zip.models.registry import load_model
from osoa_zip.table import read_archive


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return uncompressed_copy(EXAMPLES, tmp_path_factory.mktemp("src") / "images")


def _archive(source, **settings) -> bytes:
    output = io.BytesIO()
    config = AdaptationConfig(tile_size=TILE_SIZE, **{"batch_size": BATCH_SIZE, "batch_pixels": 0, **settings})
    compress([source], output, model=MODEL, adaptation=config, triage=False)
    return output.getvalue()


def _round_trip(source, tmp_path, **settings) -> tuple[bytes, list]:
    data = _archive(source, **settings)
    destination = tmp_path / "restored"
    decompress(io.BytesIO(data), destination)
    assert_same_tree(source, destination)
    return data, read_archive(io.BytesIO(data))[2]


def _example_tiles() -> np.ndarray:
    """96 RGB tiles of 16x16 from the six 64x64 examples: 24 batches of four."""
    tiles = []
    for index in range(6):
        pixels = np.asarray(Image.open(EXAMPLES / f"000{index}.png"))
        tiles.append(pixels.reshape(4, 16, 4, 16, 3).transpose(0, 2, 4, 1, 3).reshape(16, 3, 16, 16))
    return np.ascontiguousarray(np.concatenate(tiles))


def _coded_bytes(**settings) -> tuple[int, list[int]]:
    adapter = OnlineAdapter(load_model(MODEL), AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, **settings))
    tiles = _example_tiles()
    coded = [adapter.encode(tiles[start:start + 4]) for start in range(0, len(tiles), 4)]
    return sum(len(data) for data, _ in coded), [stats.flags for _, stats in coded]


def test_guard_keeps_a_wrecked_adaptation_near_frozen():
    frozen, _ = _coded_bytes(adapt=False)
    wrecked, _ = _coded_bytes(learning_rate=0.5, guard=False)
    guarded, flags = _coded_bytes(learning_rate=0.5)
    assert wrecked > 1.5 * frozen  # the unguarded run really is wrecked
    assert guarded <= frozen + 2 * len(flags)  # a flag byte per batch (and a little coder slack)
    assert flags[0] == FLAG_SEGMENT_START  # the first batch starts the (only) segment, with θ0
    assert any(f & FLAG_PRETRAINED for f in flags)  # the guard stepped in


def test_flags_round_trip_through_the_archive(source, tmp_path):
    """A learning rate that often overshoots: θ0 codes some batches and the decoder follows the flags.

    FLAG_ROLLBACK is no longer written; tests/golden's tiny archive (1.0.0) has it and decodes."""
    _, batches = _round_trip(source, tmp_path, learning_rate=0.05)
    flags = [b.flags for b in batches]
    assert any(f & FLAG_PRETRAINED for f in flags) and any(f == 0 for f in flags), flags
    assert not any(f & FLAG_ROLLBACK for f in flags), flags


def test_guard_backs_off_while_the_adapted_model_wins():
    """θ0 is compared again after 1, 2, 4, 8, 8 batches while it loses by more than 1%,
    and at once after it wins or comes close."""
    from osoa_zip.adapt.engine import _Track
    track = _Track(network=None, optimizer=None)
    outcomes = iter([1.5] * 5 + [1.005, 0.9, 1.5])  # θ0's bits / the adapted model's
    compared = []
    for batch in range(40):
        if OnlineAdapter._probe_due(track):
            compared.append(batch)
            OnlineAdapter._schedule_probe(track, 100.0, 100.0 * next(outcomes, 1.5))
    assert compared[:9] == [0, 2, 5, 10, 19, 28, 29, 30, 32], compared


def test_guard_compares_fewer_batches_than_it_codes():
    from osoa_zip.adapt import engine
    calls = []
    original = engine.OnlineAdapter._schedule_probe

    def spy(track, adapted_bits, pretrained_bits):
        calls.append(pretrained_bits < adapted_bits)
        original(track, adapted_bits, pretrained_bits)
    engine.OnlineAdapter._schedule_probe = staticmethod(spy)
    try:
        _, flags = _coded_bytes(learning_rate=1e-3)
    finally:
        engine.OnlineAdapter._schedule_probe = staticmethod(original)
    assert len(calls) < len(flags) - 1  # batch 1 is θ0 anyway; the rest are not all compared
    assert sum(calls) == sum(bool(f & FLAG_PRETRAINED) for f in flags) > 0


def test_without_guard_no_flags_are_written(source, tmp_path):
    _, batches = _round_trip(source, tmp_path, guard=False)
    assert [b.flags for b in batches] == [FLAG_SEGMENT_START] + [0] * (len(batches) - 1)


@pytest.mark.parametrize("settings", [
    {"steps_per_batch": 3},
    {"parameters": "last"},
    {"parameters": "bias", "learning_rate": 3e-3},
    {"adapt_batches": 2},
    {"segment_batches": 3, "steps_per_batch": 2},
], ids=["k3", "last-layers", "biases", "early-stop", "segments-k2"])
def test_options_round_trip_exactly(source, tmp_path, settings):
    data, _ = _round_trip(source, tmp_path, **settings)
    header = read_archive(io.BytesIO(data))[0]
    for key, value in settings.items():
        assert header["adaptation"][key] == value


def _tiles(count: int) -> np.ndarray:
    pixels = np.asarray(Image.open(EXAMPLES / "0000.png"))
    tiles = pixels.reshape(4, 16, 4, 16, 3).transpose(0, 2, 4, 1, 3).reshape(16, 3, 16, 16)
    return np.ascontiguousarray(tiles[:count])


def _weights(network) -> dict:
    return {name: p.detach().clone() for name, p in network.named_parameters()}


def test_parameter_selection_freezes_the_rest():
    bundle = load_model(MODEL)
    adapter = OnlineAdapter(bundle, AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, parameters="last",
                                                     learning_rate=1e-2, guard=False))
    before = _weights(bundle.network(3))
    adapter.encode(_tiles(4))
    after = _weights(adapter.adapted_network(3))
    chosen = bundle.network(3).adaptable_parameters("last")
    moved = {name for name in before if not torch_equal(before[name], after[name])}
    assert moved and moved <= chosen
    assert "levels.0.edges.convs.0.weight" not in chosen


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_early_stopping_freezes_after_n_batches():
    bundle = load_model(MODEL)
    adapter = OnlineAdapter(bundle, AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, adapt_batches=2,
                                                     learning_rate=1e-2, guard=False))
    tiles = _tiles(16)
    snapshots = []
    for start in range(0, 16, 4):
        adapter.encode(tiles[start:start + 4])
        snapshots.append(_weights(adapter.adapted_network(3)))
    changed = [any(not torch_equal(a[k], b[k]) for k in a) for a, b in zip(snapshots, snapshots[1:])]
    assert changed == [True, False, False]


def test_unknown_flags_are_refused():
    bundle = load_model(MODEL)
    encoder = OnlineAdapter(bundle, AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0))
    data, _ = encoder.encode(_tiles(4))
    decoder = OnlineAdapter(bundle, AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0))
    with pytest.raises(ValueError, match="unknown batch flags"):
        decoder.decode(bytes([0x80]) + data[1:], (4, 3, 16, 16))
    fresh = OnlineAdapter(bundle, AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0))
    with pytest.raises(ValueError, match="never made"):
        fresh.decode(bytes([FLAG_ROLLBACK | FLAG_SEGMENT_START]) + data[1:], (4, 3, 16, 16))
    with pytest.raises(ValueError, match="segment flag"):
        OnlineAdapter(bundle, AdaptationConfig(tile_size=16, batch_size=4,
                                               batch_pixels=0)).decode(bytes([0]) + data[1:],
                                                                                 (4, 3, 16, 16))


def test_rollback_state_is_kept_for_engine_1_only():
    """FLAG_ROLLBACK came from release 1.0.0 (engine-1 models only): an engine-1 decoder keeps the
    state before each update to undo it; an engine-2 decoder keeps none and refuses the flag."""
    tiles = _tiles(8)
    for model, keeps in ((MODEL, True), ("idf-tiny-test-e2", False)):
        bundle = load_model(model)
        assert int(bundle.engine["version"]) == (1 if keeps else 2)
        config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=0.05)
        encoder = OnlineAdapter(bundle, config)
        first, _ = encoder.encode(tiles[:4])
        second, _ = encoder.encode(tiles[4:])
        decoder = OnlineAdapter(bundle, config)
        decoder.decode(first, (4, 3, 16, 16))
        previous = decoder._tracks[3].previous
        if keeps:  # θ0's weights, the state before the first update
            adapted = dict(decoder.adapted_network(3).named_parameters())
            chosen = [name for name, p in adapted.items() if p.requires_grad]
            expected = dict(bundle.network(3).named_parameters())
            assert len(previous[0]) == len(chosen)
            assert all(torch_equal(value, expected[name]) for name, value in zip(chosen, previous[0]))
        else:
            assert previous is None
            undoing = bytes([second[0] | FLAG_ROLLBACK]) + second[1:]
            with pytest.raises(ValueError, match="never made"):
                decoder.decode(undoing, (4, 3, 16, 16))


def test_info_reports_batches_and_flags(source, tmp_path):
    archive = tmp_path / "a.osoa"
    archive.write_bytes(_archive(source, learning_rate=0.05))
    result = CliRunner().invoke(main, ["info", str(archive)])
    assert result.exit_code == 0, result.output
    batches = read_archive(io.BytesIO(archive.read_bytes()))[2]
    pretrained = sum(bool(b.flags & FLAG_PRETRAINED) for b in batches)
    assert f"batches:    {len(batches)} ({pretrained} coded with the pretrained model" in result.output
    assert "  guard: true" in result.output
    scripted = CliRunner().invoke(main, ["info", "--json", str(archive)])
    assert scripted.exit_code == 0, scripted.output
    info = json.loads(scripted.output)  # one JSON object
    assert info["adaptation"]["guard"] is True and info["engine"]["version"] == 1
    assert info["totals"]["batches"]["count"] == len(batches)
    assert info["totals"]["batches"]["pretrained"] == pretrained


def test_list_shows_how_each_image_was_coded(source_tree, tmp_path):
    """Alpha planes (ALPH) and palette indices (PIDX) sit between a group's table and its batches."""
    archive = tmp_path / "tree.osoa"
    archive.write_bytes(_archive(source_tree))
    result = CliRunner().invoke(main, ["list", str(archive)])
    assert result.exit_code == 0, result.output
    methods = {line.split()[-1]: line.split()[3] for line in result.output.splitlines()[1:]
               if line.startswith("image")}
    assert methods["images/palette.png"] == "palette"
    assert methods["images/rgba.png"] == "model" and methods["images/0000.png"] == "model"
    listed = {line.split()[-1] for line in result.output.splitlines()[1:]}
    assert {"general/photo.jpg", "files/empty.bin", "images/la.png"} <= listed


# -- format 1.1: giving up on adaptation, batches by pixel count --------------------------------

def test_giving_up_codes_the_rest_with_theta0_and_stops_adapting():
    """A learning rate that wrecks the model: θ0 wins three comparisons in a row, the encoder
    sets FLAG_GIVE_UP (with FLAG_PRETRAINED) once, and from then on codes with θ0 and no
    longer steps; the decoder replays it from the flags to the same pixels."""
    bundle = load_model(MODEL)
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=0.5, give_up_after=3)
    encoder = OnlineAdapter(bundle, config)
    tiles = _example_tiles()
    coded, weights = [], []
    for start in range(0, len(tiles), 4):
        coded.append(encoder.encode(tiles[start:start + 4]))
        weights.append(_weights(encoder.adapted_network(3)))
    flags = [stats.flags for _, stats in coded]
    given_up = [i for i, f in enumerate(flags) if f & FLAG_GIVE_UP]
    assert len(given_up) == 1 and flags[given_up[0]] & FLAG_PRETRAINED, flags
    first = given_up[0]
    # the three batches up to it were all coded with θ0 (the comparisons it lost)
    assert all(f & FLAG_PRETRAINED for f in flags[first - 2:first + 1]), flags
    assert all(f == 0 for f in flags[first + 1:]), flags  # later batches need no flag
    assert all(torch_equal(weights[first - 1][k], w[k]) for w in weights[first:] for k in w)
    frozen = OnlineAdapter(bundle, AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, adapt=False))
    for (data, _), start in zip(coded[first + 1:], range(4 * (first + 1), len(tiles), 4)):
        assert data[1:] == frozen.encode(tiles[start:start + 4])[0][1:]  # θ0's very bytes
    decoder = OnlineAdapter(bundle, config)
    for (data, _), start in zip(coded, range(0, len(tiles), 4)):
        assert np.array_equal(decoder.decode(data, (4, 3, 16, 16)), tiles[start:start + 4])


def test_never_giving_up_keeps_adapting():
    _, flags = _coded_bytes(learning_rate=0.5, give_up_after=0)
    assert not any(f & FLAG_GIVE_UP for f in flags) and sum(bool(f & FLAG_PRETRAINED) for f in flags) > 3


def test_giving_up_round_trips_through_the_archive(source, tmp_path):
    data, batches = _round_trip(source, tmp_path, learning_rate=0.5, give_up_after=2)
    given_up = sum(bool(b.flags & FLAG_GIVE_UP) for b in batches)
    assert given_up in (1, 2)  # at most once per channel count (the examples have RGB and grey)
    result = CliRunner().invoke(main, ["info", "-"], input=data)
    assert result.exit_code == 0, result.output
    assert f"adaptation given up {given_up} times" in result.output and "  give_up_after: 2" in result.output
    scripted = json.loads(CliRunner().invoke(main, ["info", "--json", "-"], input=data).output)
    assert scripted["totals"]["batches"]["given_up"] == given_up and scripted["adaptation"]["give_up_after"] == 2


def test_a_give_up_flag_that_cannot_be_obeyed_is_refused():
    bundle = load_model(MODEL)
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0)
    frozen = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, adapt=False)
    data, _ = OnlineAdapter(bundle, frozen).encode(_tiles(4))  # θ0's bytes
    with pytest.raises(BatchError, match="gives up"):  # without FLAG_PRETRAINED
        OnlineAdapter(bundle, config).decode(bytes([FLAG_SEGMENT_START | FLAG_GIVE_UP]) + data[1:], (4, 3, 16, 16))
    decoder = OnlineAdapter(bundle, config)
    pixels = decoder.decode(bytes([FLAG_SEGMENT_START | FLAG_PRETRAINED | FLAG_GIVE_UP]) + data[1:], (4, 3, 16, 16))
    assert np.array_equal(pixels, _tiles(4))
    assert decoder.adapted_network(3) is not bundle.network(3)  # a track exists, and it gave up
    with pytest.raises(BatchError, match="gives up"):  # a second time in the same segment
        decoder.decode(bytes([FLAG_PRETRAINED | FLAG_GIVE_UP]) + data[1:], (4, 3, 16, 16))


@pytest.mark.parametrize("side, batch_pixels, expected", [
    (28, 16384, 20), (32, 16384, 16), (64, 16384, 8), (16, 16384, 64), (2, 16384, 1024), (32, 0, 8),
    (28, 1000, 8)])
def test_small_tiles_are_batched_by_pixels(side, batch_pixels, expected):
    config = AdaptationConfig(batch_size=8, batch_pixels=batch_pixels)
    assert config.batch_size_for(side, side, 3) == expected
    from osoa_zip.imaging.tiles import plan_batches
    batches = plan_batches([(side, side, 3)] * 2000, 64, config.batch_size_for)
    assert [len(b.members) for b in batches[:-1]] == [expected] * (len(batches) - 1)


@pytest.mark.parametrize("height, width, expected", [
    (256, 256, 1), (128, 128, 4), (256, 64, 4), (64, 64, 8), (32, 32, 16), (28, 28, 20), (512, 256, 1)])
def test_large_tiles_are_batched_by_pixels_too(height, width, expected):
    """Format 1.2: at most max(1, batch_pixels_max // (h * w)) tiles, whatever batch_size says."""
    config = AdaptationConfig(batch_size=8, batch_pixels=16384, batch_pixels_max=65536)
    assert config.batch_size_for(height, width, 3) == expected
    assert AdaptationConfig(batch_size=8, batch_pixels=16384, batch_pixels_max=0).batch_size_for(
        height, width, 3) == max(8, min(1024, 16384 // (height * width)))


def test_a_header_from_before_1_2_has_no_cap():
    header = AdaptationConfig(learning_rate=DEFAULT_LEARNING_RATE, parameters="all").to_header()
    del header["batch_pixels_max"]
    config = AdaptationConfig.from_header(header)
    assert config.batch_pixels_max == 0 and config.batch_size_for(256, 256, 3) == 8


@pytest.mark.parametrize("side, gray_batch_pixels, expected_gray", [
    (32, 65536, 64), (28, 65536, 83), (32, 32768, 32), (32, 0, 16), (64, 65536, 16), (128, 65536, 4)])
def test_grey_tiles_have_their_own_pixel_count(side, gray_batch_pixels, expected_gray):
    """Format 1.3: gray_batch_pixels sizes grey batches (0: as batch_pixels); RGB ones keep batch_pixels."""
    config = AdaptationConfig(batch_size=8, batch_pixels=16384, gray_batch_pixels=gray_batch_pixels)
    assert config.batch_size_for(side, side, 1) == expected_gray
    assert config.batch_size_for(side, side, 3) == AdaptationConfig(batch_size=8, batch_pixels=16384).batch_size_for(
        side, side, 3)
    from osoa_zip.imaging.tiles import plan_batches
    batches = plan_batches([(side, side, 1), (side, side, 3)] * 300, 256, config.batch_size_for)
    grey = [len(b.members) for b in batches if b.channels == 1]
    assert grey[:-1] == [expected_gray] * (len(grey) - 1)


def test_a_header_from_before_1_3_batches_grey_tiles_like_rgb_ones():
    header = AdaptationConfig(learning_rate=DEFAULT_LEARNING_RATE, parameters="all", batch_pixels=16384).to_header()
    del header["gray_batch_pixels"]
    config = AdaptationConfig.from_header(header)
    assert config.gray_batch_pixels == 0
    assert config.batch_size_for(32, 32, 1) == config.batch_size_for(32, 32, 3) == 16


def test_large_tiles_round_trip_one_to_a_batch(source, tmp_path):
    """48 x 48 tiles capped at 2304 pixels: one per batch, decoded exactly through the archive."""
    output = io.BytesIO()
    compress([source], output, model=MODEL, adaptation=AdaptationConfig(
        tile_size=48, batch_size=8, batch_pixels=0, batch_pixels_max=48 * 48), triage=False)
    data = output.getvalue()
    decompress(io.BytesIO(data), tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")
    batches = read_archive(io.BytesIO(data))[2]
    assert read_archive(io.BytesIO(data))[0]["adaptation"]["batch_pixels_max"] == 48 * 48
    assert max(b.subpixels for b in batches) <= 3 * 48 * 48


def test_a_header_from_before_1_1_means_what_it_meant_then():
    """Format 1.0 headers have no batch_pixels or give_up_after: whole batch_size batches, never give up."""
    header = AdaptationConfig(learning_rate=DEFAULT_LEARNING_RATE, parameters="all").to_header()
    old = {key: value for key, value in header.items() if key not in LEGACY_VALUES}
    config = AdaptationConfig.from_header(old)
    assert (config.batch_pixels, config.give_up_after) == (0, 0)
    assert AdaptationConfig.from_header(header) == AdaptationConfig(learning_rate=DEFAULT_LEARNING_RATE,
                                                                    parameters="all")


def test_batches_by_pixels_round_trip_and_list(source, tmp_path):
    """16 x 16 tiles, 1024 pixels a batch: four to a batch (edge tiles of other shapes too)."""
    data, batches = _round_trip(source, tmp_path, batch_pixels=1024, batch_size=1)
    header = read_archive(io.BytesIO(data))[0]
    assert header["adaptation"]["batch_pixels"] == 1024
    assert len(batches) < len(_round_trip(source, tmp_path / "single", batch_pixels=0, batch_size=1)[1])
    archive = tmp_path / "a.osoa"
    archive.write_bytes(data)
    result = CliRunner().invoke(main, ["list", str(archive)])
    assert result.exit_code == 0, result.output


def test_grey_images_adapt_their_last_layers_by_default():
    """gray_parameters (1.1, default "last"): the grey network steps only its output layers and
    final prior, the RGB one everything; a 1.0 header ("" by LEGACY_VALUES) means `parameters`."""
    bundle = load_model(MODEL)
    config = adaptation_for(MODEL, AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=1e-2,
                                                    guard=False))
    assert (config.parameters_for(1), config.parameters_for(3)) == ("last", "all")
    adapter = OnlineAdapter(bundle, config)
    grey = np.ascontiguousarray(_tiles(4).mean(axis=1, keepdims=True).astype(np.uint8))
    moved = {}
    for channels, tiles in ((1, grey), (3, _tiles(4))):
        before = _weights(bundle.network(channels))
        adapter.encode(tiles)
        after = _weights(adapter.adapted_network(channels))
        moved[channels] = {name for name in before if not torch_equal(before[name], after[name])}
    assert moved[1] and moved[1] <= bundle.network(1).adaptable_parameters("last")
    assert "levels.0.edges.convs.0.weight" in moved[3]
    legacy = AdaptationConfig.from_header({k: v for k, v in config.to_header().items() if k != "gray_parameters"})
    assert legacy.parameters_for(1) == "all"
    with pytest.raises(ValueError, match="unknown parameter selection"):
        AdaptationConfig(gray_parameters="most")


@pytest.mark.parametrize("setting, value, message", [
    ("tile_size", 15, "the tile size must be even and at least 2, not 15"),
    ("tile_size", 0, "the tile size must be even and at least 2, not 0"),
    ("batch_size", 0, "the batch size must be at least 1"),
    ("steps_per_batch", -1, "steps per batch and the segment size must not be negative"),
    ("optimizer", "sgd", "unknown optimizer 'sgd'"),
])
def test_settings_are_checked_in_one_place(setting, value, message, tmp_path):
    """AdaptationConfig refuses a bad setting with one message wherever it comes from: the
    Python API, a header (data from outside), and both commands that take it."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        AdaptationConfig(**{setting: value})
    header = {**AdaptationConfig(learning_rate=DEFAULT_LEARNING_RATE, parameters="all").to_header(), setting: value}
    with pytest.raises(ValueError, match=f"^{message}$"):
        AdaptationConfig.from_header(header)
    options = {"tile_size": "--tile-size", "batch_size": "--batch-size", "steps_per_batch": "--steps-per-batch"}
    if setting in options and value > 0:  # the options' own ranges catch the others first
        for command in ("compress", "bench"):
            result = CliRunner().invoke(main, [command, str(EXAMPLES), str(tmp_path / "out"), options[setting],
                                               str(value)] if command == "compress" else
                                        [command, str(EXAMPLES), "-o", str(tmp_path / "out"), options[setting],
                                         str(value)])
            assert result.exit_code == 2 and result.stderr == f"osoa-zip: error: {message}\n", result.output
        assert not (tmp_path / "out").exists()
