"""The VAE family: bits-back ANS on the exact core (models/vae.py, coding/bitsback.py).

The decoder replays every adaptation step, including the VAE's sampled
training loss, so round trips with adaptation on prove that the sample, the
loss and its gradients are exact; a golden hash pins the adapted weights.
Bits-back is checked as an invariant (a pop undone by a push gives back the
coder's exact state) and by its accounting (bytes vs negative ELBO).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, subprocess_env
from PIL import Image
from test_portability import FULL_MATRIX, SUBSET, _check, _ids, _tree_digest

from osoa_zip.adapt.config import DEFAULT_LEARNING_RATE
from osoa_zip.adapt.engine import FLAG_CHAIN_HEAD, FLAG_CHAINED, AdaptationConfig, BatchError, OnlineAdapter
from osoa_zip.coding.ans import CorruptStream, Encoder
from osoa_zip.coding.bitsback import StackCoder
from osoa_zip.coding.logistic_coder import pop_factor, push_factor
from osoa_zip.exact.logistic import LogisticTables, nll_bits
from osoa_zip.exact.noise import logistic_quantile, uniform_q24
from osoa_zip.models.registry import ModelError, build_networks, load_model
from osoa_zip.models.vae import TOP_NOISE_SALT

MODEL = "vae-tiny-test"
HIERARCHICAL = "vae-hier-tiny-test"  # two latent levels, mixture likelihood
MODELS = [MODEL, HIERARCHICAL]
TILE = 16
ADAPTATION = AdaptationConfig(tile_size=TILE, batch_size=4, batch_pixels=0, learning_rate=2e-3, steps_per_batch=1,
                              guard=False)  # the golden weights pin the replayed steps alone
# sha256 of each tiny VAE's RGB weights after three adapted batches of _tiles("RGB")
# (ADAPTATION).  They must never change: archives written before would stop decoding.
GOLDEN_ADAPTED_WEIGHTS = {MODEL: "2e79ff0100aee60dbb3b6735fe81c7f80a9b958bd35b9d18cc1af06163aa43c0",
                          HIERARCHICAL: "8080b31758e3f831d2ad68d2a4e01ba9c50cf3072d15593b77ab9ef9ea6ec497"}



def _tiles(mode: str, tile: int = TILE) -> np.ndarray:
    """The example images of one mode cut into tile x tile tiles, N x C x tile x tile uint8."""
    tiles = []
    for path in sorted(EXAMPLES.glob("*.png")):
        image = Image.open(path)
        if image.mode != mode:
            continue
        pixels = np.asarray(image).reshape(image.size[1], image.size[0], -1)
        h, w = pixels.shape[0] // tile, pixels.shape[1] // tile
        cut = pixels[:h * tile, :w * tile].reshape(h, tile, w, tile, -1).transpose(0, 2, 4, 1, 3)
        tiles.append(cut.reshape(h * w, -1, tile, tile))
    assert tiles, f"examples/images has no {mode} image"
    return np.ascontiguousarray(np.concatenate(tiles))


def _weights_digest(network) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        digest.update(name.encode() + value.detach().numpy().astype("<f8").tobytes())
    return digest.hexdigest()


def _round_trip(batches, config: AdaptationConfig, model: str = MODEL):
    """Encode then decode the batches with fresh adapters; return (coded bytes, both adapters)."""
    encoder, decoder = OnlineAdapter(load_model(model), config), OnlineAdapter(load_model(model), config)
    coded = [encoder.encode(np.ascontiguousarray(batch))[0] for batch in batches]
    for data, batch in zip(coded, batches):
        assert np.array_equal(decoder.decode(data, batch.shape), batch)
    return coded, encoder, decoder


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("adapt, steps", [(False, 1), (True, 1), (True, 3)])
def test_round_trip_is_exact(adapt, steps, model):
    tiles = _tiles("RGB")[:16]
    config = AdaptationConfig(adapt=adapt, tile_size=TILE, batch_size=4,
                              batch_pixels=0, learning_rate=2e-3, steps_per_batch=steps)
    _, encoder, decoder = _round_trip([tiles[i:i + 4] for i in range(0, 16, 4)], config, model)
    assert _weights_digest(encoder.adapted_network(3)) == _weights_digest(decoder.adapted_network(3))
    moved = _weights_digest(encoder.adapted_network(3)) != _weights_digest(load_model(model).network(3))
    assert moved == adapt


@pytest.mark.parametrize("model", MODELS)
def test_round_trip_of_gray_and_odd_shaped_tiles(model):
    """Sides that are not multiples of 4 (padded latents; odd top latents), 2x2 tiles, a batch of one, gray."""
    rgb, gray = _tiles("RGB"), _tiles("L")
    batches = [rgb[:3, :, :6, :10], rgb[3:8, :, :2, :2], rgb[8:9], gray[:4, :, :14, :16], gray[4:5, :, :2, :6]]
    _round_trip(batches, ADAPTATION, model)


def _initial_bits(network, tile: torch.Tensor) -> float:
    """About what a tile coded on an empty stack pays more: -log q(z|x) (and -log q(z_top|z))."""
    with torch.no_grad():
        mean, log_scale = network.posterior(tile)
        z = network._sample(mean, log_scale, tile)
        bits = float(nll_bits(z, mean, log_scale, network.tables).sum())
        if network.top_channels:
            top_mean, top_log_scale = network.top_posterior(z)
            z_top = network._sample(top_mean, top_log_scale, tile, TOP_NOISE_SALT)
            bits += float(nll_bits(z_top, top_mean, top_log_scale, network.tables).sum())
    return bits


@pytest.mark.parametrize("model", MODELS)
def test_bytes_match_the_negative_elbo(model):
    """Bits written = the batch's negative ELBO (one sample) + the first tile's -log q, within 1%."""
    tiles = _tiles("RGB")[:64]
    bundle = load_model(model)
    network = bundle.network(3)
    adapter = OnlineAdapter(bundle, AdaptationConfig(adapt=False, tile_size=TILE, batch_size=16, batch_pixels=0))
    bits = nll = initial = 0.0
    for start in range(0, len(tiles), 16):
        batch = tiles[start:start + 16]
        pixels = torch.from_numpy(batch).to(torch.float64)
        with torch.no_grad():
            nll += float(network.nll(pixels))
        # The first tile coded (the batch's last) gets no bits back.
        initial += _initial_bits(network, pixels[-1:])
        bits += adapter.encode(batch)[1].bits
    assert initial > 0
    assert abs(bits - (nll + initial)) / nll < 0.01, (bits, nll, initial)


def _encode_chains(encoder: OnlineAdapter, batches, chain: int) -> list:
    coded = []
    for start in range(0, len(batches), chain):
        coded += encoder.encode_chain([np.ascontiguousarray(b) for b in batches[start:start + chain]])
    return coded


def _mixed_batches():
    rgb, gray = _tiles("RGB"), _tiles("L")
    return [rgb[:3, :, :6, :10], gray[:4, :, :14, :16], rgb[3:7], rgb[8:9], gray[4:5, :, :2, :6], rgb[9:13]]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("adapt, guard", [(False, False), (True, False), (True, True)])
def test_chained_round_trip_is_exact(adapt, guard, model):
    """Chains of 4 and 2 batches of both channel counts and odd shapes decode exactly, with
    the same adaptation on both sides; only a chain's head carries bytes."""
    batches = _mixed_batches()
    config = AdaptationConfig(adapt=adapt, guard=guard, tile_size=TILE, batch_size=4, batch_pixels=0,
                              learning_rate=2e-3, chain_batches=4)
    encoder = OnlineAdapter(load_model(model), config)
    coded = _encode_chains(encoder, batches, 4)
    flags = [data[0] for data, _ in coded]
    assert [bool(f & FLAG_CHAIN_HEAD) for f in flags] == [True, False, False, False, True, False]
    assert [bool(f & FLAG_CHAINED) for f in flags] == [False, True, True, True, False, True]
    assert [len(data) for data, _ in coded if data[0] & FLAG_CHAINED] == [1, 1, 1, 1]
    assert sum(stats.bits for _, stats in coded) == 8 * sum(len(data) for data, _ in coded)
    decoder = OnlineAdapter(load_model(model), config)
    for (data, _), batch in zip(coded, batches):
        assert np.array_equal(decoder.decode(data, batch.shape), batch)
    decoder.end_run()
    for channels in (1, 3):
        assert _weights_digest(encoder.adapted_network(channels)) == _weights_digest(decoder.adapted_network(channels))


def test_chaining_changes_the_bytes_not_the_adaptation():
    """The weights after three chained batches are the golden ones of three batches coded alone."""
    tiles = _tiles("RGB")[:12]
    adapter = OnlineAdapter(load_model(MODEL), ADAPTATION)
    adapter.encode_chain([tiles[start:start + 4] for start in range(0, 12, 4)])
    assert _weights_digest(adapter.adapted_network(3)) == GOLDEN_ADAPTED_WEIGHTS[MODEL]


@pytest.mark.parametrize("model", MODELS)
def test_a_chain_pays_the_initial_bits_once(model):
    """Four batches on one stack: bits = their negative ELBO + one tile's -log q (within 1%),
    and (vae-tiny-test) fewer than the same batches coded alone, by about three tiles' initial bits."""
    tiles = _tiles("RGB")[:64]
    bundle = load_model(model)
    network = bundle.network(3)
    config = AdaptationConfig(adapt=False, tile_size=TILE, batch_size=16, batch_pixels=0, chain_batches=4)
    batches = [tiles[start:start + 16] for start in range(0, 64, 16)]
    chained = sum(stats.bits for _, stats in OnlineAdapter(bundle, config).encode_chain(batches))
    alone = sum(OnlineAdapter(bundle, config).encode(batch)[1].bits for batch in batches)
    with torch.no_grad():
        pixels = torch.from_numpy(tiles).to(torch.float64)
        nll = sum(float(network.nll(pixels[start:start + 16])) for start in range(0, 64, 16))
    initial = [_initial_bits(network, pixels[start:start + 1])  # each batch's last tile is coded first
               for start in range(15, 64, 16)]
    assert abs(chained - (nll + initial[-1])) / nll < 0.01, (chained, nll, initial)
    if model == MODEL:
        # Coded alone, each batch's last tile takes the posterior's modes: about its -log q more,
        # for a model whose sampled ELBO is near its modes' joint (the barely trained tiny
        # hierarchical one codes modes far better than samples, so there chaining costs bits).
        saved = alone - chained
        assert 0.5 * sum(initial[:-1]) < saved < 1.5 * sum(initial[:-1]) + 3 * 64, (saved, initial)


def _broken(case: str, coded: list) -> list:
    head, chained = coded[0][0], coded[1][0]
    if case == "no head":
        return [chained]
    if case == "cut short":  # the head promises three batches, the run ends after two
        return [head, chained, None]
    if case == "interrupted":  # a batch of its own where the chain's third was due
        alone = OnlineAdapter(load_model(MODEL), AdaptationConfig(tile_size=TILE, batch_size=4, batch_pixels=0))
        return [head, chained, alone.encode(_tiles("RGB")[:4])[0]]
    if case == "too long":  # a head promising more batches than the header's chain_batches
        return [head[:1] + (9).to_bytes(2, "little") + head[3:]]
    if case == "one":
        return [head[:1] + (1).to_bytes(2, "little") + head[3:]]
    if case == "bytes after flags":
        return [head, chained + b"\x00"]
    if case == "head and chained":
        return [head, bytes([chained[0] | FLAG_CHAIN_HEAD])]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no head", "cut short", "interrupted", "too long", "one", "bytes after flags",
                                  "head and chained"])
def test_broken_chains_are_clean_errors(case):
    config = AdaptationConfig(adapt=False, tile_size=TILE, batch_size=4, batch_pixels=0, chain_batches=3)
    tiles = _tiles("RGB")[:12]
    batches = [tiles[start:start + 4] for start in range(0, 12, 4)]
    coded = OnlineAdapter(load_model(MODEL), config).encode_chain(batches)
    decoder = OnlineAdapter(load_model(MODEL), config)
    with pytest.raises(BatchError):
        for data in _broken(case, coded):
            if data is None:
                decoder.end_run()
            else:
                decoder.decode(data, batches[0].shape)
        decoder.end_run()


def test_flows_do_not_chain():
    """A flow's batches stay independent whatever chain_batches says (encode_chain codes them
    one by one, each its own stream), and a chain head is refused."""
    config = AdaptationConfig(tile_size=TILE, batch_size=4, batch_pixels=0, chain_batches=4)
    flow = OnlineAdapter(load_model("idf-tiny-test"), config)
    assert flow.chain_length == 1
    batches = [_tiles("RGB")[:4], _tiles("RGB")[4:8], _tiles("RGB")[:4]]
    coded = [data for data, _ in flow.encode_chain(batches)]
    one_by_one = OnlineAdapter(load_model("idf-tiny-test"), config)
    assert coded == [one_by_one.encode(tiles)[0] for tiles in batches]
    assert all(not data[0] & (FLAG_CHAIN_HEAD | FLAG_CHAINED) and len(data) > 1 for data in coded)
    head = OnlineAdapter(load_model(MODEL), config).encode_chain([_tiles("RGB")[:4]] * 2)[0][0]
    with pytest.raises(BatchError, match="not allowed"):
        OnlineAdapter(load_model("idf-tiny-test"), config).decode(head, (4, 3, TILE, TILE))


def test_a_chain_never_crosses_a_segment_start():
    config = AdaptationConfig(tile_size=TILE, batch_size=4, batch_pixels=0, chain_batches=4, segment_batches=2)
    tiles = _tiles("RGB")[:12]
    with pytest.raises(ValueError, match="segment start"):
        OnlineAdapter(load_model(MODEL), config).encode_chain([tiles[:4], tiles[4:8], tiles[8:12]])


def test_the_guard_compares_every_vae_batch(monkeypatch):
    """No back-off for bits-back models: θ0 is compared on every batch after the first update
    (a flow backs off after clear wins; a VAE's adaptation swings too much for that)."""
    calls = []
    frozen = OnlineAdapter._analyse_frozen.__func__

    def counted(cls, network, pixels):
        calls.append(1)
        return frozen(cls, network, pixels)

    monkeypatch.setattr(OnlineAdapter, "_analyse_frozen", classmethod(counted))
    tiles = _tiles("RGB")[:40]
    config = AdaptationConfig(tile_size=TILE, batch_size=4, batch_pixels=0, learning_rate=1e-3, give_up_after=0,
                              chain_batches=5)
    adapter = OnlineAdapter(load_model(MODEL), config)
    for start in range(0, 40, 20):
        adapter.encode_chain([tiles[i:i + 4] for i in range(start, start + 20, 4)])
    assert len(calls) == 9


@pytest.mark.parametrize("model", MODELS)
def test_adapted_weights_match_golden(model):
    tiles = _tiles("RGB")[:12]
    adapter = OnlineAdapter(load_model(model), ADAPTATION)
    for start in range(0, 12, 4):
        adapter.encode(tiles[start:start + 4])
    assert _weights_digest(adapter.adapted_network(3)) == GOLDEN_ADAPTED_WEIGHTS[model]


@pytest.mark.parametrize("damage", ["truncate", "flip-first", "flip-last", "append", "garbage"])
def test_damaged_stream_is_a_clean_error(damage):
    tiles = _tiles("RGB")[:4]
    adapter = OnlineAdapter(load_model(MODEL), AdaptationConfig(adapt=False, tile_size=TILE, batch_size=4,
                                                                batch_pixels=0))
    data = bytearray(adapter.encode(tiles)[0])
    if damage == "truncate":
        data = data[:-4]
    elif damage == "flip-first":
        data[0] ^= 0x40
    elif damage == "flip-last":
        data[-1] ^= 0x40
    elif damage == "append":
        data += b"\x01\x00\x00\x00"
    else:
        data = bytearray(np.random.default_rng(5).bytes(len(data)))
    fresh = OnlineAdapter(load_model(MODEL), AdaptationConfig(adapt=False, tile_size=TILE, batch_size=4,
                                                              batch_pixels=0))
    try:
        fresh.decode(bytes(data), tiles.shape)
    except ValueError:  # CorruptStream, or pixels out of range
        return
    pytest.fail("a damaged stream decoded without an error")


def test_pop_then_push_restores_the_stack():
    """Bits-back's invariant: popping under q and pushing the result back returns the exact state."""
    tables = LogisticTables.from_tensors(LogisticTables.build())
    coder = StackCoder()
    filler = Encoder()
    filler.push_uniform(np.arange(200) % 4096, 4096)
    coder.push(filler)
    before = coder.finish()
    mean = torch.tensor([[0.0, 3.5, -20.25, 100.0]], dtype=torch.float64)
    log_scale = torch.tensor([[-2.0, 0.5, 2.0, 4.5]], dtype=torch.float64)
    z = pop_factor(coder, tables, mean, log_scale, escape=False)
    assert coder.finish() != before
    group = Encoder()
    push_factor(group, tables, z, mean, log_scale, escape=False)
    coder.push(group)
    assert coder.finish() == before


def test_posterior_refuses_values_outside_its_window():
    tables = LogisticTables.from_tensors(LogisticTables.build())
    with pytest.raises(CorruptStream):
        push_factor(Encoder(), tables, torch.tensor([50.0]), torch.tensor([0.0]), torch.tensor([0.0]), escape=False)


def _splitmix64(value: int) -> int:
    """The reference hash, in Python integers."""
    mask = (1 << 64) - 1
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & mask
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & mask
    return value ^ (value >> 31)


def test_replayable_noise_is_pinned_and_logistic():
    seed = 12345
    reference = [(_splitmix64((seed + i * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) >> 40) + 0.5 for i in range(4)]
    assert uniform_q24(seed, 4).tolist() == reference == GOLDEN_UNIFORMS
    tables = LogisticTables.from_tensors(LogisticTables.build())
    u = torch.tensor([0.001, 0.1, 0.5, 0.9, 0.999], dtype=torch.float64)
    quantiles = logistic_quantile(tables, u * 2 ** 24)
    expected = torch.tensor([math.log(p / (1 - p)) for p in u.tolist()], dtype=torch.float64)
    assert torch.allclose(quantiles, expected, atol=2e-3)


GOLDEN_UNIFORMS = [15953137.5, 2232706.5, 3436252.5, 2005591.5]


def _low_contrast_folder(folder: Path) -> Path:
    """Low-contrast examples (96 + x // 4), stored uncompressed: the barely trained tiny
    VAE codes them smaller than their files, so they take the model path."""
    folder.mkdir(parents=True)
    for path in sorted(EXAMPLES.glob("*.png")):
        with Image.open(path) as image:
            Image.fromarray(96 + np.asarray(image) // 4, image.mode).save(folder / path.name, compress_level=0)
    return folder


@pytest.fixture(scope="module", params=MODELS)
def low_contrast_archive(tmp_path_factory, request):
    """(folder, archive) coded by each tiny VAE, with 1.6's chains of 16 batches."""
    from osoa_zip.archive import compress

    root = tmp_path_factory.mktemp("vae")
    source = _low_contrast_folder(root / "low_contrast")
    archive = root / "low_contrast.osoa"
    with open(archive, "wb") as output:
        summary = compress([source], output, model=request.param, adaptation=ADAPTATION, triage=False)
    assert summary.images == len(list(source.glob("*.png"))) and len(summary.batches) >= 20
    assert any(batch.flags & FLAG_CHAINED for batch in summary.batches)
    return source, archive


def test_archive_records_the_family(low_contrast_archive):
    from osoa_zip.table import read_table

    _, archive = low_contrast_archive
    with open(archive, "rb") as handle:
        model = read_table(handle)[0]["model"]
    assert model["name"] in MODELS and model["family"] == "vae"


@pytest.mark.parametrize("combination", SUBSET[:2], ids=_ids)
def test_decode_exact_in_other_environments(low_contrast_archive, tmp_path, combination):
    source, archive = low_contrast_archive
    _check(archive, source, tmp_path, combination)


@pytest.mark.slow
@pytest.mark.parametrize("combination", FULL_MATRIX, ids=_ids)
def test_decode_exact_full_matrix(low_contrast_archive, tmp_path, combination):
    source, archive = low_contrast_archive
    _check(archive, source, tmp_path, combination)


def test_chains_with_segments_threads_and_salvage(tmp_path):
    """Chains start at every segment start; segments coded on two threads give the same
    archive; a damaged chain loses its segment alone under --salvage."""
    from test_salvage import _damaged, _restore

    from osoa_zip import compress, decompress
    from osoa_zip.container.format import ArchiveError
    from osoa_zip.table import read_archive

    source = _low_contrast_folder(tmp_path / "in")
    config = dataclasses.replace(ADAPTATION, segment_batches=5, chain_batches=2)
    archives = {}
    for threads in (1, 2):
        output = io.BytesIO()
        compress([source], output, model=MODEL, adaptation=config, threads=threads, triage=False)
        archives[threads] = output.getvalue()
    assert archives[1] == archives[2]
    flags = [batch.flags for batch in read_archive(io.BytesIO(archives[1]))[2]]
    assert len(flags) >= 15
    for index, flag in enumerate(flags):  # chains of 2, 2, 1 in every segment of five
        assert bool(flag & FLAG_CHAINED) == (index % 5 in (1, 3)), (index, flags)
        assert bool(flag & FLAG_CHAIN_HEAD) == (index % 5 in (0, 2)), (index, flags)
    for threads in (1, 2):
        decompress(io.BytesIO(archives[1]), tmp_path / f"out-{threads}", threads=threads)
        assert _tree_digest(tmp_path / f"out-{threads}") == _tree_digest(source)
    damaged = _damaged(archives[1], b"BATC", which=6, where=0)  # the second segment's second chain's head
    with pytest.raises(ArchiveError):
        decompress(io.BytesIO(damaged), tmp_path / "strict")
    summary = _restore(damaged, tmp_path / "salvaged", tmp_path)
    assert summary.lost and summary.images < len(list(source.glob("*.png")))
    assert summary.images + len(summary.lost) == len(list(source.glob("*.png")))


def _chained_archive(tmp_path) -> bytes:
    """The low-contrast folder in chains of at most 3 batches, segments of 5 (chains of 3 and 2)."""
    from osoa_zip import compress
    output = io.BytesIO()
    compress([_low_contrast_folder(tmp_path / "in")], output, model=MODEL,
             adaptation=dataclasses.replace(ADAPTATION, segment_batches=5, chain_batches=3), triage=False)
    return output.getvalue()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["head promises more", "head promises fewer", "chained made a head",
                                  "head made plain"])
def test_crafted_chains_are_refused_with_one_line(tmp_path, case, threads):
    """Chains edited behind valid checksums: refused (ArchiveError naming the batch), nothing written,
    by the serial and the threaded decoder alike."""
    from crafting import Crafted

    from osoa_zip import decompress
    from osoa_zip.container.format import ArchiveError
    crafted = Crafted.parse(_chained_archive(tmp_path))
    head = crafted.index(b"BATC", 5)  # the second segment's first chain
    tag, payload = crafted.chunks[head]
    assert payload[0] & FLAG_CHAIN_HEAD and payload[1:3] == (3).to_bytes(2, "little")
    if case == "head promises more":  # the first segment's chain of two would run into the second segment
        last = crafted.index(b"BATC", 3)
        tag, payload = crafted.chunks[last]
        assert payload[1:3] == (2).to_bytes(2, "little")
        crafted.chunks[last] = (tag, payload[:1] + (3).to_bytes(2, "little") + payload[3:])
    elif case == "head promises fewer":  # the third batch is left without a chain
        crafted.chunks[head] = (tag, payload[:1] + (2).to_bytes(2, "little") + payload[3:])
    elif case == "chained made a head":
        chained = crafted.chunks[head + 1][1]
        crafted.chunks[head + 1] = (tag, bytes([chained[0] ^ (FLAG_CHAINED | FLAG_CHAIN_HEAD)]) + b"\x02\x00")
    else:
        crafted.chunks[head] = (tag, bytes([payload[0] & ~FLAG_CHAIN_HEAD]) + payload[3:])
    with pytest.raises(ArchiveError, match=r"^batch [4-6] does not decode \("):
        decompress(io.BytesIO(crafted.build()), tmp_path / "out", threads=threads)
    assert not (tmp_path / "out").exists()


def test_cli_round_trip_with_the_vae(tmp_path):
    source = _low_contrast_folder(tmp_path / "in")
    for path in sorted(source.glob("*.png"))[2:]:
        path.unlink()
    archive, restored = tmp_path / "a.osoa", tmp_path / "out"
    run = lambda *args: subprocess.run([sys.executable, "-m", "osoa_zip", *map(str, args)],  # noqa: E731
                                       env=subprocess_env(), capture_output=True, text=True, timeout=600)
    result = run("compress", "--model", MODEL, "--tile-size", TILE, "--batch-size", 4, "--batch-pixels", 0,
                 "--every-image", source, archive)
    assert result.returncode == 0, result.stderr
    assert "0 images" not in result.stderr
    result = run("decompress", archive, restored)
    assert result.returncode == 0, result.stderr
    assert _tree_digest(restored) == _tree_digest(source)
    assert run("test", archive).returncode == 0
    damaged = bytearray(archive.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    archive.write_bytes(bytes(damaged))
    result = run("test", archive)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1


def test_compress_takes_the_model_s_learning_rate_unless_told(tmp_path):
    """`--model M` without --lr adapts at the rate M's manifest entry recommends (a VAE wants
    far smaller steps than a flow); --lr overrides it; the header records the rate used."""
    from click.testing import CliRunner

    from osoa_zip.cli import main
    from osoa_zip.table import read_archive
    source = _low_contrast_folder(tmp_path / "in")
    rates = {}
    for name, options in (("own", []), ("told", ["--lr", "0.001"]), ("flow", None)):
        archive = tmp_path / f"{name}.osoa"
        model = ["--model", "idf-tiny-test"] if options is None else ["--model", HIERARCHICAL, *options]
        result = CliRunner().invoke(main, ["compress", "-q", *model, "--tile-size", "16", "--every-image", str(source),
                                           str(archive)])
        assert result.exit_code == 0, result.output
        with open(archive, "rb") as handle:
            rates[name] = read_archive(handle)[0]["adaptation"]["learning_rate"]
    assert rates == {"own": 2e-3, "told": 1e-3, "flow": DEFAULT_LEARNING_RATE}


def test_unknown_family_is_refused():
    assert build_networks({"family": "vae", "hidden": 4, "latent_channels": 2})[3].latent_channels == 2
    with pytest.raises(ModelError, match="gan"):
        build_networks({"family": "gan", "hidden": 4})
