"""Engine 2 in archives: exact round trips, the same bytes on every kernel, and its engine record.

A model whose config says ``"engine": 2`` (here the tiny ``idf-tiny-test-e2``)
codes with exact integer convolutions (docs/ENGINE2.md).  Its archives must
come back exactly after long adaptation runs of both channel counts with every
parameter selection; ``compress`` must write the same bytes under every forced
kernel (OSOA_ZIP_KERNEL, read once per process, hence subprocesses) and any
thread count, and every kernel must decode every other's archive; HEAD carries
ENGINE2 (since format 1.6 named by its version alone), which ``info`` shows in
full; and an archive whose engine record is unknown, or is not its model's
engine, is refused in one line before anything is written.  The ISA x
capability x thread matrix is tests/test_portability.py's.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, SINGLE_THREAD_ENV, assert_same_tree, uncompressed_copy
from crafting import Crafted
from crafting import build_source as build_small_source
from PIL import Image
from test_cli import assert_left_nothing, assert_one_line_error

from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.flags import FLAG_PRETRAINED, FLAG_SEGMENT_START
from osoa_zip.archive import ArchiveError, compress, decompress, test_archive
from osoa_zip.cli import main
from osoa_zip.exact.grid import ENGINE, ENGINE2, ENGINES
from osoa_zip.exact.kernels import KERNEL_ENVIRONMENT, KERNELS
from osoa_zip.table import read_archive, read_overview

MODEL = "idf-tiny-test-e2"
ENGINE1_MODEL = "idf-tiny-test"  # the same architecture on engine 1
TILE = 16
# 16 x 16 tiles, four to a batch for both channel counts (gray_batch_pixels 0: as batch_pixels,
# 0: always batch_size): 24 RGB and 7 grey batches from examples/images.
SETTINGS = {"tile_size": TILE, "batch_size": 4, "batch_pixels": 0, "gray_batch_pixels": 0,
            "learning_rate": 2e-3, "gray_parameters": ""}
CLI_SETTINGS = ["--model", MODEL, "--tile-size", str(TILE), "--batch-size", "4", "--batch-pixels", "0",
                "--gray-batch-pixels", "0", "--lr", "2e-3", "--gray-adapt-params", "all", "--every-image"]
RGB_SUBPIXELS, GRAY_SUBPIXELS = 4 * TILE * TILE * 3, 4 * TILE * TILE


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """examples/images, uncompressed (so the model path wins), plus RGB and grey crops with odd
    sides (padded tiles) and a one-pixel image."""
    root = uncompressed_copy(EXAMPLES, tmp_path_factory.mktemp("engine2") / "source")
    with Image.open(EXAMPLES / "0002.png") as rgb, Image.open(EXAMPLES / "0006.png") as gray:
        for width, height in ((1, 1), (13, 5), (31, 17)):
            rgb.crop((5, 3, 5 + width, 3 + height)).save(root / f"rgb_{width}x{height}.png", compress_level=0)
            gray.crop((2, 7, 2 + width, 7 + height)).save(root / f"gray_{width}x{height}.png", compress_level=0)
    return root


def _environment(kernel: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != KERNEL_ENVIRONMENT}
    env.update(SINGLE_THREAD_ENV)
    if kernel is not None:
        env[KERNEL_ENVIRONMENT] = kernel
    return env


def run_cli(*args, kernel: str | None = None) -> subprocess.CompletedProcess:
    """`python -m osoa_zip ARGS` in a fresh process (the kernel is chosen once per process)."""
    return subprocess.run([sys.executable, "-m", "osoa_zip", *map(str, args)], env=_environment(kernel),
                          capture_output=True, text=True, timeout=600)


def _compress_cli(source: Path, archive: Path, *extra, kernel: str | None = None) -> bytes:
    result = run_cli("compress", "-q", *CLI_SETTINGS, *extra, source, archive, kernel=kernel)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return archive.read_bytes()


def _adapted_full_batches(data: bytes) -> dict[str, int]:
    """Batches of four whole tiles coded by an adapted model (not FLAG_PRETRAINED, not a segment's
    first), per channel count: 4 * 256 sub-pixels can only be grey, 3 * 4 * 256 only RGB."""
    counts = {"rgb": 0, "gray": 0}
    for batch in read_archive(io.BytesIO(data))[2]:
        if not batch.flags & (FLAG_PRETRAINED | FLAG_SEGMENT_START):
            kind = {RGB_SUBPIXELS: "rgb", GRAY_SUBPIXELS: "gray"}.get(batch.subpixels)
            if kind:
                counts[kind] += 1
    return counts


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("selection", ["all", "last", "bias"])
def test_round_trip_with_every_parameter_selection(source, tmp_path, selection):
    """Without the guard every batch after a track's first is coded by the adapted model, so the
    decoder must replay every update exactly: 20+ RGB and several grey batches."""
    config = AdaptationConfig(**dict(SETTINGS, parameters=selection, guard=False))
    output = io.BytesIO()
    summary = compress([source], output, model=MODEL, adaptation=config, triage=False)
    assert len(summary.batches) >= 30
    counts = _adapted_full_batches(output.getvalue())
    assert counts["rgb"] >= 20 and counts["gray"] >= 5, counts
    decompress(io.BytesIO(output.getvalue()), tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")


def test_parameter_selections_adapt_different_parameters(source):
    """The three selections code the batches in different sizes: the updates reach the coding."""
    sizes = set()
    for selection in ("all", "last", "bias"):
        output = io.BytesIO()
        compress([source], output, model=MODEL, adaptation=AdaptationConfig(**dict(SETTINGS, parameters=selection,
                                                                                     guard=False)),
                 triage=False)
        sizes.add(tuple(batch.bits for batch in read_archive(io.BytesIO(output.getvalue()))[2]))
    assert len(sizes) == 3


def test_round_trip_of_the_fixture_tree(source_tree, tmp_path):
    """Every kind of file of the shared fixture (alpha, palettes, text chunks, 16-bit and broken
    images, plain files), with the guard and the model's default settings but small tiles."""
    output = io.BytesIO()
    compress([source_tree], output, model=MODEL, adaptation=AdaptationConfig(tile_size=TILE, batch_size=4),
             triage=False)
    decompress(io.BytesIO(output.getvalue()), tmp_path / "restored")
    assert_same_tree(source_tree, tmp_path / "restored")


# -- the same bytes on every kernel, with any number of threads ---------------------------------


@pytest.fixture(scope="module")
def default_archive(source, tmp_path_factory) -> bytes:
    """The CLI's archive with the kernel this process would choose (the guard on: its decisions
    must also be the same everywhere)."""
    data = _compress_cli(source, tmp_path_factory.mktemp("default") / "default.osoa", "-T", "1")
    assert len(read_archive(io.BytesIO(data))[2]) >= 30
    counts = _adapted_full_batches(data)
    assert counts["rgb"] >= 10 and counts["gray"] >= 3, counts
    return data


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_every_kernel_writes_the_same_archive(source, default_archive, tmp_path, kernel):
    assert _compress_cli(source, tmp_path / f"{kernel}.osoa", "-T", "1", kernel=kernel) == default_archive


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_every_kernel_decodes_the_default_archive(source, default_archive, tmp_path, kernel):
    archive = tmp_path / "default.osoa"
    archive.write_bytes(default_archive)
    result = run_cli("decompress", "-q", archive, tmp_path / "restored", kernel=kernel)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert_same_tree(source, tmp_path / "restored")


def test_threads_write_the_same_archive(source, tmp_path):
    """Segments coded side by side (-T 2) or one after the other (-T 1): the same bytes."""
    one = _compress_cli(source, tmp_path / "one.osoa", "-T", "1", "--segment-size", "8")
    two = _compress_cli(source, tmp_path / "two.osoa", "-T", "2", "--segment-size", "8")
    assert one == two
    assert sum(bool(batch.flags & FLAG_SEGMENT_START) for batch in read_archive(io.BytesIO(one))[2]) >= 4
    result = run_cli("decompress", "-q", "-T", "2", tmp_path / "two.osoa", tmp_path / "restored")
    assert result.returncode == 0, result.stderr
    assert_same_tree(source, tmp_path / "restored")


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_an_unknown_kernel_is_a_usage_error(source, default_archive, tmp_path, command):
    archive, destination = tmp_path / "a.osoa", tmp_path / "restored"
    if command == "compress":
        result = run_cli("compress", "-q", *CLI_SETTINGS, source, archive, kernel="bogus")
        assert not archive.exists()
    else:
        archive.write_bytes(default_archive)
        result = run_cli("decompress", "-q", archive, destination, kernel="bogus")
        assert_left_nothing(destination)
    assert_one_line_error(result, 2)
    assert KERNEL_ENVIRONMENT in result.stderr and "bogus" in result.stderr


# -- the engine record -------------------------------------------------------------------------


def test_the_header_names_engine_2_and_info_shows_it(default_archive, tmp_path):
    archive = tmp_path / "a.osoa"
    archive.write_bytes(default_archive)
    header = read_archive(io.BytesIO(default_archive))[0]
    assert header["engine"] == ENGINE2 and header["model"]["name"] == MODEL
    info = CliRunner().invoke(main, ["info", "--json", str(archive)])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["engine"] == ENGINE2 and json.loads(info.output)["engine"]["version"] == 2
    people = CliRunner().invoke(main, ["info", str(archive)])
    assert people.exit_code == 0
    assert "engine:     exact-integer version 2" in people.output.splitlines()


@pytest.fixture(scope="module")
def small_archives(tmp_path_factory) -> dict[str, bytes]:
    """crafting.build_source's folder (files, links, an empty folder) and an RGB and a grey image
    big enough for the model path, compressed with the engine-2 model and its engine-1 twin."""
    root = tmp_path_factory.mktemp("small")
    source = build_small_source(root / "source", images=0)
    with Image.open(EXAMPLES / "0002.png") as rgb, Image.open(EXAMPLES / "0006.png") as gray:
        rgb.save(source / "rgb.png", compress_level=0)
        gray.save(source / "gray.png", compress_level=0)
    archives = {"source": source}
    for model in (MODEL, ENGINE1_MODEL):
        output = io.BytesIO()
        compress([source], output, model=model, adaptation=AdaptationConfig(tile_size=TILE, batch_size=4),
                 triage=False)
        archives[model] = output.getvalue()
    return archives


def _with_engine(data: bytes, engine: dict, minor: int | None = None) -> bytes:
    """The archive with HEAD's engine object replaced, as format 1.``minor`` (default: as written)."""
    crafted = Crafted.parse(data)
    crafted = crafted if minor is None else crafted.as_minor(minor)
    index = crafted.index(b"HEAD")
    header = crafted.value(index)
    header["engine"] = engine
    return crafted.set_value(index, header).build()


# Format 1.5 and older: HEAD carries the whole record, compared with the known ones.
UNKNOWN_RECORDS = {
    "version-3": dict(ENGINE2, version=3),
    "engine-2-other-bounds": dict(ENGINE2, leaky_shift=4),
    "engine-2-without-a-field": {key: value for key, value in ENGINE2.items() if key != "gradient_limbs"},
    "engine-1-renamed": dict(ENGINE, name="exact-integer"),
    "empty": {},
    "named-by-version-alone": {"version": 2},  # 1.6's spelling, in a 1.5 archive
}
# Format 1.6: HEAD names the engine by version alone.
UNKNOWN_NAMES = {
    "version-3": {"version": 3},
    "version-0": {"version": 0},
    "version-as-text": {"version": "2"},
    "version-as-bool": {"version": True},
    "the-whole-record": ENGINE2,  # 1.5's spelling, in a 1.6 archive
    "version-and-more": {"version": 2, "leaky_shift": 4},
    "empty": {},
}
ENGINE_CASES = [(5, name) for name in sorted(UNKNOWN_RECORDS)] + [(None, name) for name in sorted(UNKNOWN_NAMES)]


@pytest.mark.parametrize("minor, engine", ENGINE_CASES,
                         ids=[f"{'1.5' if minor else 'today'}-{name}" for minor, name in ENGINE_CASES])
def test_an_unknown_engine_record_is_refused_in_one_line(small_archives, tmp_path, minor, engine):
    """By `decompress`, `test` and `info` alike, before anything is written."""
    record = (UNKNOWN_RECORDS if minor else UNKNOWN_NAMES)[engine]
    archive, destination = tmp_path / "crafted.osoa", tmp_path / "restored"
    archive.write_bytes(_with_engine(small_archives[MODEL], record, minor))
    result = run_cli("decompress", archive, destination)
    assert_one_line_error(result, 1)
    assert "engine" in result.stderr
    assert_left_nothing(destination)
    readers = [test_archive] + ([read_overview] if not minor or engine == "named-by-version-alone" else [])
    for read in readers:  # `info` shows a 1.5 archive's whole record as stored, known or not
        with pytest.raises(ArchiveError, match="engine") as caught:
            read(io.BytesIO(archive.read_bytes()))
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("model, record", [(MODEL, ENGINE2), (ENGINE1_MODEL, ENGINE)], ids=["engine-2", "engine-1"])
def test_a_1_5_archive_keeps_its_whole_record(small_archives, tmp_path, model, record):
    """The same archive said to be format 1.5, HEAD spelt as 1.5 spelt it: it decodes, and
    `info` shows the record it holds."""
    data = Crafted.parse(small_archives[model]).as_minor(5).build()
    assert data[10:12] == b"\x05\x00"
    assert read_archive(io.BytesIO(data))[0]["engine"] == record
    decompress(io.BytesIO(data), tmp_path / "restored")
    assert_same_tree(small_archives["source"], tmp_path / "restored")


@pytest.mark.parametrize("minor", [None, 5], ids=["today", "1.5"])
@pytest.mark.parametrize("model, version", [(MODEL, 1), (ENGINE1_MODEL, 2)],
                         ids=["engine-1-record-with-an-engine-2-model", "engine-2-record-with-an-engine-1-model"])
def test_an_engine_that_is_not_the_models_is_refused_in_one_line(small_archives, tmp_path, model, version, minor):
    """Both engines are known, but the model named by the header runs on the other one: its
    replay would not be the encoder's.  The refusal comes when the first image batch loads the
    model, after plain files were decoded: none of them may be left behind.  Format 1.6 names
    the engine by version, 1.5 spelt out its whole record."""
    data = _with_engine(small_archives[model], ENGINES[version] if minor else {"version": version}, minor)
    with pytest.raises(ArchiveError, match=f"engine v{version}.*{model}"):
        decompress(io.BytesIO(data), tmp_path / "api")
    assert_left_nothing(tmp_path / "api")
    archive, destination = tmp_path / "crafted.osoa", tmp_path / "restored"
    archive.write_bytes(data)
    result = run_cli("decompress", archive, destination)
    assert_one_line_error(result, 1)
    assert_left_nothing(destination)
    test = run_cli("test", archive)
    assert_one_line_error(test, 1)


def test_the_untouched_small_archives_decode(small_archives, tmp_path):
    """The crafted archives above differ from these only in HEAD's engine record; both images
    took the model path."""
    for model in (MODEL, ENGINE1_MODEL):
        assert [entry.kind for entry in read_archive(io.BytesIO(small_archives[model]))[1]].count("image") == 2
        assert read_archive(io.BytesIO(small_archives[model]))[2]
        decompress(io.BytesIO(small_archives[model]), tmp_path / model)
        assert_same_tree(small_archives["source"], tmp_path / model)
    assert read_archive(io.BytesIO(small_archives[ENGINE1_MODEL]))[0]["engine"] == ENGINE
