"""-T/--threads: segments coded and decoded side by side give the same bytes as one thread;
the command line uses every CPU by default, both ways."""
from __future__ import annotations

import io

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, MODEL, assert_same_tree, uncompressed_copy

from osoa_zip import compress, decompress, test_archive, unpack
from osoa_zip.adapt.config import SEGMENT_BATCHES, AdaptationConfig
from osoa_zip.adapt.flags import FLAG_SEGMENT_START
from osoa_zip.adapt.segments import run_segments, split_runs
from osoa_zip.cli import main
from osoa_zip.cpus import default_threads
from osoa_zip.exact import stack
from osoa_zip.models import registry
from osoa_zip.table import read_archive


def test_split_runs_cut_where_segments_start():
    assert split_runs(0, 7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert split_runs(5, 5, 3) == [range(0, 1), range(1, 4), range(4, 5)]  # batches 5 | 6 7 8 | 9
    assert split_runs(4, 3, 0) == [range(0, 3)]
    assert split_runs(4, 0, 3) == []


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return uncompressed_copy(EXAMPLES, tmp_path_factory.mktemp("threads") / "images")


@pytest.mark.parametrize("segment", [2, 5])
def test_same_archive_for_any_thread_count(source, tmp_path, segment):
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, segment_batches=segment)
    archives = {}
    for threads in (1, 3):
        output = io.BytesIO()
        compress([source], output, model=MODEL, adaptation=config, threads=threads, triage=False)
        archives[threads] = output.getvalue()
    assert archives[1] == archives[3]
    for threads in (1, 2):
        destination = tmp_path / f"restored-{threads}"
        decompress(io.BytesIO(archives[1]), destination, threads=threads)
        assert_same_tree(source, destination)
    assert test_archive(io.BytesIO(archives[1]), threads=2).images == 9


def cli_compress(source, archive, *options) -> None:
    result = CliRunner().invoke(main, ["compress", "-q", "--model", MODEL, "--tile-size", "16", "--batch-size", "4",
                                       "--batch-pixels", "0", "--every-image", *options, str(source), str(archive)])
    assert result.exit_code == 0, result.output


def test_command_line_same_archive_for_any_thread_count_and_the_default(source, tmp_path):
    archives = {}
    for threads in (["-T", "1"], ["-T", "2"], ["-T", "3"], []):
        archive = tmp_path / f"a{len(archives)}.osoa"
        cli_compress(source, archive, "--segment-size", "3", *threads)
        archives[" ".join(threads) or "default"] = archive.read_bytes()
    assert len(set(archives.values())) == 1, list(archives)
    header, _, batches = read_archive(io.BytesIO(archives["default"]))
    assert header["adaptation"]["segment_batches"] == 3
    assert sum(bool(b.flags & FLAG_SEGMENT_START) for b in batches) >= 3  # several segments were cut


def test_default_segment_size_is_a_constant(source, tmp_path):
    """Of the library and the command line alike: never of the thread count or the machine."""
    archive = tmp_path / "default.osoa"
    cli_compress(source, archive, "-T", "1")
    header, _, _ = read_archive(io.BytesIO(archive.read_bytes()))
    assert header["adaptation"]["segment_batches"] == AdaptationConfig().segment_batches == SEGMENT_BATCHES


def test_decoder_uses_every_cpu_by_default(source, tmp_path, monkeypatch):
    archive = tmp_path / "segments.osoa"
    cli_compress(source, archive, "--segment-size", "2")
    asked = []
    real = unpack.run_segments

    def spy(adapter, items, work, threads=1, chain=0):
        asked.append(threads)
        return real(adapter, items, work, threads, chain)

    monkeypatch.setattr(unpack, "run_segments", spy)
    for command in (["decompress", str(archive), str(tmp_path / "out")], ["test", str(archive)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0, result.output
    assert_same_tree(source, tmp_path / "out")
    if default_threads() > 1:  # one CPU decodes in order, without the pool
        assert asked and set(asked) == {default_threads()}


class _FakeConfig:
    segment_batches = 2


class _FakeAdapter:
    """What run_segments needs of an adapter."""

    config = _FakeConfig()

    def __init__(self, seen: int = 0) -> None:
        self.batches_seen = seen

    def fresh_segment(self, index: int) -> "_FakeAdapter":
        return _FakeAdapter(index)

    def end_run(self) -> None:
        pass


def test_segments_side_by_side_take_one_gemm_thread_each():
    seen = []

    def work(adapter, item):
        seen.append(stack.gemm_threads())
        return item

    previous = stack.gemm_threads()
    try:
        stack.set_gemm_threads(2)
        results, _ = run_segments(_FakeAdapter(), list(range(6)), work, threads=3)
        assert results == list(range(6)) and set(seen) == {1}
        assert stack.gemm_threads() == 2  # restored
        seen.clear()
        run_segments(_FakeAdapter(), [0], work, threads=3)  # one run: in order, two threads for wide products
        assert seen == [2]
    finally:
        stack.set_gemm_threads(previous)


def test_models_are_loaded_once(source, tmp_path, monkeypatch):
    loads = []
    real = registry.load_checkpoint
    monkeypatch.setattr(registry, "load_checkpoint", lambda *a, **k: loads.append(a) or real(*a, **k))
    config = AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, segment_batches=2)
    output = io.BytesIO()
    compress([source], output, model=MODEL, adaptation=config, threads=2, triage=False)
    assert len(loads) == 1
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out", threads=2)
    assert len(loads) == 2


def test_a_header_without_a_segment_size_means_one_segment():
    header = AdaptationConfig(learning_rate=1e-3, parameters="all").to_header()
    del header["segment_batches"]
    assert AdaptationConfig.from_header(header).segment_batches == 0
