"""Triage's samples measured by the worker process, while compress reads on (pack.py).

With a second core, compress starts its worker before it loads the model and hands it θ0's
passes over triage's samples; the verdicts are carried out later, in the order the images were
judged, each as it would have been carried out at once.  The archive must be the bytes one
thread writes: the images that lose to their files go to the same places among the other
files, groups fill at the same images, and entries written in between (folders, files with a
stream of their own) keep their places.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import EXAMPLES, assert_same_tree
from PIL import Image

from osoa_zip import compress, decompress, pack, triage_queue
from osoa_zip.adapt import parts
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.defaults import adaptation_for
from osoa_zip.files.scan import FILE, Entry

MODEL = "idf-tiny-test-e2"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Images that win and images that lose, between text files, folders and a file with a
    stream of its own, in the scan's order: a folder's entry comes while some images wait for
    their verdicts and others for triage."""
    root = tmp_path_factory.mktemp("triage-worker") / "mixed"
    generator = np.random.default_rng(7)
    photos = sorted(EXAMPLES.glob("*.png"))
    for part in range(4):
        place = root / f"part{part}"
        (place / "q_sub").mkdir(parents=True)
        for index, path in enumerate(photos[2 * part:2 * part + 2]):
            with Image.open(path) as image:
                image.save(place / f"p{index}_photo.png", compress_level=0)
                image.convert("L").save(place / "q_sub" / f"grey{index}.png", compress_level=0)
                image.save(place / f"r{index}_photo.png")
            noise = generator.integers(0, 256, (24, 20, 3), dtype=np.uint8)
            Image.fromarray(noise).save(place / f"p{index}_noise.png", compress_level=0)
            Image.new("RGB", (40, 30), (9, 99, 199)).save(place / f"p{index}_flat.png")
            (place / f"p{index}_notes.txt").write_text(f"part {part}, image {index}\n" * (index + 3))
        (place / "q_sub" / "random.bin").write_bytes(generator.bytes(80 << 10))  # a stream of its own
    return root


@pytest.fixture
def early(monkeypatch):
    """The worker from the start for any folder, ready before triage needs it; images judged
    by the group's worth (not by count) and small groups, which fill while verdicts are carried
    out and other images wait to be judged.  Counts the worker's passes and those fills."""
    monkeypatch.setattr(pack, "EARLY_WORKER_BYTES", 0)
    monkeypatch.setattr(pack, "TRIAGE_IMAGES", 99)
    monkeypatch.setattr(pack, "GROUP_SUBPIXELS", 16_000)
    monkeypatch.setattr(pack, "WAITING_SUBPIXELS", 1 << 30)
    monkeypatch.setattr(parts.PartWorker, "poll_ready", lambda self: self.wait_ready() or True)
    seen = {"passes": 0, "fills": 0}
    measure, flush = parts.PartWorker.measure, pack._Compressor.flush_images

    def counted(self, channels, tiles):
        seen["passes"] += 1
        return measure(self, channels, tiles)

    def watched(self):
        seen["fills"] += self.settling and bool(self.pending)
        return flush(self)
    monkeypatch.setattr(parts.PartWorker, "measure", counted)
    monkeypatch.setattr(pack._Compressor, "flush_images", watched)
    return seen


def _archive(folder, threads: int) -> tuple[bytes, object]:
    output = io.BytesIO()
    summary = compress([folder], output, model=MODEL, threads=threads)
    return output.getvalue(), summary


@pytest.mark.parametrize("ready_after", [0, 3])
def test_triage_measured_by_the_worker_writes_the_archive_one_thread_writes(folder, tmp_path, early, monkeypatch,
                                                                           ready_after):
    """Ready at once, or only when asked the fourth time: the samples judged before then wait for it."""
    asked = []
    monkeypatch.setattr(parts.PartWorker, "poll_ready",
                        lambda self: (asked.append(1) or len(asked) > ready_after) and (self.wait_ready() or True))
    alone, summary = _archive(folder, 1)
    assert not early["passes"]
    images = len(list(folder.rglob("*.png")))
    assert 0 < summary.images < images, "both verdicts must occur"
    beside, _ = _archive(folder, 2)
    assert early["passes"] >= 4, "the worker measured no sample"
    assert early["fills"], "no group filled while verdicts were carried out and images waited"
    assert beside == alone
    decompress(io.BytesIO(beside), tmp_path / "out")
    assert_same_tree(folder, tmp_path / "out")


def test_a_worker_that_dies_while_measuring_leaves_the_rest_to_this_process(folder, early, monkeypatch):
    alone, _ = _archive(folder, 1)
    original = parts.PartWorker.measured

    def dying(self):
        self._process.kill()
        return original(self)
    monkeypatch.setattr(parts.PartWorker, "measured", dying)
    beside, _ = _archive(folder, 2)
    assert early["passes"], "the worker was asked nothing"
    assert beside == alone


@pytest.fixture
def headers(tmp_path):
    """Image files whose headers say colour or grey (their sizes are what the entries claim)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "colour.png")
    Image.new("L", (8, 8)).save(tmp_path / "grey.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "colour.ppm")
    Image.new("RGB", (8, 8)).save(tmp_path / "colour.bmp")
    Image.new("P", (8, 8)).save(tmp_path / "palette.bmp")
    (tmp_path / "notes.txt").write_text("text\n")
    return tmp_path


def _entries(folder, sizes: dict[str, int]) -> list[Entry]:
    return [Entry(FILE, name, folder / name, 0o644, 0, size) for name, size in sizes.items()]


@pytest.mark.parametrize("sizes, config, starts", [
    ({"colour.png": 700 << 10, "grey.png": 400 << 10, "notes.txt": 9 << 20}, AdaptationConfig(), True),
    ({"grey.png": 700 << 10, "palette.bmp": 400 << 10, "colour.bmp": 1}, AdaptationConfig(), True),
    ({"colour.ppm": 2 << 20}, AdaptationConfig(), True),
    ({"colour.png": 700 << 10, "notes.txt": 9 << 20}, AdaptationConfig(), False),  # too few image bytes
    ({"grey.png": 2 << 20, "palette.bmp": 2 << 20}, AdaptationConfig(), False),  # no colour
    ({"colour.png": 2 << 20}, AdaptationConfig(adapt=False), False),
    ({"colour.png": 2 << 20}, AdaptationConfig(steps_per_batch=2), False),
])
def test_the_worker_starts_early_for_enough_colour_image_bytes_that_adapt(headers, sizes, config, starts,
                                                                          monkeypatch):
    started = []
    monkeypatch.setattr(pack, "PartWorker", lambda *arguments, **options: started.append(arguments) or "worker")
    worker = pack._early_worker(_entries(headers, sizes), MODEL, adaptation_for(MODEL, config))
    assert (worker == "worker") is starts and len(started) == starts
    if starts:
        assert started[0][:2] == (MODEL, pack.available_models()[MODEL]["sha256"])


def test_a_failed_measurement_is_not_swallowed_by_a_worker_that_works(folder, early, monkeypatch):
    """Only a worker that stops is replaced by this process: an error it reports is raised."""
    monkeypatch.setattr(parts.PartWorker, "measured", lambda self: (_ for _ in ()).throw(ValueError("bad tiles")))
    with pytest.raises(ValueError, match="bad tiles"):
        _archive(folder, 2)


def test_samples_that_waited_for_a_worker_never_ready_are_measured_here(folder, early, monkeypatch):
    alone, _ = _archive(folder, 1)
    monkeypatch.setattr(parts.PartWorker, "poll_ready", lambda self: False)
    beside, _ = _archive(folder, 2)
    assert not early["passes"]
    assert beside == alone


@pytest.mark.parametrize("forks", [False, True])
def test_an_early_worker_is_stopped_when_compress_fails_before_it_is_used(folder, monkeypatch, forks):
    """A worker of its own, started before the model load, is stopped when the load fails; a
    worker to be forked from the loaded model is never started.  (Whether a fork is possible
    is set here: threads an earlier test left behind would decide it otherwise.)"""
    started, closed = [], []

    class Worker:
        failed = False

        def __init__(self, *arguments, **options):
            started.append(self)

        def close(self):
            closed.append(self)

    def no_model(*arguments):
        raise RuntimeError("the model cannot be loaded")
    monkeypatch.setattr(parts, "FORK", forks)
    monkeypatch.setattr(parts, "alone", lambda: True)
    monkeypatch.setattr(pack, "EARLY_WORKER_BYTES", 0)
    monkeypatch.setattr(pack, "PartWorker", Worker)
    monkeypatch.setattr(pack, "load_model", no_model)
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        _archive(folder, 2)
    assert len(started) == (0 if forks else 1)
    assert closed == started


def test_closing_a_worker_with_answers_nobody_read_does_not_wait_for_them():
    """After an error or an interrupt, compress closes a worker that may still be writing
    answers into a full pipe: it must end at once, not after close's timeout."""
    import time

    worker = parts.PartWorker(MODEL, pack.available_models()[MODEL]["sha256"],
                              adaptation_for(MODEL, AdaptationConfig()).to_header(), False)
    worker.wait_ready()
    tiles = np.zeros((4096, 3, 2, 2), dtype=np.uint8)
    for _ in range(64):  # 64 answers of 32 kB: twice what its pipe holds at the most
        worker.measure(3, tiles)
    time.sleep(2.0)  # it measures them all, its answers waiting to be written
    started = time.perf_counter()
    worker.close()
    assert time.perf_counter() - started < 3, "close waited for the worker's timeout"
    assert worker._process.poll() is not None


def test_many_measurements_in_flight_do_not_fill_the_pipes(folder, early, monkeypatch):
    """Thousands of judgements' answers would not fit the worker's pipe: at most MAX_ASKED
    passes are out at a time, and the archive is still one process's."""
    monkeypatch.setattr(pack, "TRIAGE_IMAGES", 1)
    monkeypatch.setattr(pack, "GROUP_SUBPIXELS", 1 << 30)
    monkeypatch.setattr(triage_queue, "MAX_ASKED", 2)
    alone, _ = _archive(folder, 1)
    beside, _ = _archive(folder, 2)
    assert early["passes"] > 2 * triage_queue.MAX_ASKED
    assert beside == alone
