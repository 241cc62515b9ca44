"""Archives written by earlier releases keep decoding, exactly (format 1.0 onward).

Each golden archive in tests/golden was written once and is never rewritten;
it must decode to the folder its module builds, with links, hard links,
empty folders, modes and times, on every later release and every machine.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from conftest import assert_same_tree

from osoa_zip import decompress, test_archive

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import engine_2  # noqa: E402
import format_1_0  # noqa: E402
import format_1_1  # noqa: E402
import format_1_2  # noqa: E402
import format_1_3  # noqa: E402
import format_1_4  # noqa: E402
import format_1_5  # noqa: E402
import format_1_5_verbatim  # noqa: E402
import format_1_6  # noqa: E402

# Every golden archive, with the format version its preamble must say.
ARCHIVES = {**dict.fromkeys(format_1_0.ARCHIVES, b"\x01\x00\x00\x00"),
            **dict.fromkeys(format_1_1.ARCHIVES, b"\x01\x00\x01\x00"),
            **dict.fromkeys(format_1_2.ARCHIVES, b"\x01\x00\x02\x00"),
            **dict.fromkeys(format_1_3.ARCHIVES, b"\x01\x00\x03\x00"),
            **dict.fromkeys(format_1_4.ARCHIVES, b"\x01\x00\x04\x00"),
            **dict.fromkeys(engine_2.ARCHIVES, b"\x01\x00\x05\x00"),
            **dict.fromkeys(format_1_6.ARCHIVES, b"\x01\x00\x06\x00")}


@pytest.fixture(scope="module")
def source_1_0(tmp_path_factory) -> Path:
    return format_1_0.build_source(tmp_path_factory.mktemp("golden") / "source")


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_golden_archive_decodes_exactly(name, source_1_0, tmp_path):
    """Archives of every format version were made from the same folder (format_1_0.build_source)."""
    data = (GOLDEN / name).read_bytes()
    assert data[8:12] == ARCHIVES[name]
    destination = tmp_path / "restored"
    decompress(io.BytesIO(data), destination)
    assert_same_tree(source_1_0, destination)
    assert (destination / "empty_dir").is_dir()
    notes, hardlink = destination / "notes.txt", destination / "nested" / "hardlink_to_notes"
    assert os.stat(notes).st_ino == os.stat(hardlink).st_ino
    assert os.readlink(destination / "nested" / "link_to_notes") == "../notes.txt"
    assert os.stat(destination / "images" / "rgb.png").st_mtime_ns == format_1_0.MTIME_NS


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_golden_archive_passes_test(name):
    summary = test_archive(io.BytesIO((GOLDEN / name).read_bytes()))
    assert summary.images == 7


def test_format_1_1_golden_archives_hold_what_1_1_added():
    from osoa_zip.adapt.engine import FLAG_GIVE_UP
    from osoa_zip.table import read_archive
    header, _, batches = read_archive(io.BytesIO((GOLDEN / "format-1.1-idf-tiny-test.osoa").read_bytes()))
    assert header["adaptation"]["batch_pixels"] == 512
    assert any(batch.flags & FLAG_GIVE_UP for batch in batches)


def test_format_1_2_golden_archives_hold_what_1_2_added():
    """The tiny model's 1.2 archive has batches of at most two 8 x 8 tiles (batch size 8): the cap made them."""
    from osoa_zip.table import read_archive
    header, _, batches = read_archive(io.BytesIO((GOLDEN / "format-1.2-idf-tiny-test.osoa").read_bytes()))
    assert header["adaptation"]["batch_pixels_max"] == 128
    assert header["adaptation"]["batch_size"] == 8
    assert max(batch.subpixels for batch in batches) == 3 * 128


def test_format_1_3_golden_archives_hold_what_1_3_added():
    """The tiny model's 1.3 archive batches grey 8 x 8 tiles four at a time and RGB ones one at a time."""
    from osoa_zip.table import read_archive
    header, _, batches = read_archive(io.BytesIO((GOLDEN / "format-1.3-idf-tiny-test.osoa").read_bytes()))
    assert header["adaptation"]["gray_batch_pixels"] == 256
    assert header["adaptation"]["batch_size"] == 1
    assert max(batch.subpixels for batch in batches) == 4 * 64
    assert 3 * 64 in {batch.subpixels for batch in batches}


def test_format_1_4_golden_archives_hold_what_1_4_added():
    """The VAE archives of 1.4 hold chains of batches on one bits-back stack: the tiny model's
    of three batches (and a last batch alone), v2's one chain of all its batches."""
    from osoa_zip.adapt.flags import FLAG_CHAIN_HEAD, FLAG_CHAINED
    from osoa_zip.table import read_archive
    for name, heads, chained in (("format-1.4-vae-tiny-test.osoa", 19, 38), ("format-1.4-vae-conv-v2.osoa", 1, 14)):
        header, _, batches = read_archive(io.BytesIO((GOLDEN / name).read_bytes()))
        assert header["model"]["family"] == "vae"
        assert sum(bool(b.flags & FLAG_CHAIN_HEAD) for b in batches) == heads
        assert sum(bool(b.flags & FLAG_CHAINED) for b in batches) == chained



@pytest.mark.parametrize("name", sorted(engine_2.ARCHIVES))
def test_engine_2_golden_archives_name_engine_2(name):
    """HEAD's engine record is exact-integer version 2 with every bound, and the model named
    runs on engine 2 (its manifest entry says so)."""
    from osoa_zip.exact.grid import ENGINE2
    from osoa_zip.models.catalog import available_models
    from osoa_zip.table import read_archive
    header = read_archive(io.BytesIO((GOLDEN / name).read_bytes()))[0]
    model, _ = engine_2.ARCHIVES[name]
    assert header["engine"] == ENGINE2 and header["model"]["name"] == model
    assert available_models()[model]["engine"] == 2


@pytest.mark.parametrize("name", sorted(format_1_6.ARCHIVES))
def test_format_1_6_golden_archives_hold_what_1_6_added(name):
    """HEAD is deflated JSON that names the engine by version alone; the reader (and `info`)
    expands it to the engine's whole record, which is the model's engine."""
    import json
    import zlib

    from osoa_zip.container.format import ArchiveReader
    from osoa_zip.exact.grid import ENGINES
    from osoa_zip.models.catalog import available_models
    from osoa_zip.table import read_archive
    data = (GOLDEN / name).read_bytes()
    tag, payload = next(ArchiveReader(io.BytesIO(data)).chunks())
    stored = json.loads(zlib.decompress(payload, -15))
    version = format_1_6.ENGINES[name]
    assert tag == b"HEAD" and stored["engine"] == {"version": version}
    header = read_archive(io.BytesIO(data))[0]
    model, _ = format_1_6.ARCHIVES[name]
    assert header["engine"] == ENGINES[version] and header["model"]["name"] == model
    assert available_models()[model].get("engine", 1) == version
    assert {key: value for key, value in header.items() if key != "engine"} == {
        key: value for key, value in stored.items() if key != "engine"}


def test_engine_2_tiny_golden_archive_replays_both_networks():
    """The tiny model's archive replays adapted batches of both channel counts: whole 8 x 8 tiles
    two to a batch are 2 * 64 sub-pixels only when grey, 2 * 3 * 64 only when RGB."""
    from osoa_zip.adapt.flags import FLAG_PRETRAINED
    from osoa_zip.table import read_archive
    batches = read_archive(io.BytesIO((GOLDEN / "format-1.5-engine-2-idf-tiny-test-e2.osoa").read_bytes()))[2]
    adapted = [batch.subpixels for batch in batches if not batch.flags & FLAG_PRETRAINED]
    assert len(batches) >= 30 and adapted.count(2 * 3 * 64) >= 10 and adapted.count(2 * 64) >= 4


@pytest.mark.parametrize("name", sorted(format_1_5.ARCHIVES))
def test_format_1_5_golden_archives_decode_exactly(name, tmp_path):
    """1.5's folder (1.0's plus files for solid blocks) comes back exactly, through every block."""
    data = (GOLDEN / name).read_bytes()
    assert data[8:12] == b"\x01\x00\x05\x00"
    source = format_1_5.build_source(tmp_path / "source")
    summary = decompress(io.BytesIO(data), tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")
    assert summary.blocks == 6 and summary.images == 7
    assert os.stat(tmp_path / "restored" / "code" / "part_1.py").st_mode & 0o777 == 0o755
    assert os.stat(tmp_path / "restored" / "texts" / "empty.txt").st_mtime_ns == format_1_0.MTIME_NS
    assert test_archive(io.BytesIO(data)).blocks == 6


def test_format_1_5_golden_archives_hold_what_1_5_added():
    """Solid blocks, one of them stored; files in streams of their own (larger than a block, incompressible)."""
    from osoa_zip.table import read_overview
    overview = read_overview(io.BytesIO((GOLDEN / "format-1.5-solid-idf-tiny-test.osoa").read_bytes()))
    methods = {entry.name: entry.method for entry in overview.entries if entry.kind == "file"}
    assert overview.version == (1, 5) and overview.totals()["solid_blocks"] == 6
    assert methods["texts/long.log"] == "xz" and methods["code/blob.bin"] == "store"
    assert methods["texts/salt.bin"] == "store" and methods["texts/chapter_0.txt"] == "solid"
    assert methods["texts/empty.txt"] == "solid"

@pytest.fixture(scope="module")
def source_1_5_verbatim(tmp_path_factory) -> Path:
    return format_1_5_verbatim.build_source(tmp_path_factory.mktemp("golden") / "source")


@pytest.mark.parametrize("name", sorted(format_1_5_verbatim.ARCHIVES))
def test_format_1_5_verbatim_golden_archive_decodes_byte_for_byte(name, source_1_5_verbatim, tmp_path):
    """Files other tools wrote (images/foreign) come back byte for byte from their pixels and
    verbatim bytes; the rest of the folder as format 1.0's archives restore it."""
    data = (GOLDEN / name).read_bytes()
    assert data[8:12] == b"\x01\x00\x05\x00"
    destination = tmp_path / "restored"
    decompress(io.BytesIO(data), destination)
    assert_same_tree(source_1_5_verbatim, destination)
    foreign = source_1_5_verbatim / "images" / "foreign"
    for path in sorted(foreign.iterdir()):
        assert (destination / "images" / "foreign" / path.name).read_bytes() == path.read_bytes(), path.name
    assert test_archive(io.BytesIO(data)).images == 7 + len(format_1_5_verbatim.FOREIGN)


def test_format_1_5_verbatim_golden_archives_hold_what_1_5_added():
    """Every foreign file is on the model path (or the palette path) with verbatim bytes and
    rasters; the LZW TIFF with its compression; strips.tif with one raster per strip."""
    from osoa_zip.container.format import ArchiveReader
    from osoa_zip.container.records import ImageTable
    from osoa_zip.table import read_table
    for name in format_1_5_verbatim.ARCHIVES:
        data = (GOLDEN / name).read_bytes()
        _, entries = read_table(io.BytesIO(data))
        methods = {entry.name: entry.method for entry in entries}
        images = {image.name: image for tag, payload in ArchiveReader(io.BytesIO(data)).chunks()
                  if tag == ImageTable.TAG for image in ImageTable.parse(payload).images}
        for file, (fmt, mode) in format_1_5_verbatim.FOREIGN.items():
            image = images[f"images/foreign/{file}"]
            assert (image.format, image.image_mode) == (fmt, mode), file
            assert methods[image.name] == ("palette" if mode == "P" else "model"), file
            if file == "lzw.tif":
                assert image.compression == "tiff_lzw" and not image.rasters
            else:
                assert image.rasters and image.verbatim and not image.compression, file
        assert len(images["images/foreign/strips.tif"].rasters) == 6
