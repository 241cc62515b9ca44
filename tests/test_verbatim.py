"""BMP, PPM/PGM and TIFF files that Pillow does not write back byte for byte (format 1.5).

Files other tools wrote (a BMP with biSizeImage 0, a PGM with a comment line, a
TIFF with trailing bytes) take the model path with everything but their raster
kept verbatim, and come back byte-identical; a file whose raster cannot be
rebuilt from its pixels (non-zero row padding, a fourth BMP byte Pillow does not
write, compressed data) stays a general-path file, stored byte-exact.
"""
from __future__ import annotations

import io
import shutil
import struct

import numpy as np
import pytest
from conftest import EXAMPLES, MODEL, assert_same_tree
from crafting import Crafted
from PIL import Image

from osoa_zip import compress, decompress, test_archive
from osoa_zip.container import format as container_format
from osoa_zip.container.format import ArchiveError
from osoa_zip.files.restore import RefusedEntries
from osoa_zip.imaging.io import read_image, write_image
from osoa_zip.imaging.verbatim import MAX_VERBATIM_BYTES
from osoa_zip.table import read_table

SETTINGS = dict(tile_size=16, batch_size=4, batch_pixels=0)


@pytest.fixture
def format_1_5(monkeypatch):
    """Write format 1.5 (the verbatim fields' version) whatever this release's constant says."""
    monkeypatch.setattr(container_format, "FORMAT_MINOR", max(5, container_format.FORMAT_MINOR))


def photo(width: int, height: int, mode: str = "RGB") -> np.ndarray:
    with Image.open(EXAMPLES / "0002.png") as image:
        crop = image.convert(mode).crop((3, 5, 3 + width, 5 + height))
        array = np.asarray(crop)
    return array.reshape(height, width, -1)


def bmp(pixels: np.ndarray, bits: int = 24, top_down: bool = False, palette: bytes | None = None,
        pad_byte: int = 0, fourth_byte: int = 0, offset_gap: bytes = b"", size_lies: bool = False) -> bytes:
    """A BMP as other tools write it: 72 dpi, biSizeImage 0; optionally top-down, 32-bit,
    8-bit with a palette, with padding bytes, a gap before the pixels, or a bfSize that lies."""
    height, width = pixels.shape[:2]
    if bits == 24:
        rows = pixels[:, :, ::-1].reshape(height, -1)
    elif bits == 32:
        fourth = np.full((height, width, 1), fourth_byte, np.uint8)
        rows = np.concatenate([pixels[:, :, ::-1], fourth], 2).reshape(height, -1)
    else:
        rows = pixels.reshape(height, width)
    rows = rows if top_down else rows[::-1]
    stride = (rows.shape[1] + 3) // 4 * 4
    padded = np.full((height, stride), pad_byte, np.uint8)
    padded[:, :rows.shape[1]] = rows
    palette = palette or b""
    info = struct.pack("<IiiHHIIiiII", 40, width, -height if top_down else height, 1, bits, 0, 0, 2835, 2835,
                       len(palette) // 4, 0)
    offset = 14 + len(info) + len(palette) + len(offset_gap)
    data = padded.tobytes()
    size = offset + len(data) + (1000 if size_lies else 0)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, offset) + info + palette + offset_gap + data


def grey_palette() -> bytes:
    return b"".join(bytes([i, i, i, 0]) for i in range(256))


def colour_palette() -> bytes:
    return b"".join(bytes([16 * i, 255 - 16 * i, 7 * i, 0]) for i in range(16))


def netpbm(pixels: np.ndarray, comment: bytes = b"", trailer: bytes = b"") -> bytes:
    height, width, channels = pixels.shape
    magic = b"P5" if channels == 1 else b"P6"
    return magic + b"\n" + comment + f"{width} {height}\n255\n".encode() + pixels.tobytes() + trailer


def tiff(pixels: np.ndarray, trailer: bytes = b"", libtiff: bool = False, **options) -> bytes:
    """A TIFF by Pillow's own writer, or by libtiff's (pixels before the tags, in strips)."""
    from PIL import TiffImagePlugin
    buffer = io.BytesIO()
    previous, TiffImagePlugin.WRITE_LIBTIFF = TiffImagePlugin.WRITE_LIBTIFF, libtiff
    try:
        Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, "TIFF", **options)
    finally:
        TiffImagePlugin.WRITE_LIBTIFF = previous
    return buffer.getvalue() + trailer


# name -> bytes of files that keep their bytes only through the verbatim path
FOREIGN = {
    **{f"w{width}.bmp": bmp(photo(width, 30)) for width in (1, 30, 31, 33, 40)},  # every row padding
    "top_down.bmp": bmp(photo(37, 25), top_down=True),
    "bgrx.bmp": bmp(photo(37, 25), bits=32),
    "grey8.bmp": bmp(photo(39, 24, "L"), bits=8, palette=grey_palette()),
    "palette8.bmp": bmp(photo(9, 4, "L") % 16, bits=8, palette=colour_palette()),
    "gap_before_pixels.bmp": bmp(photo(35, 23), offset_gap=b"hello, world"),
    "bfsize_lies.bmp": bmp(photo(35, 23), size_lies=True),
    "gimp.ppm": netpbm(photo(41, 27), comment=b"# CREATOR: GIMP PNM Filter Version 1.1\n"),
    "trailing.pgm": netpbm(photo(41, 27, "L"), trailer=b"\x00trailing bytes"),
    "trailing.tif": tiff(photo(40, 26), trailer=b"appended"),
    "description.tif": tiff(photo(40, 49, "L"), tiffinfo={270: "a description Pillow drops"}),
    "strips.tif": tiff(photo(40, 49, "L"), libtiff=True, strip_size=256),  # 9 strips
    "strips_rgb.tif": tiff(photo(40, 49), libtiff=True, strip_size=1024),
}
# name -> bytes of files whose raster is not a function of their pixels: the general path
GENERAL = {
    "padding_not_zero.bmp": bmp(photo(5, 3), pad_byte=7),
    "fourth_byte_not_zero.bmp": bmp(photo(5, 3), bits=32, fourth_byte=255),
    "truncated.ppm": netpbm(photo(11, 7))[:-5],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("verbatim") / "src"
    root.mkdir()
    for name, data in {**FOREIGN, **GENERAL}.items():
        (root / name).write_bytes(data)
    (root / "lzw.tif").write_bytes(tiff(photo(42, 30), compression="tiff_lzw"))
    (root / "pillow.bmp").write_bytes(_pillow(photo(36, 25), "BMP"))
    (root / "pillow.ppm").write_bytes(_pillow(photo(36, 25), "PPM"))
    return root


def _pillow(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_a_foreign_file_keeps_its_bytes_around_its_rasters(folder, tmp_path, name):
    record = read_image(folder / name, verbatim=True)
    assert record is not None and record.rasters and not record.compression
    with Image.open(folder / name) as image:
        assert record.mode == image.mode
        assert np.array_equal(record.pixels.reshape(image.height, image.width, -1),
                              np.asarray(image).reshape(image.height, image.width, -1))
    assert len(record.verbatim) == (folder / name).stat().st_size - sum(r.length for r in record.rasters)
    if name.startswith("strips"):
        assert len(record.rasters) > 1
    write_image(tmp_path / name, record)
    assert (tmp_path / name).read_bytes() == (folder / name).read_bytes()


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_format_1_4_leaves_a_foreign_file_to_the_general_path(folder, name):
    assert read_image(folder / name) is None


@pytest.mark.parametrize("name", sorted(GENERAL))
def test_a_raster_not_rebuilt_from_its_pixels_stays_a_file(folder, name):
    assert read_image(folder / name, verbatim=True) is None


def test_files_pillow_writes_back_need_no_verbatim_bytes(folder):
    for name in ("pillow.bmp", "pillow.ppm"):
        record = read_image(folder / name, verbatim=True)
        assert record is not None and not record.rasters and not record.verbatim, name


def test_an_lzw_tiff_pillow_wrote_is_written_back_lzw(folder, tmp_path):
    assert read_image(folder / "lzw.tif") is None  # format 1.4 writes TIFFs uncompressed only
    record = read_image(folder / "lzw.tif", verbatim=True)
    assert record is not None and record.compression == "tiff_lzw" and not record.rasters
    write_image(tmp_path / "lzw.tif", record)
    assert (tmp_path / "lzw.tif").read_bytes() == (folder / "lzw.tif").read_bytes()


def test_too_many_verbatim_bytes_stay_a_file(tmp_path):
    path = tmp_path / "long_trailer.ppm"
    path.write_bytes(netpbm(photo(4, 4), trailer=bytes(MAX_VERBATIM_BYTES)))
    assert read_image(path, verbatim=True) is None


def test_byte_exact_records_the_hash_of_a_foreign_file(folder):
    import hashlib
    record = read_image(folder / "gimp.ppm", byte_exact=True, verbatim=True)
    assert record.sha256 == hashlib.sha256((folder / "gimp.ppm").read_bytes()).hexdigest()


def _archive(folder, **options) -> bytes:
    output = io.BytesIO()
    compress([folder], output, model=MODEL, adaptation=_config(), triage=False, **options)
    return output.getvalue()


def _config():
    from osoa_zip.adapt.config import AdaptationConfig
    return AdaptationConfig(**SETTINGS)


@pytest.fixture(scope="module")
def archive(folder) -> bytes:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(container_format, "FORMAT_MINOR", max(5, container_format.FORMAT_MINOR))
        return _archive(folder)


def test_every_file_comes_back_byte_identical(folder, archive, format_1_5, tmp_path):
    assert archive[8:12] == bytes([1, 0, max(5, container_format.FORMAT_MINOR), 0])  # 1.5's fields or later
    _, entries = read_table(io.BytesIO(archive))
    methods = {entry.name: entry.method for entry in entries}
    for name in [*FOREIGN, "lzw.tif", "pillow.bmp", "pillow.ppm"]:
        assert methods[name] == ("palette" if name == "palette8.bmp" else "model"), name
    for name in GENERAL:
        assert methods[name] in ("solid", "xz", "store"), name
    decompress(io.BytesIO(archive), tmp_path / "out")
    assert_same_tree(folder, tmp_path / "out")
    for path in folder.iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name
    assert test_archive(io.BytesIO(archive)).images == len(FOREIGN) + 3


def test_byte_exact_round_trip(folder, format_1_5, tmp_path):
    data = _archive(folder, byte_exact=True)
    decompress(io.BytesIO(data), tmp_path / "out")
    for path in folder.iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_1_4_archive_holding_1_5_fields_is_refused(archive, format_1_5, tmp_path):
    with pytest.raises(ArchiveError, match="fields of format 1.5"):
        decompress(io.BytesIO(_with_minor(archive, 4)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _with_minor(data: bytes, minor: int) -> bytes:
    """The archive re-framed as another minor version (the END digest covers the preamble)."""
    return Crafted.parse(data).as_minor(minor).build()


def _first_raster(crafted: Crafted) -> tuple[str, list]:
    table = crafted.value(crafted.index(b"IMGS"))
    entry = next(entry for entry in table if entry.get("rasters"))
    return entry["path"], entry["rasters"]


@pytest.mark.parametrize("change, reason", [
    (lambda row: row.__setitem__(5, "I;16"), "raw mode"),
    (lambda row: row.__setitem__(6, 1 << 30), "stride"),
    (lambda row: row.__setitem__(7, 2), "row step"),
    (lambda row: row.__setitem__(3, 10 ** 6), "outside the image"),
    (lambda row: row.__setitem__(0, 10 ** 7), "beyond the verbatim bytes"),
], ids=["raw-mode", "stride", "row-step", "box", "offset"])
def test_hostile_rasters_are_refused_before_anything_is_encoded(archive, format_1_5, tmp_path, change, reason):
    crafted = Crafted.parse(archive)
    name, rows = _first_raster(crafted)
    rows = [list(row) for row in rows]
    change(rows[0])
    crafted.edit(name, rasters=rows)
    with pytest.raises(RefusedEntries) as refused:
        decompress(io.BytesIO(crafted.build()), tmp_path / "out")
    assert len(refused.value.reasons) >= 1 and reason in refused.value.reasons[0]
    assert name in refused.value.reasons[0]


@pytest.mark.parametrize("fields", [{"rasters": [[0, 0, 0, 1]]}, {"rasters": "no"}, {"verbatim": "!!"},
                                    {"compression": "jpeg"}],
                         ids=["short-row", "not-a-list", "not-base64", "compression"])
def test_malformed_fields_are_a_malformed_table(archive, format_1_5, tmp_path, fields):
    crafted = Crafted.parse(archive)
    name, _ = _first_raster(crafted)
    crafted.edit(name, **fields)
    with pytest.raises(ArchiveError, match="image table|compression|rasters"):
        decompress(io.BytesIO(crafted.build()), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_that_changes_between_read_and_check_stays_exact(folder, format_1_5, tmp_path, monkeypatch):
    """Failure injection: the rebuild check sees other bytes than the decode did (the file was
    rewritten in between): the image must not take the model path with stale verbatim bytes."""
    from osoa_zip.imaging import io as image_io
    source = tmp_path / "src"
    shutil.copytree(folder, source)
    real = image_io.verbatim_bytes

    def tampered(handle, size, rasters):
        data = real(handle, size, rasters)
        return None if data is None else bytes([data[0] ^ 1]) + data[1:]

    monkeypatch.setattr(image_io, "verbatim_bytes", tampered)
    assert read_image(source / "gimp.ppm", verbatim=True) is None
    data = _archive(source)
    decompress(io.BytesIO(data), tmp_path / "out")
    assert (tmp_path / "out" / "gimp.ppm").read_bytes() == (folder / "gimp.ppm").read_bytes()
