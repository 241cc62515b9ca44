"""--dask: segments as tasks on a two-worker Dask cluster.

The archive is byte-identical to `-T 2` on this machine, decodes on the
cluster, survives a worker killed mid-task, and a run that cannot finish
leaves no archive and no restored files.  CI installs the cluster extra
(Makefile), so nothing here skips.
"""
from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import distributed
import numpy as np
import pytest
from conftest import EXAMPLES, MODEL, SINGLE_THREAD_ENV, assert_same_tree, uncompressed_copy
from crafting import frame
from test_cli import assert_left_nothing, assert_one_line_error, invoke, run_cli
from test_vae import ADAPTATION as VAE_ADAPTATION
from test_vae import MODEL as VAE_MODEL
from test_vae import _low_contrast_folder

import osoa_zip.pack
from osoa_zip import cluster as dask_segments
from osoa_zip import compress, decompress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.engine import OnlineAdapter
from osoa_zip.archive import ArchiveError, ModelError, UsageError
from osoa_zip.container.format import ArchiveReader
from osoa_zip.layout import ClusterError
from osoa_zip.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, segment_batches=3)
CODING = ["--model", MODEL, "--tile-size", "16", "--batch-size", "4", "--batch-pixels", "0", "--segment-size", "3",
          "--every-image"]  # the model path for every image (no triage)
WAIT = 180  # seconds for a held task to show up (a worker imports torch first)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return uncompressed_copy(EXAMPLES, tmp_path_factory.mktemp("cluster") / "images")


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    """Where tasks are held (osoa_zip.cluster.TEST_GATE): while gate/hold exists they wait."""
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def local_cluster(gate):
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                       env={dask_segments.TEST_GATE: str(gate), **SINGLE_THREAD_ENV})
    yield cluster
    cluster.close()


@pytest.fixture
def segments(local_cluster):
    """A connection as `--dask ADDRESS` makes it, to a cluster with both workers up."""
    with dask_segments.connect(local_cluster.scheduler_address) as connection:
        connection.client.wait_for_workers(2, timeout=WAIT)
        yield connection


def two_threads(source, config=CONFIG, model=MODEL) -> bytes:
    output = io.BytesIO()
    compress([source], output, model=model, adaptation=config, threads=2, triage=False)
    return output.getvalue()


def on_cluster(source, segments, config=CONFIG, model=MODEL) -> bytes:
    output = io.BytesIO()
    with distributed.get_task_stream(client=segments.client) as tasks:
        summary = compress([source], output, model=model, adaptation=config, cluster=segments, triage=False)
    assert summary.batches, "the images must take the model path"
    assert any(task["key"].startswith("osoa-zip-encode-run") for task in tasks.data)
    return output.getvalue()


@pytest.mark.parametrize("model, config, group_subpixels", [
    (MODEL, CONFIG, None),
    # Groups of two images: segments span groups, so runs start from a carried state.
    (MODEL, dataclasses.replace(CONFIG, segment_batches=5), 2 * 64 * 64 * 3),
    (MODEL, dataclasses.replace(CONFIG, segment_batches=0), 2 * 64 * 64 * 3),
    # Bits-back chains within runs (on images the tiny VAE codes smaller than their files).
    (VAE_MODEL, dataclasses.replace(VAE_ADAPTATION, segment_batches=5, chain_batches=3), None),
], ids=["segments", "segments-span-groups", "one-segment", "vae-chains"])
def test_same_archive_as_two_threads_and_decodes_on_the_cluster(source, source_tree, segments, tmp_path, monkeypatch,
                                                                 model, config, group_subpixels):
    if model == VAE_MODEL:
        source = _low_contrast_folder(tmp_path / "in")
    elif not group_subpixels and config.segment_batches:
        source = source_tree  # every kind of entry (general path, alpha, palettes, links) beside the images
    if group_subpixels:
        monkeypatch.setattr(osoa_zip.pack, "GROUP_SUBPIXELS", group_subpixels)
    archive = on_cluster(source, segments, config, model)
    assert archive == two_threads(source, config, model)
    decompress(io.BytesIO(archive), tmp_path / "restored", cluster=segments)
    assert_same_tree(source, tmp_path / "restored")


def test_round_trip_through_the_command_line_and_pipes(source, local_cluster, tmp_path):
    """The way users run it, archive on standard output and read from standard input."""
    address = local_cluster.scheduler_address
    written = run_cli("compress", "-q", "--dask", address, *CODING, source, "-")
    assert written.returncode == 0, written.stderr
    assert written.stdout == two_threads(source)
    restored = run_cli("decompress", "-q", "--dask", address, "-", tmp_path / "out", stdin=written.stdout)
    assert restored.returncode == 0, restored.stderr
    assert_same_tree(source, tmp_path / "out")


def test_state_carried_between_runs_is_exact(source):
    """export_state/import_state, which carry a segment from group to group: the adapter
    that goes on from the exported values codes the next batches to the same bytes."""
    bundle = load_model(MODEL)
    config = dataclasses.replace(CONFIG, segment_batches=0)
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, 256, (4, channels, 16, 16), dtype=np.uint8) for channels in (3, 1, 3, 3, 1, 3)]
    original = OnlineAdapter(bundle, config)
    for tiles in batches[:3]:
        original.encode(tiles)
    carried = OnlineAdapter(bundle, config)
    carried.import_state(original.export_state())
    assert [original.encode(t)[0] for t in batches[3:]] == [carried.encode(t)[0] for t in batches[3:]]
    state, again = original.export_state(), carried.export_state()
    assert state["batches"] == again["batches"] == 6
    for channels, track in state["tracks"].items():
        for key in ("weights", "first", "second"):
            assert all(np.array_equal(a, b) for a, b in zip(track[key], again["tracks"][channels][key]))


def held_task(gate: Path, deadline: float) -> int:
    """The process id of a worker that is running a held task (fails the test if none shows up)."""
    while time.monotonic() < deadline:
        started = sorted(gate.glob("started.*"))
        if started:
            return int(started[0].name.split(".")[1])
        time.sleep(0.05)
    pytest.fail("no task reached the test gate: the worker could not be killed mid-task")


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"worker process {pid} did not die")


@pytest.fixture
def hold(gate):
    """Hold every task at the gate until released (and release it whatever happens)."""
    for path in gate.glob("started.*"):
        path.unlink()
    (gate / "hold").touch()
    yield
    (gate / "hold").unlink(missing_ok=True)


def test_a_worker_killed_mid_task_is_survived(source, segments, gate, hold, tmp_path):
    expected = two_threads(source)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["archive"] = on_cluster(source, segments)
            restored = tmp_path / "restored"
            decompress(io.BytesIO(outcome["archive"]), restored, cluster=segments)
            outcome["restored"] = restored
        except BaseException as error:  # noqa: BLE001 — reported by the assertion below
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    kill(held_task(gate, time.monotonic() + WAIT))
    (gate / "hold").unlink()
    worker.join(timeout=600)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["archive"] == expected
    assert_same_tree(source, outcome["restored"])


def both_workers_up(address: str) -> None:
    with distributed.Client(address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=WAIT)


@pytest.fixture
def one_attempt(local_cluster):
    """A scheduler that gives up on a task the first time its worker dies."""
    scheduler = local_cluster.scheduler
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 0
    yield
    scheduler.allowed_failures = allowed


def test_a_run_that_cannot_finish_leaves_nothing(source, local_cluster, gate, hold, one_attempt, tmp_path):
    address = local_cluster.scheduler_address
    both_workers_up(address)
    archive = tmp_path / "out.osoa"
    command = [sys.executable, "-m", "osoa_zip.cli", "compress", "-q", "--dask", address, *CODING, source, archive]
    process = subprocess.Popen([str(arg) for arg in command], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **SINGLE_THREAD_ENV})
    kill(held_task(gate, time.monotonic() + WAIT))
    (gate / "hold").unlink()
    _, stderr = process.communicate(timeout=600)
    result = subprocess.CompletedProcess(command, process.returncode, stderr=stderr)
    assert_one_line_error(result, 1)
    assert "died" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no archive, no .part file

    # The same for decompress: nothing restored.
    (tmp_path / "in.osoa").write_bytes(two_threads(source))
    both_workers_up(address)
    for path in gate.glob("started.*"):
        path.unlink()
    (gate / "hold").touch()
    destination = tmp_path / "restored"
    command = [sys.executable, "-m", "osoa_zip.cli", "decompress", "-q", "--dask", address,
               tmp_path / "in.osoa", destination]
    process = subprocess.Popen([str(arg) for arg in command], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **SINGLE_THREAD_ENV})
    kill(held_task(gate, time.monotonic() + WAIT))
    (gate / "hold").unlink()
    _, stderr = process.communicate(timeout=600)
    assert_one_line_error(subprocess.CompletedProcess(command, process.returncode, stderr=stderr), 1)
    assert_left_nothing(destination)


def test_workers_check_the_model_by_its_hash(source, segments, monkeypatch):
    """The worker loads the model by name from its own installation and refuses another SHA-256."""
    real = load_model(MODEL)
    impostor = dataclasses.replace(real, sha256="0" * 64)
    monkeypatch.setattr(osoa_zip.pack, "load_model", lambda name: impostor)
    with pytest.raises(ModelError, match=f"Dask worker tcp://.*SHA-256 {'0' * 64}"):
        compress([source], io.BytesIO(), model=MODEL, adaptation=CONFIG, cluster=segments)


def test_a_worker_with_another_version_is_refused():
    outcome = dask_segments._encode_run({"version": "0.0.1", "model": MODEL, "sha256": "", "adaptation": {},
                                         "state": {}, "tiles": [], "chain": 1, "return_state": True})
    assert outcome["kind"] == "model"
    assert outcome["error"].startswith("Dask worker ") and "this client 0.0.1" in outcome["error"]


def test_a_batch_that_does_not_decode_on_a_worker_is_named(source, segments, tmp_path):
    chunks = list(ArchiveReader(io.BytesIO(two_threads(source))).chunks())
    batches = [i for i, (tag, _) in enumerate(chunks) if tag == b"BATC"]
    tag, payload = chunks[batches[4]]
    chunks[batches[4]] = (tag, bytes([payload[0] | 0x80]) + payload[1:])  # an unknown flag
    with pytest.raises(ArchiveError, match=r"batch 4 does not decode \(unknown batch flags"):
        decompress(io.BytesIO(frame(chunks)), tmp_path / "restored", cluster=segments)
    assert_left_nothing(tmp_path / "restored")


@pytest.mark.parametrize("arguments, message", [
    (["-T", "2"], "--dask and -T do not combine"),
    (["--dask-timeout", "1", "--dask", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler at tcp://127.0.0.1:1"),
    (["--dask", "localhost"], "--dask localhost: not a Dask scheduler address"),
])
def test_usage_errors(source, tmp_path, arguments, message):
    dask = [] if "--dask" in arguments else ["--dask", "tcp://127.0.0.1:1"]
    result = invoke("compress", "-q", *dask, *arguments, *CODING, source, tmp_path / "out.osoa")
    assert_one_line_error(result, 2)
    assert message in result.stderr
    assert not (tmp_path / "out.osoa").exists()
    if "-T" in arguments:
        (tmp_path / "out.osoa").write_bytes(b"")
        result = invoke("decompress", "-q", *dask, *arguments, tmp_path / "out.osoa", tmp_path / "restored")
        assert_one_line_error(result, 2)
        assert message in result.stderr


def test_salvage_is_not_on_the_cluster(tmp_path):
    (tmp_path / "in.osoa").write_bytes(b"")
    result = invoke("decompress", "--salvage", "--dask", "tcp://127.0.0.1:1", tmp_path / "in.osoa", tmp_path / "x")
    assert_one_line_error(result, 2)
    assert "--salvage" in result.stderr


def test_without_the_cluster_extra_the_error_names_the_install_command(source, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    result = invoke("compress", "-q", "--dask", "tcp://127.0.0.1:1", *CODING, source, tmp_path / "out.osoa")
    assert_one_line_error(result, 2)
    assert "pip install 'osoa-zip[cluster]'" in result.stderr


def test_a_cluster_without_workers_is_an_error_not_a_wait(source):
    """At connection (a usage error), and while waiting for a task (a data error, not a hang)."""
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=None) as empty:
        with pytest.raises(UsageError, match="has no worker"):
            dask_segments.connect(empty.scheduler_address, timeout=0.5)
        with distributed.Client(empty.scheduler_address, set_as_default=False) as client:
            segments = dask_segments.DaskSegments(client, empty.scheduler_address, no_worker_timeout=0.5)
            with pytest.raises(ClusterError, match="has had no worker for 0.5 s"):
                compress([source], io.BytesIO(), model=MODEL, adaptation=CONFIG, cluster=segments)
