"""The v2 flow: cross-channel conditioning for RGB (``channel_coupling``, ``mean_remainder``).

An untrained tiny v2 network is built here (no checkpoint needed), with
random non-zero biases so that the cross-channel coefficients and the
rounding remainders really are non-zero.  Decoding replays the adaptation,
so a round trip over several batches with adaptation on proves that the new
path is exact in the float64 engine.
"""
from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.exact.logistic import LogisticTables
from osoa_zip.models.idf import COEFFICIENT_LIMIT
from osoa_zip.models.registry import (
    NETWORK_OVERRIDES,
    FlowBundle,
    ModelError,
    available_models,
    build_networks,
    load_checkpoint,
    load_model,
    network_config,
    save_checkpoint,
    sha256_file,
)
from osoa_zip.models.training import warm_start

TINY_V2 = {"hidden": 8, "depth": 2, "levels": 2, "channel_coupling": True, "mean_remainder": True}
TILE = 16
ADAPTATION = AdaptationConfig(tile_size=TILE, batch_size=4, batch_pixels=0, learning_rate=2e-3, steps_per_batch=1)



def _tiny_v2_networks(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    networks = build_networks(TINY_V2)
    tables = LogisticTables.from_tensors(LogisticTables.build())
    with torch.no_grad():
        for network in networks.values():
            for name, parameter in network.named_parameters():
                if name.endswith("bias"):  # zero biases would leave coefficients near zero
                    parameter.normal_(0.0, 0.5)
            network.to(torch.float64)
            network.tables = tables
    return networks


def _plausible_v2_networks(seed: int = 0) -> dict:
    """Untrained but sane: small corrections, scale e**2, non-zero cross-channel coefficients.

    A network with random biases mispredicts so badly that many latents take
    the escape path, where coded bits and the logistic's NLL legitimately
    differ (v1 alike); this one keeps latents inside the coding windows.
    """
    torch.manual_seed(seed)
    networks = build_networks(TINY_V2)
    tables = LogisticTables.from_tensors(LogisticTables.build())
    with torch.no_grad():
        for network in networks.values():
            channels = network.channels
            for level in network.levels:
                for net, predicted in ((level.edges, 2 * channels), (level.centres, channels)):
                    last = net.convs[-1]
                    last.weight.mul_(0.05)
                    last.bias.zero_()
                    last.bias[2 * predicted:3 * predicted] = 2.0  # log-scale
                    last.bias[3 * predicted:].uniform_(-1.0, 1.0)  # coefficients (RGB only)
            network.to(torch.float64)
            network.tables = tables
    return networks


def _bundle(networks) -> FlowBundle:
    return FlowBundle(name="tiny-v2-untrained", sha256="", config=TINY_V2, networks=networks)


def _rgb_tiles() -> np.ndarray:
    """Every RGB image of examples/images cut into 16x16 tiles, N x 3 x 16 x 16 uint8."""
    tiles = []
    for path in sorted(EXAMPLES.glob("*.png")):
        image = Image.open(path)
        if image.mode != "RGB":
            continue
        pixels = np.asarray(image)
        h, w = pixels.shape[0] // TILE, pixels.shape[1] // TILE
        cut = pixels[:h * TILE, :w * TILE].reshape(h, TILE, w, TILE, 3).transpose(0, 2, 4, 1, 3)
        tiles.append(cut.reshape(h * w, 3, TILE, TILE))
    assert tiles, "examples/images has no RGB image"
    return np.ascontiguousarray(np.concatenate(tiles))


def _weights(network) -> dict:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_v2_networks_have_coefficients_only_for_rgb():
    v1 = build_networks({k: TINY_V2[k] for k in ("hidden", "depth", "levels")})
    v2 = build_networks(TINY_V2)
    assert v2[3].channel_coupling and v2[3].mean_remainder
    assert not v2[1].channel_coupling and not v2[1].mean_remainder
    shapes = lambda net: {k: tuple(v.shape) for k, v in net.state_dict().items()}  # noqa: E731
    assert shapes(v2[1]) == shapes(v1[1])  # gray: nothing changes, v1 gray weights fit
    widened = {k for k in shapes(v1[3]) if shapes(v1[3])[k] != shapes(v2[3])[k]}
    assert widened and all(".convs.1." in k for k in widened)  # only the last conv of each coupling


def test_round_trip_with_adaptation_is_exact_over_several_batches():
    tiles = _rgb_tiles()[:24]  # six batches of four
    networks = _tiny_v2_networks()
    encoder, decoder = OnlineAdapter(_bundle(networks), ADAPTATION), OnlineAdapter(_bundle(networks), ADAPTATION)
    coded = []
    for start in range(0, len(tiles), ADAPTATION.batch_size):
        batch = np.ascontiguousarray(tiles[start:start + ADAPTATION.batch_size])
        data, _ = encoder.encode(batch)
        coded.append((data, batch))
    initial = _weights(networks[3])
    for data, batch in coded:
        restored = decoder.decode(data, batch.shape)
        assert np.array_equal(restored, batch)
    adapted_encoder, adapted_decoder = _weights(encoder.adapted_network(3)), _weights(decoder.adapted_network(3))
    assert adapted_encoder.keys() == adapted_decoder.keys()
    for key in adapted_encoder:
        assert torch.equal(adapted_encoder[key], adapted_decoder[key]), key
    # Adaptation did move the weights, including the rows that produce the coefficients.
    last = "levels.0.edges.convs.1.weight"
    assert not torch.equal(adapted_encoder[last][-6:], initial[last][-6:])


def test_cross_channel_coefficients_reach_the_offsets():
    """Changing only red on the finest s1 sub-lattice moves green's and blue's offsets there.

    Those red values are not in the context of the finest edge coupling (s0
    is) nor in its base, so only the cross-channel terms can carry them.
    """
    network = _tiny_v2_networks()[3]
    tiles = torch.from_numpy(_rgb_tiles()[:2]).to(torch.float64)
    changed = tiles.clone()
    changed[:, 0, 0::2, 1::2] = 255 - changed[:, 0, 0::2, 1::2]
    offsets = []
    for x in (tiles, changed):
        targets, seen = network._targets(x), {}

        def take(key, mean, log_scale, logits, offset, targets=targets, seen=seen):
            seen[key] = offset.clone()
            return network._target(targets, key)

        with torch.no_grad():
            network._traverse(x.shape, take)
        offsets.append(seen)
    assert (0, "edges") not in offsets[0] and {(0, "edges", c) for c in range(3)} <= offsets[0].keys()
    assert torch.equal(offsets[0][(0, "edges", 0)], offsets[1][(0, "edges", 0)])  # red: same offsets
    for channel in (1, 2):  # green and blue of s1 (index 0 of the group) move
        assert not torch.equal(offsets[0][(0, "edges", channel)][:, 0], offsets[1][(0, "edges", channel)][:, 0])
    output = network.levels[0].edges(torch.zeros(1, 3, 4, 4, dtype=torch.float64))
    assert output.shape[1] == 3 * 2 * 3 + 2 * 3  # translation, mean, log-scale; 3 coefficients x 2
    assert COEFFICIENT_LIMIT == 2.0


def test_nll_matches_coded_bits():
    tiles = _rgb_tiles()
    networks = _plausible_v2_networks(seed=1)
    adapter = OnlineAdapter(_bundle(networks), AdaptationConfig(adapt=False, tile_size=TILE, batch_size=16,
                                                                batch_pixels=0))
    bits = nll = 0.0
    for start in range(0, len(tiles), 16):
        batch = np.ascontiguousarray(tiles[start:start + 16])
        with torch.no_grad():
            nll += float(networks[3].nll(torch.from_numpy(batch).to(torch.float64)))
        data, stats = adapter.encode(batch)
        bits += stats.bits
    assert abs(bits - nll) / nll < 0.02, (bits, nll)


def test_zero_coefficients_reproduce_v1():
    """Warm-started from v1 weights, coupling without the remainder is v1 (up to summation order)."""
    v1_config = {k: TINY_V2[k] for k in ("hidden", "depth", "levels")}
    torch.manual_seed(3)
    v1 = build_networks(v1_config)[3]
    coupled = build_networks({**v1_config, "channel_coupling": True})[3]
    widened = warm_start(coupled, v1.state_dict())
    assert len(widened) == 2 * 2 * v1_config["levels"]  # weight and bias of 2 couplings per level
    tables = LogisticTables.from_tensors(LogisticTables.build())
    x = torch.from_numpy(_rgb_tiles()[:4]).to(torch.float64)
    values = []
    for network in (v1, coupled):
        network.to(torch.float64)
        network.tables = tables
        with torch.no_grad():
            values.append(float(network.nll(x)))
    assert values[0] == pytest.approx(values[1], rel=1e-12)


def test_archive_round_trip_of_the_example_folder(tmp_path, monkeypatch):
    """The real archive path, with a tiny v2 checkpoint installed through $OSOA_ZIP_MODELS.

    The archive stores an image group as plain files when coding would not
    make it smaller; an untrained network cannot beat the examples' PNG
    compression, so the folder holds the same pixels as uncompressed PNGs.
    """
    from osoa_zip.archive import compress, decompress

    models = tmp_path / "models"
    models.mkdir()
    digest = save_checkpoint(models / "tiny-v2.safetensors", TINY_V2, _plausible_v2_networks(seed=2))
    (models / "manifest.json").write_text(json.dumps({"models": {"tiny-v2": {
        "file": "tiny-v2.safetensors", "sha256": digest, "family": "flow",
        "architecture": "sublattice-idf", "config": TINY_V2}}}))
    monkeypatch.setenv("OSOA_ZIP_MODELS", str(models))
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(EXAMPLES.glob("*.png")):
        Image.open(path).save(folder / path.name, compress_level=0)
    output = io.BytesIO()
    summary = compress([folder], output, model="tiny-v2", adaptation=ADAPTATION, triage=False)
    rgb = sum(Image.open(p).mode == "RGB" for p in folder.glob("*.png"))
    assert summary.images == len(list(folder.glob("*.png"))) and rgb >= 4
    assert len(summary.batches) >= 4  # several adapted batches
    destination = tmp_path / "out"
    decompress(io.BytesIO(output.getvalue()), destination)
    for path in sorted(folder.glob("*.png")):
        restored = Image.open(next(destination.rglob(path.name)))
        original = Image.open(path)
        assert restored.mode == original.mode
        assert np.array_equal(np.asarray(restored), np.asarray(original)), path.name


def test_unknown_architecture_keys_are_refused(tmp_path):
    networks = build_networks({"hidden": 4, "depth": 2, "levels": 1})
    path = tmp_path / "future.safetensors"
    save_checkpoint(path, {"hidden": 4, "depth": 2, "levels": 1, "attention": True}, networks)
    with pytest.raises(ModelError, match="attention"):
        load_checkpoint(path, name="future", sha256=sha256_file(path))


def test_a_network_may_have_its_own_shape_and_loads_as_saved(tmp_path):
    """config["networks"]["gray"] gives the grey network values of its own (level -1's model pairs
    a small grey network with the default's colour one); the checkpoint loads both as written."""
    config = {"hidden": 6, "depth": 3, "levels": 1, "channel_coupling": True, NETWORK_OVERRIDES: {"gray": {"hidden": 4,
                                                                                                           "depth": 2}}}
    networks = build_networks(config)
    assert (len(networks[3].levels[0].edges.convs), len(networks[1].levels[0].edges.convs)) == (3, 2)
    assert network_config(config, 1)["hidden"] == 4 and network_config(config, 3)["hidden"] == 6
    assert NETWORK_OVERRIDES not in network_config(config, 1)
    path = tmp_path / "paired.safetensors"
    save_checkpoint(path, config, networks)
    bundle = load_checkpoint(path, name="paired", sha256=sha256_file(path))
    for channels, network in networks.items():
        loaded = bundle.network(channels).state_dict()
        assert loaded.keys() == network.state_dict().keys()
        assert all(torch.equal(loaded[key], value.to(loaded[key].dtype)) for key, value in network.state_dict().items())


@pytest.mark.parametrize("overrides, named", [({"gray": {"attention": True}}, "networks.gray.attention"),
                                              ({"cmyk": {"hidden": 4}}, "networks.cmyk")])
def test_unknown_network_values_are_refused(tmp_path, overrides, named):
    networks = build_networks({"hidden": 4, "depth": 2, "levels": 1})
    path = tmp_path / "future.safetensors"
    save_checkpoint(path, {"hidden": 4, "depth": 2, "levels": 1, NETWORK_OVERRIDES: overrides}, networks)
    with pytest.raises(ModelError, match=named):
        load_checkpoint(path, name="future", sha256=sha256_file(path))


@pytest.mark.skipif("idf-sublattice-v2" not in available_models(), reason="v2 checkpoint not installed")
def test_shipped_v2_reuses_v1_gray_weights():
    v1, v2 = load_model("idf-sublattice-v1"), load_model("idf-sublattice-v2")
    assert v2.config.get("channel_coupling") is True
    gray1, gray2 = v1.network(1).state_dict(), v2.network(1).state_dict()
    assert gray1.keys() == gray2.keys()
    assert all(torch.equal(gray1[k], gray2[k]) for k in gray1)
    assert v2.network(3).channel_coupling and not v1.network(3).channel_coupling
    assert copy.deepcopy(v2.network(3)).mean_remainder
