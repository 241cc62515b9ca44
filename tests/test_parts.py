"""The worker process that takes the first part of each adapting batch (adapt/parts.py).

With a second core, compress and decompress hand each batch's first part (the flow's prior
and coarse levels) to a worker process: the archive must be the bytes one thread writes, and
the restored files the same, on every path the engine takes (the guard choosing θ0, giving
up, a group rolled back, grey and colour tracks, tiles too small for a level).  A worker that
cannot start is left out; one that dies mid-run is a one-line error and no archive.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import EXAMPLES, assert_same_tree
from PIL import Image

from osoa_zip import compress, decompress, pack, test_archive, unpack
from osoa_zip.adapt import parts
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.defaults import adaptation_for
from osoa_zip.adapt.engine import FLAG_GIVE_UP, FLAG_PRETRAINED, OnlineAdapter, _PartsLoss
from osoa_zip.cli import main
from osoa_zip.layout import PartsError
from osoa_zip.models.registry import load_model
from osoa_zip.table import read_archive

MODEL = "idf-tiny-test-e2"  # engine 2, two predictors: its batches split
SMALL_TILES = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0)


@pytest.fixture
def always(monkeypatch):
    """The worker for any input and any group (the thresholds are for speed, not bytes); counts
    the batches it took."""
    monkeypatch.setattr(pack, "PARTS_MIN_SUBPIXELS", 0)
    monkeypatch.setattr(unpack, "PARTS_MIN_SUBPIXELS", 0)
    monkeypatch.setattr(parts, "MIN_SUBPIXELS", 0)
    # ... and from the first batch: the adapter takes it once ready (here: waits until it is)
    monkeypatch.setattr(parts.PartWorker, "poll_ready", lambda self: self.wait_ready() or True)
    taken = {"analyse": 0, "decode": 0}
    for name in taken:
        original = getattr(parts.PartWorker, name)

        def counted(self, *arguments, _original=original, _name=name, **options):
            taken[_name] += 1
            return _original(self, *arguments, **options)
        monkeypatch.setattr(parts.PartWorker, name, counted)
    return taken


@pytest.fixture(params=["forked", "own process"])
def worker_kind(request, monkeypatch):
    """The worker forked from this process (holding its loaded model), or a process of its own.
    Threads an earlier test left behind would stop the fork here: it is made to happen."""
    forked = request.param == "forked"
    monkeypatch.setattr(parts, "FORK", forked)
    monkeypatch.setattr(parts, "alone", lambda: True)
    started = []
    original = parts._forked

    def forking(*arguments):
        started.append(True)
        return original(*arguments)
    monkeypatch.setattr(parts, "_forked", forking)
    yield forked
    assert bool(started) == forked


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Colour and grey photos, uncompressed (so the model path wins), and odd crops whose
    edge tiles are too small for some levels."""
    folder = tmp_path_factory.mktemp("parts") / "images"
    folder.mkdir()
    for index, path in enumerate(sorted(EXAMPLES.glob("*.png"))):
        with Image.open(path) as image:
            image.save(folder / path.name, compress_level=0)
            image.convert("L").save(folder / f"gray_{path.name}", compress_level=0)
            if index < 2:
                image.crop((3, 5, 20, 35)).save(folder / f"crop_{path.name}", compress_level=0)
                image.convert("L").crop((0, 0, 2, 3)).save(folder / f"tiny_{path.name}", compress_level=0)
    return folder


def _archive(source, threads: int, config: AdaptationConfig = SMALL_TILES, model: str = MODEL) -> bytes:
    output = io.BytesIO()
    compress([source], output, model=model, adaptation=config, threads=threads, triage=False)
    return output.getvalue()


@pytest.mark.parametrize("config", [SMALL_TILES, AdaptationConfig(tile_size=32, batch_size=3, batch_pixels=0)])
def test_the_worker_writes_the_archive_one_thread_writes_and_restores_it(source, tmp_path, always, config,
                                                                        worker_kind):
    alone = _archive(source, 1, config)
    assert always["analyse"] == 0
    beside = _archive(source, 2, config)
    assert always["analyse"] > 4, "the worker took no batch"
    assert beside == alone
    for threads in (1, 2):
        destination = tmp_path / f"restored-{threads}"
        decompress(io.BytesIO(alone), destination, threads=threads)
        assert_same_tree(source, destination)
    assert always["decode"] > 4
    assert test_archive(io.BytesIO(alone), threads=2).images == len(list(source.iterdir()))


@pytest.mark.parametrize("learning_rate,give_up_after", [(0.01, 0), (0.05, 3)])
def test_the_guard_choosing_theta0_and_giving_up_read_the_same_with_the_worker(source, tmp_path, always,
                                                                                learning_rate, give_up_after):
    """Learning rates too large: θ0 wins some of the guard's comparisons (FLAG_PRETRAINED) and
    the adapted model later codes again, so the decoder's update on batches θ0 decoded must be
    right; or θ0 wins three in a row and the encoder gives up (FLAG_GIVE_UP)."""
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=learning_rate,
                              give_up_after=give_up_after)
    alone = _archive(source, 1, config)
    flags = [record.flags & (FLAG_PRETRAINED | FLAG_GIVE_UP) for record in read_archive(io.BytesIO(alone))[2]]
    if give_up_after:
        assert FLAG_PRETRAINED | FLAG_GIVE_UP in flags
    else:  # a batch θ0 coded, then one the adapted model coded
        assert any(first == FLAG_PRETRAINED and not then for first, then in zip(flags, flags[1:]))
    assert _archive(source, 2, config) == alone
    destination = tmp_path / "restored"
    decompress(io.BytesIO(alone), destination, threads=2)
    assert_same_tree(source, destination)


def test_the_bits_of_two_parts_are_the_bits_of_the_whole_pass():
    """The guard's bit count from the parts' terms is the one-process loss bit for bit: the
    terms stacked in the whole pass's order, not the parts' sums added (which differ in the
    last bit for some terms)."""
    generator = np.random.default_rng(5)
    differs = 0
    for _ in range(200):
        terms = [torch.tensor(value) for value in generator.uniform(0, 1, 31) * 10.0 ** generator.integers(0, 6, 31)]
        cut = int(generator.integers(0, 32))
        whole = torch.stack(terms).sum()
        first = torch.stack(terms[:cut]) if cut else torch.zeros(0, dtype=torch.float64)
        loss = _PartsLoss.of(first, [t.requires_grad_() for t in terms[cut:]])
        assert torch.equal(loss.bits, whole)
        assert (loss.parts_loss is None) == (cut == 31)
        differs += not torch.equal(first.sum() + torch.stack(terms[cut:]).sum().detach() if cut < 31 else first.sum(),
                                   whole)
    assert differs  # the naive sum would not have been the same


def _tiles(channels: int, count: int, seed: int) -> list[np.ndarray]:
    pictures = []
    for path in sorted(EXAMPLES.glob("*.png")):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB" if channels == 3 else "L"))
        pixels = pixels.reshape(*pixels.shape[:2], channels)
        height, width = pixels.shape[:2]
        pictures += [pixels[y:y + 16, x:x + 16] for y in (0, height // 3, height - 16)
                     for x in (0, width // 2, width - 16)]
    order = np.random.default_rng(seed).permutation(len(pictures))
    return [np.stack([pictures[i] for i in order[k:k + 4]]).transpose(0, 3, 1, 2).copy()
            for k in range(0, 4 * count, 4)]


def test_a_rolled_back_group_is_rolled_back_in_the_worker_too(always):
    """snapshot, code on, restore, code again: what the group that did not pay leaves behind."""
    bundle = load_model(MODEL)
    batches = _tiles(3, 6, 0) + _tiles(1, 3, 1)

    def coded(with_worker: bool) -> list[bytes]:
        adapter = OnlineAdapter(bundle, SMALL_TILES)
        worker = parts.start_worker(adapter, decoding=False) if with_worker else None
        try:
            parts.attach(worker, adapter, sum(tiles.size for tiles in batches))
            out = [adapter.encode(tiles)[0] for tiles in batches[:3]]
            before = adapter.snapshot()
            for tiles in batches[3:]:
                adapter.encode(tiles)
            adapter.restore(before)
            out += [adapter.encode(tiles)[0] for tiles in batches[3:]]
            adapter.end_run()
            return out
        finally:
            if worker is not None:
                worker.close()

    assert coded(True) == coded(False)
    assert always["analyse"] == 3 + 2 * 3  # colour batches only: the grey track adapts its last layers here


@pytest.mark.parametrize("learning_rate", [0.0003, 0.05])
def test_the_encoder_asks_for_the_next_batch_ahead_and_checks_it(always, learning_rate):
    """Each batch coded knowing the next asks the worker for it early, whatever the guard
    decides (a large rate: θ0 wins and the encoder gives up); the bytes are one process's.
    A next batch that is not the one announced is an error, not a silent mix-up."""
    bundle = load_model(MODEL)
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=learning_rate,
                              give_up_after=2)
    batches = _tiles(3, 10, 2) + _tiles(1, 2, 3) + _tiles(3, 4, 4)

    def coded(with_worker: bool, ahead: bool) -> tuple[list[bytes], int]:
        adapter = OnlineAdapter(bundle, config)
        worker = parts.start_worker(adapter, decoding=False) if with_worker else None
        try:
            parts.attach(worker, adapter, sum(tiles.size for tiles in batches))
            asked = 0
            out = []
            for index, tiles in enumerate(batches):
                following = batches[index + 1] if ahead and index + 1 < len(batches) else None
                out.append(adapter.encode(tiles, following=following)[0])
                asked += adapter._requested_ahead is not None
            adapter.end_run()
            return out, asked
        finally:
            if worker is not None:
                worker.close()

    alone, _ = coded(False, True)
    ahead, asked = coded(True, True)
    assert ahead == alone == coded(True, False)[0]
    assert asked >= 8
    adapter = OnlineAdapter(bundle, config)
    worker = parts.start_worker(adapter, decoding=False)
    try:
        parts.attach(worker, adapter, 1)
        adapter.encode(batches[0], following=batches[1])
        with pytest.raises(RuntimeError, match="asked ahead for another batch"):
            adapter.encode(batches[1].copy())
    finally:
        worker.close()


def test_a_worker_that_cannot_start_is_left_out(source, always, monkeypatch):
    original = parts.PartWorker.__init__

    def wrong_model(self, model, sha256, config_header, decoding, bundle=None):
        original(self, model, "0" * 64, config_header, decoding)  # a worker of its own refuses another hash
    monkeypatch.setattr(parts.PartWorker, "__init__", wrong_model)
    assert _archive(source, 2) == _archive(source, 1)
    assert always["analyse"] == 0


def test_a_worker_that_dies_stops_the_command_with_one_line_and_no_archive(source, tmp_path, always, monkeypatch,
                                                                           worker_kind):
    started = []
    original = parts.PartWorker.analyse

    def dying(self, *arguments, **options):
        started.append(self)
        if len(started) == 3:
            self._process.kill()
            self._process.wait()
        return original(self, *arguments, **options)
    monkeypatch.setattr(parts.PartWorker, "analyse", dying)
    with pytest.raises(PartsError, match="the worker process stopped"):
        _archive(source, 2)
    started.clear()
    archive = tmp_path / "out.osoa"
    result = CliRunner().invoke(main, ["compress", "-q", "--model", MODEL, "--tile-size", "16", "--batch-size", "4",
                                       "--batch-pixels", "0", "--every-image", "-T", "2", str(source), str(archive)])
    assert result.exit_code != 0 and not archive.exists()
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("osoa-zip: error: the worker process stopped"), result.output


def test_no_worker_for_tracks_that_adapt_their_last_layers(source, tmp_path, always, monkeypatch):
    """Grey images adapt their last layers by default: their batches stay in this process (the
    worker cost more than it saved there), and no worker is started for them."""
    started = []
    original = parts.PartWorker.__init__

    def counted(self, *arguments):
        started.append(arguments)
        original(self, *arguments)
    monkeypatch.setattr(parts.PartWorker, "__init__", counted)
    grey = tmp_path / "grey"
    grey.mkdir()
    for path in sorted(source.glob("gray_*.png")):
        (grey / path.name).write_bytes(path.read_bytes())
    archive = _archive(grey, 2)
    decompress(io.BytesIO(archive), tmp_path / "restored", threads=2)
    assert_same_tree(grey, tmp_path / "restored")
    assert not started and always == {"analyse": 0, "decode": 0}
    assert archive == _archive(grey, 1)



def test_a_damaged_batch_reads_the_same_with_the_worker(always):
    """Bytes that do not decode: the worker passes the coder's error on, so the message is the
    one a single process gives (unpack turns it into "batch N does not decode (...)")."""
    bundle = load_model(MODEL)
    batches = _tiles(3, 4, 2)
    encoder = OnlineAdapter(bundle, SMALL_TILES)
    coded = [encoder.encode(tiles)[0] for tiles in batches]
    damaged = coded[2][:1] + bytes(b ^ 0x5A for b in coded[2][1:9]) + coded[2][9:]
    errors = []
    for with_worker in (False, True):
        decoder = OnlineAdapter(bundle, SMALL_TILES)
        worker = parts.start_worker(decoder, decoding=True) if with_worker else None
        try:
            parts.attach(worker, decoder, sum(tiles.size for tiles in batches))
            for payload, tiles in zip(coded[:2], batches):
                assert np.array_equal(decoder.decode(payload, tiles.shape), tiles)
            with pytest.raises(ValueError) as error:  # CorruptStream and BatchError are ValueErrors
                decoder.decode(damaged, batches[2].shape)
            errors.append((type(error.value), str(error.value)))
        finally:
            if worker is not None:
                worker.close()
    assert always["decode"] == 3
    assert errors[0] == errors[1], errors


@pytest.mark.parametrize("compiled_here", [True, False])
def test_the_worker_sends_its_parts_coded_intervals_and_the_archive_is_one_process_s(source, always, monkeypatch,
                                                                                      compiled_here):
    """With the compiled loops here, the worker sends its part's coded intervals (θ0's too, for
    the guard) instead of its factors; without them here, the factors: the same archive.  The
    default model: the tiny test models code one logistic per latent, which has no intervals
    worked out ahead."""
    from osoa_zip.coding import native
    from osoa_zip.coding.mixture_coder import CodedIntervals

    monkeypatch.setattr(native, "_worth", True)
    monkeypatch.setattr(native, "ENABLED", native.ENABLED and compiled_here)
    received = []
    factors_of = parts._factors_of

    def recording(sent, arrays):
        factors = factors_of(sent, arrays)
        received.append(any(isinstance(factor, CodedIntervals) for factor in factors))
        return factors
    monkeypatch.setattr(parts, "_factors_of", recording)
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=0.01)
    alone = _archive(source, 1, config, "idf-sublattice-v7")
    assert _archive(source, 2, config, "idf-sublattice-v7") == alone
    assert received and all(received) == compiled_here and any(received) == compiled_here


def test_the_next_batch_asked_of_the_worker_ahead_decodes_alike_and_fails_at_its_own_turn(always, monkeypatch):
    """With the next batch given (``following``), its first part goes to the worker with this
    batch's: the same pixels; batches coded with θ0 while adapting (whose step needs this
    process's pixels) are not followed early; and a damaged batch asked ahead fails at its
    own turn, with one process's message."""
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, learning_rate=0.01)
    bundle = load_model(MODEL)
    batches = _tiles(3, 8, 3)
    encoder = OnlineAdapter(bundle, config)
    coded = [encoder.encode(tiles)[0] for tiles in batches]
    assert any(payload[0] & FLAG_PRETRAINED for payload in coded[:-1]), "θ0 coded no batch to follow"
    asked = []  # batches whose first part was asked of the worker ahead
    ask_ahead = OnlineAdapter._ask_ahead

    def counting(self, track, payload, shape):
        ask_ahead(self, track, payload, shape)
        if self._asked_ahead is not None:
            asked.append(payload)
    monkeypatch.setattr(OnlineAdapter, "_ask_ahead", counting)
    damaged = coded[5][:1] + bytes(b ^ 0x5A for b in coded[5][1:9]) + coded[5][9:]
    for payloads in (coded, coded[:5] + [damaged] + coded[6:]):
        results = []
        for with_worker in (False, True):
            decoder = OnlineAdapter(bundle, config)
            worker = parts.start_worker(decoder, decoding=True) if with_worker else None
            decoded, asked[:] = [], []
            try:
                parts.attach(worker, decoder, sum(tiles.size for tiles in batches))
                for k, (payload, tiles) in enumerate(zip(payloads, batches)):
                    following = (payloads[k + 1], batches[k + 1].shape) if k + 1 < len(batches) else None
                    decoded.append(decoder.decode(payload, tiles.shape, following))
                decoder.end_run()
            except ValueError as error:  # CorruptStream and BatchError are ValueErrors
                decoded.append((len(decoded), type(error), str(error)))
            finally:
                if worker is not None:
                    worker.close()
            results.append(decoded)
        if payloads is coded:
            intact = [coded.index(payload) for payload in asked]
        assert len(results[0]) == len(results[1])
        for alone, beside in zip(*results):
            assert np.array_equal(alone, beside) if isinstance(alone, np.ndarray) else alone == beside
    assert all(np.array_equal(tiles, decoded) for tiles, decoded in zip(batches, results[0][:5]))
    assert results[1][5][0] == 5, "the damaged batch failed before its turn"
    # The intact run: a batch is asked ahead unless the one before it was coded with θ0 while
    # the track still adapted (the worker's step on it waits for this process's pixels) or its
    # own flags say more than FLAG_PRETRAINED (give-up, segment start: asked at its turn).
    flags = [payload[0] for payload in coded]
    adapting = [not any(f & FLAG_GIVE_UP for f in flags[:k + 1]) for k in range(len(flags))]
    expected = [k + 1 for k in range(len(flags) - 1)
                if not (flags[k] & FLAG_PRETRAINED and adapting[k]) and not flags[k + 1] & ~FLAG_PRETRAINED]
    assert intact == expected, flags
    assert len(intact) >= 4


def test_a_damaged_batch_chunk_read_ahead_fails_at_its_own_turn(source, tmp_path, always, monkeypatch):
    """decompress reads a group's batch chunks one ahead for the worker: a chunk whose checksum
    fails is reported as one process reports it, after the batches before it are decoded."""
    calls = []
    original = OnlineAdapter.decode
    monkeypatch.setattr(OnlineAdapter, "decode", lambda self, *arguments: calls.append(1) or original(self, *arguments))
    from crafting import chunk_spans

    from osoa_zip.container.records import Batch

    alone = _archive(source, 1)
    batch_spans = [(start, end) for start, end, tag in chunk_spans(alone) if tag == Batch.TAG]
    assert len(batch_spans) > 6
    start, end = batch_spans[4]
    damaged = bytearray(alone)
    damaged[start + 12 + (end - start - 16) // 2] ^= 0x40  # inside its payload: the checksum fails
    messages, decoded = [], []
    for threads in (1, 2):
        calls.clear()
        with pytest.raises(unpack.ArchiveError) as error:
            decompress(io.BytesIO(bytes(damaged)), tmp_path / f"out-{threads}", threads=threads)
        messages.append(str(error.value))
        decoded.append(len(calls))
        assert not (tmp_path / f"out-{threads}").exists() or not any((tmp_path / f"out-{threads}").iterdir())
    assert messages[0] == messages[1] and "is damaged" in messages[0], messages
    assert decoded == [4, 4]


def test_decompress_starts_the_worker_before_it_loads_the_model(source, tmp_path, always, monkeypatch):
    """From the group's plan and the header's settings alone, so that the worker's start and
    this process's model load go side by side (even where it could fork); the worker warms up
    its decoder's pass."""
    monkeypatch.setattr(parts, "alone", lambda: True)
    archive = _archive(source, 1)
    events = []
    original_init, original_load = parts.PartWorker.__init__, unpack.load_model

    def started(self, model, sha256, config_header, decoding, bundle=None):
        events.append(("worker", decoding))
        original_init(self, model, sha256, config_header, decoding, bundle)

    def loaded(*arguments):
        events.append(("model",))
        return original_load(*arguments)
    monkeypatch.setattr(parts.PartWorker, "__init__", started)
    monkeypatch.setattr(unpack, "load_model", loaded)
    decompress(io.BytesIO(archive), tmp_path / "restored", threads=2)
    assert_same_tree(source, tmp_path / "restored")
    assert events[:2] == [("worker", True), ("model",)], events
    assert always["decode"] > 4, "the worker took no batch"


def test_a_forked_worker_starts_once_the_model_is_loaded_and_holds_it(source, tmp_path, always, monkeypatch):
    """Where it can fork, compress loads the model first and forks the worker with it, and so
    does decompress for a group it did not start one for before the load: the worker loads
    nothing (no second import, no second read of the checkpoint)."""
    monkeypatch.setattr(parts, "alone", lambda: True)
    monkeypatch.setattr(unpack._Decoder, "_start_parts_before_model", lambda self, planned: None)
    events = []
    original_init, original_load, original_serve = parts.PartWorker.__init__, unpack.load_model, parts._serve

    def started(self, model, sha256, config_header, decoding, bundle=None):
        events.append(("worker", decoding, bundle is not None))
        original_init(self, model, sha256, config_header, decoding, bundle)

    def loaded(*arguments):
        events.append(("model",))
        return original_load(*arguments)

    def serving(pipe, model, sha256, config_header, decoding, bundle=None, **options):
        assert bundle is not None  # in the child: a failure here fails the command
        original_serve(pipe, model, sha256, config_header, decoding, bundle, **options)
    monkeypatch.setattr(parts.PartWorker, "__init__", started)
    monkeypatch.setattr(unpack, "load_model", loaded)
    monkeypatch.setattr(parts, "_serve", serving)
    archive = _archive(source, 2)
    assert events == [("worker", False, True)]
    events.clear()
    decompress(io.BytesIO(archive), tmp_path / "restored", threads=2)
    assert_same_tree(source, tmp_path / "restored")
    assert events == [("model",), ("worker", True, True)], events
    assert always["decode"] > 4, "the worker took no batch"


def test_a_worker_started_before_the_model_for_a_model_that_cannot_share_is_stopped(
        source, tmp_path, always, monkeypatch):
    monkeypatch.setattr(parts, "FORK", False)
    archive = _archive(source, 1)
    workers = []
    original_init, original_close = parts.PartWorker.__init__, parts.PartWorker.close

    def started(self, *arguments, **options):
        workers.append(self)
        original_init(self, *arguments, **options)

    def closed(self):
        self.closed = True
        original_close(self)
    monkeypatch.setattr(parts.PartWorker, "__init__", started)
    monkeypatch.setattr(parts.PartWorker, "close", closed)
    monkeypatch.setattr(OnlineAdapter, "can_use_parts", lambda self: False)
    decompress(io.BytesIO(archive), tmp_path / "restored", threads=2)
    assert_same_tree(source, tmp_path / "restored")
    assert len(workers) == 1 and workers[0].closed and always == {"analyse": 0, "decode": 0}


@pytest.mark.parametrize("decoding", [False, True])
def test_warming_up_changes_nothing(decoding):
    """The worker's warm-up runs on a copy: θ0's weights and gradients are untouched, and an
    adapter after it codes batches to the same bytes as before it."""
    bundle = load_model(MODEL)
    network = bundle.network(3)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    parts._warm_up(bundle, decoding)
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())
    assert all(parameter.grad is None for parameter in network.parameters())
    batches = _tiles(3, 3, 5)
    after = [OnlineAdapter(bundle, SMALL_TILES).encode(tiles)[0] for tiles in batches]
    parts._warm_up(bundle, decoding)
    assert after == [OnlineAdapter(bundle, SMALL_TILES).encode(tiles)[0] for tiles in batches]


@pytest.mark.parametrize("ready_at", [1, 4])
def test_a_worker_ready_late_takes_the_tracks_over_where_they_are(always, monkeypatch, ready_at):
    """Until the worker is ready, the adapter codes and decodes whole batches; at the first batch
    after that, it hands each track that adapts every layer over (the first part's weights, Adam's
    moments and powers) and goes on in two processes: one process's bytes and pixels.  Grey
    batches stay here."""
    bundle = load_model(MODEL)
    colour, grey = _tiles(3, 6, 2), _tiles(1, 2, 3)
    batches = colour[:2] + grey[:1] + colour[2:5] + grey[1:] + colour[5:]
    polls = {"count": 0}

    def late(self):  # not ready for the first ``ready_at`` batches
        polls["count"] += 1
        return polls["count"] > ready_at and (self.wait_ready() or True)
    monkeypatch.setattr(parts.PartWorker, "poll_ready", late)
    alone = OnlineAdapter(bundle, SMALL_TILES)
    expected = [alone.encode(tiles)[0] for tiles in batches]
    handed_over = sum(tiles.shape[1] == 3 for tiles in batches[ready_at:])
    for decoding in (False, True):
        polls["count"] = 0
        adapter = OnlineAdapter(bundle, SMALL_TILES)
        worker = parts.start_worker(adapter, decoding=decoding)
        try:
            parts.attach(worker, adapter, sum(tiles.size for tiles in batches))
            if decoding:
                for payload, tiles in zip(expected, batches):
                    assert np.array_equal(adapter.decode(payload, tiles.shape), tiles)
            else:
                assert [adapter.encode(tiles)[0] for tiles in batches] == expected
        finally:
            worker.close()
        assert always["decode" if decoding else "analyse"] == handed_over


def _pipe_bytes(stream) -> int:
    import fcntl
    return fcntl.fcntl(stream.fileno(), fcntl.F_GETPIPE_SZ)


@pytest.mark.parametrize("forked", [True, False])
def test_both_pipes_to_the_worker_hold_a_batch(forked, monkeypatch):
    """A request carries its batch's tiles (~0.1 MB for 32 RGB tiles of 32 x 32), more than a
    64 kB pipe holds: a narrow pipe to the worker kept the command in ``write`` until the
    worker had finished its step and read the request.  Both pipes take PIPE_BYTES where the
    system lets a process have that much (Linux's default limit is 1 MiB)."""
    monkeypatch.setattr(parts, "FORK", forked)
    monkeypatch.setattr(parts, "alone", lambda: True)
    bundle = load_model(MODEL)
    worker = parts.PartWorker(MODEL, bundle.sha256, adaptation_for(MODEL, AdaptationConfig()).to_header(), False,
                              bundle if forked else None)
    try:
        with open("/proc/sys/fs/pipe-max-size") as limit:
            widest = int(limit.read())
        connection = worker._connection
        sizes = [_pipe_bytes(connection.writing), _pipe_bytes(connection.reading)]
        assert sizes[0] == sizes[1]
        if widest >= parts.PIPE_BYTES:
            assert sizes == [parts.PIPE_BYTES] * 2
        worker.wait_ready()
    finally:
        worker.close()
