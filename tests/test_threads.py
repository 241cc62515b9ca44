"""-T/--threads: segments coded and decoded side by side give the same bytes as one thread."""
from __future__ import annotations

import io

import pytest
from conftest import EXAMPLES, MODEL, assert_same_tree, uncompressed_copy

from osoa_zip import compress, decompress, test_archive
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.segments import split_runs


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
        compress([source], output, model=MODEL, adaptation=config, threads=threads)
        archives[threads] = output.getvalue()
    assert archives[1] == archives[3]
    for threads in (1, 2):
        destination = tmp_path / f"restored-{threads}"
        decompress(io.BytesIO(archives[1]), destination, threads=threads)
        assert_same_tree(source, destination)
    assert test_archive(io.BytesIO(archives[1]), threads=2).images == 9
