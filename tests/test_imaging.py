"""Which files take the model path, and writing decoded images back.

A file may take the model path only if writing its decoded pixels back gives
the same pixels, mode and metadata; anything else must fall back to the
general path (stored byte for byte), never raise and never lose data.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from conftest import EXAMPLES, GENERAL_PATH_IMAGES, NON_IMAGE_FILES, model_path_images
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from osoa_zip.imaging.io import ImageRecord, read_image, write_image

RGB_EXAMPLE = EXAMPLES / "0000.png"
GRAY_EXAMPLE = EXAMPLES / "0006.png"


def pillow_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image)
    return array.reshape(array.shape[0], array.shape[1], -1)


def assert_record_matches_file(record: ImageRecord, path, mode: str, image_format: str) -> None:
    assert record is not None, f"{path} should take the model path"
    assert (record.mode, record.format) == (mode, image_format)
    assert record.pixels.dtype == np.uint8 and record.pixels.ndim == 3
    assert record.pixels.shape[2] == {"L": 1, "RGB": 3}[mode]
    assert record.pixels.flags.c_contiguous
    assert np.array_equal(record.pixels, pillow_pixels(path))


@pytest.mark.parametrize("example, mode", [(RGB_EXAMPLE, "RGB"), (GRAY_EXAMPLE, "L")])
def test_example_pngs_take_the_model_path(example, mode):
    assert_record_matches_file(read_image(example), example, mode, "PNG")


def test_every_image_of_the_fixture_tree_is_classified_as_intended(source_tree):
    """The CLI tests rely on this split; check it once, explicitly."""
    wrong = [name for name in model_path_images() if read_image(source_tree / name) is None]
    wrong += [name for name in GENERAL_PATH_IMAGES + NON_IMAGE_FILES if read_image(source_tree / name) is not None]
    assert not wrong


@pytest.mark.parametrize("image_format, suffix", [("PNG", "png"), ("PPM", "ppm"), ("BMP", "bmp"), ("TIFF", "tif")])
@pytest.mark.parametrize("example, mode", [(RGB_EXAMPLE, "RGB"), (GRAY_EXAMPLE, "L")])
def test_lossless_formats_take_the_model_path_and_round_trip(tmp_path, example, mode, image_format, suffix):
    """PNG/PPM/BMP/TIFF written by Pillow are model-path images, and write_image gives them back."""
    path = tmp_path / f"image.{suffix}"
    with Image.open(example) as image:
        image.save(path, format=image_format)
    record = read_image(path)
    assert_record_matches_file(record, path, mode, image_format)
    restored = tmp_path / f"restored.{suffix}"
    write_image(restored, record)
    with Image.open(path) as a, Image.open(restored) as b:
        assert (b.format, b.mode, b.size, b.info) == (a.format, a.mode, a.size, a.info)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    again = read_image(restored)
    assert np.array_equal(again.pixels, record.pixels) and (again.mode, again.format) == (mode, image_format)


@pytest.mark.parametrize("name", GENERAL_PATH_IMAGES + NON_IMAGE_FILES)
def test_general_path_cases_of_the_fixture_tree(source_tree, name):
    assert read_image(source_tree / name) is None


def _save(tmp_path, name, image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def _more_general_path_cases(tmp_path):
    """Images Pillow reads fine but whose file the model path could not reproduce."""
    with Image.open(RGB_EXAMPLE) as opened:
        rgb = opened.copy()
    with Image.open(GRAY_EXAMPLE) as opened:
        gray = opened.copy()
    cases = {
        "gif": _save(tmp_path, "a.gif", rgb),
        "1-bit": _save(tmp_path, "one.png", rgb.convert("1")),
        "lossless webp": _save(tmp_path, "g.webp", gray, lossless=True),
        "CMYK tiff": _save(tmp_path, "cmyk.tif", rgb.convert("CMYK")),
        "two-page tiff": _save(tmp_path, "pages.tif", gray, save_all=True, append_images=[gray.rotate(90)]),
        "16-bit ppm": _save(tmp_path, "deep.ppm", Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)),
    }
    return cases


def test_more_general_path_cases(tmp_path):
    accepted = [name for name, path in _more_general_path_cases(tmp_path).items() if read_image(path) is not None]
    assert not accepted


def _png_header_only(width: int, height: int) -> bytes:
    def png_chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 10))


@pytest.mark.parametrize("width, height", [(15_000, 15_000), (100_000, 1_000)])
def test_decompression_bombs_take_the_general_path(tmp_path, width, height):
    """A tiny file declaring a huge image must not be decoded (memory), just stored."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(width, height))
    assert read_image(path) is None


def test_unreadable_paths_are_not_errors(tmp_path):
    assert read_image(tmp_path) is None  # a directory
    assert read_image(tmp_path / "missing.png") is None


def test_format_is_taken_from_content_not_name(tmp_path):
    """A PNG named .bmp is a PNG; it must be written back as a PNG."""
    path = tmp_path / "lies.bmp"
    path.write_bytes(GRAY_EXAMPLE.read_bytes())
    record = read_image(path)
    assert record is not None and record.format == "PNG"


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.sampled_from(["L", "RGB"]),
       st.sampled_from(["PNG", "PPM", "BMP", "TIFF"]), st.integers(0, 2 ** 32 - 1))
def test_write_read_round_trip(tmp_path_factory, height, width, mode, image_format, seed):
    """write_image(record) then read_image gives the same record, for any pixels and size."""
    channels = {"L": 1, "RGB": 3}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    path = tmp_path_factory.mktemp("rt") / "image"
    write_image(path, ImageRecord(pixels=pixels, mode=mode, format=image_format))
    record = read_image(path)
    assert record is not None
    assert (record.mode, record.format) == (mode, image_format)
    assert np.array_equal(record.pixels, pixels)


def _png_with_private_chunk(tmp_path):
    """The gray example with a private ancillary chunk ('prVt', e.g. an editor's layer data) after IHDR."""
    data = GRAY_EXAMPLE.read_bytes()
    payload = b"application data that must survive"
    extra = struct.pack(">I", len(payload)) + b"prVt" + payload + struct.pack(">I", zlib.crc32(b"prVt" + payload))
    path = tmp_path / "private.png"
    path.write_bytes(data[:33] + extra + data[33:])  # 8-byte signature + 25-byte IHDR chunk
    return path, payload


def _tiff_with_description(tmp_path):
    from PIL import TiffImagePlugin
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[270] = "ImageDescription that must survive"  # ImageDescription
    tags[315] = "Artist that must survive"  # Artist
    path = tmp_path / "described.tif"
    with Image.open(GRAY_EXAMPLE) as image:
        image.save(path, tiffinfo=tags)
    return path, b"ImageDescription that must survive"


@pytest.mark.parametrize("make", [_png_with_private_chunk, _tiff_with_description], ids=["png-private-chunk",
                                                                                        "tiff-description"])
def test_data_outside_pixels_and_info_is_not_lost(tmp_path, make):
    """Either the file takes the general path (stored as is), or writing it back keeps the extra data."""
    path, must_survive = make(tmp_path)
    assert must_survive in path.read_bytes()
    record = read_image(path)
    if record is None:
        return
    restored = tmp_path / "restored"
    write_image(restored, record)
    assert must_survive in restored.read_bytes()


@pytest.mark.parametrize("name, options", [
    ("trns.png", {"transparency": (0, 0, 0)}),
    ("dpi.png", {"dpi": (300, 300)}),
    ("gamma-icc.png", {"icc_profile": b"not really a profile but kept verbatim" * 10}),
])
def test_png_metadata_is_kept_verbatim(tmp_path, name, options):
    """Metadata PNGs take the model path and come back with every ancillary chunk byte-identical."""
    with Image.open(RGB_EXAMPLE) as opened:
        path = _save(tmp_path, name, opened.copy(), **options)
    record = read_image(path)
    assert record is not None and record.png_before
    restored = tmp_path / ("restored-" + name)
    write_image(restored, record)
    again = read_image(restored)
    assert (again.png_before, again.png_after) == (record.png_before, record.png_after)
    with Image.open(path) as a, Image.open(restored) as b:
        assert a.info == b.info and np.array_equal(np.asarray(a), np.asarray(b))


def test_byte_exact_records_only_reproducible_files(tmp_path):
    """--byte-exact: Pillow-written PNGs qualify (and carry their hash); others do not."""
    record = read_image(RGB_EXAMPLE, byte_exact=True)
    if record is not None:
        restored = tmp_path / "again.png"
        write_image(restored, record)
        assert restored.read_bytes() == RGB_EXAMPLE.read_bytes()
    with Image.open(RGB_EXAMPLE) as opened:
        heavy = _save(tmp_path, "level1.png", opened.copy(), compress_level=1)
    assert read_image(heavy) is not None
    assert read_image(heavy, byte_exact=True) is None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(width: int, height: int, depth: int, colour_type: int, interlace: int, rows: bytes) -> bytes:
    """A PNG written by hand: one IDAT of ``rows`` (each row led by its filter byte)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("mode", ["L", "RGB", "LA", "RGBA"])
def test_pngs_pillow_writes_alike_skip_the_rewrite_check(tmp_path, monkeypatch, mode):
    """8-bit, non-interlaced grey/RGB(A) PNGs are not decoded a second time: their restored file
    differs only in its image data; it still gives back the pixels, mode and chunks."""
    rng = np.random.default_rng(7)
    channels = {"L": 1, "RGB": 3, "LA": 2, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (13, 17, channels), dtype=np.uint8)
    path = _save(tmp_path, "plain.png", Image.fromarray(pixels.squeeze(2) if channels == 1 else pixels, mode),
                 dpi=(72, 72))

    def second_decode(*_):
        raise AssertionError("the rewrite was decoded again")

    monkeypatch.setattr("osoa_zip.imaging.io._rewrite_decodes_alike", second_decode)
    record = read_image(path)
    assert record is not None and np.array_equal(record.pixels, pixels.reshape(13, 17, channels))
    restored = tmp_path / "restored.png"
    write_image(restored, record)
    with Image.open(path) as a, Image.open(restored) as b:
        assert (a.mode, a.info) == (b.mode, b.info) and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name, depth, colour_type, interlace, rows", [
    ("interlaced", 8, 0, 1, b"".join(b"\x00" + bytes(range(i, i + 4)) for i in range(4))),
    ("two-bit grey", 2, 0, 0, b"\x00\x1b" * 4),  # samples 0, 1, 2, 3 in each row of four
    ("sixteen-bit grey", 16, 0, 0, b"".join(b"\x00" + bytes(8) for _ in range(4))),
])
def test_other_pngs_still_prove_their_rewrite(tmp_path, monkeypatch, name, depth, colour_type, interlace, rows):
    """A PNG whose header Pillow would not write as it is (interlaced, fewer or more bits) is decoded
    again before it may take the model path, and never loses a pixel either way."""
    path = tmp_path / "odd.png"
    path.write_bytes(_raw_png(4, 4, depth, colour_type, interlace, rows))
    calls = []
    from osoa_zip.imaging import io as imaging_io
    real = imaging_io._rewrite_decodes_alike
    monkeypatch.setattr(imaging_io, "_rewrite_decodes_alike", lambda *a: calls.append(1) or real(*a))
    record = read_image(path)
    if record is None:
        return  # the general path: stored byte for byte
    assert calls, f"the {name} PNG took the model path unchecked"
    restored = tmp_path / "restored.png"
    write_image(restored, record)
    with Image.open(path) as a, Image.open(restored) as b:
        assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
