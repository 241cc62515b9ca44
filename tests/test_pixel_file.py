"""Large images live in temporary files that Pillow decodes into and encodes from
(osoa_zip/imaging/pixel_file.py): the same pixels, the same bytes, the same archives.

Most checks lower SPILL_BYTES so that small images take the large-image path;
the memory it saves is measured in tests/test_memory.py.
"""
from __future__ import annotations

import io
import lzma
import os
import zlib

import numpy as np
import pytest
from conftest import EXAMPLES, REPO, assert_same_tree
from PIL import Image, PngImagePlugin

import osoa_zip.imaging.io as imaging_io
from osoa_zip.adapt.engine import AdaptationConfig
from osoa_zip.archive import compress, decompress
from osoa_zip.imaging.io import read_image, write_image
from osoa_zip.imaging.pixel_file import PixelFile, PixelView

PHOTOS = sorted((REPO / "data" / "eval" / "photos768").glob("*.png"))[:3] + sorted(EXAMPLES.glob("*.png"))[:3]
MODES = {"L": 1, "RGB": 3, "LA": 2, "RGBA": 4, "P": 1}
SPILL_BYTES = imaging_io.SPILL_BYTES
SETTINGS = dict(model="idf-tiny-test", adaptation=AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0))


@pytest.fixture
def every_image_is_large(monkeypatch):
    monkeypatch.setattr(imaging_io, "SPILL_BYTES", 0)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def _picture(mode: str, height: int, width: int, seed: int, palette_size: int = 256) -> Image.Image:
    """Random pixels, smooth in the top half (so that every PNG filter type gets chosen)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, MODES[mode]), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    smooth = ((x * 3 + y * 5) % 256).astype(np.uint8)[:, :, None]
    pixels[:height // 2] = smooth[:height // 2] ^ (pixels[:height // 2] & 1)
    if mode == "P":
        pixels = (pixels.astype(np.uint16) % palette_size).astype(np.uint8)
    picture = Image.fromarray(pixels[:, :, 0] if MODES[mode] == 1 else pixels, mode)
    if mode == "P":
        picture.putpalette(bytes(np.random.default_rng(seed + 1).integers(0, 256, 3 * palette_size, np.uint8)))
    return picture


def _with_chunk_after_image_data(data: bytes, kind: bytes, body: bytes) -> bytes:
    """A PNG with one more chunk between its last IDAT and IEND (Pillow only writes them before)."""
    chunk = len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    return data[:-12] + chunk + data[-12:]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("height, width", [(1, 1), (1, 3001), (2999, 1), (7, 3), (600, 1100)])
def test_large_images_decode_and_write_as_pillow_does(tmp_path, every_image_is_large, mode, height, width):
    """Pillow's decode of the file is the record's pixels (tiles and channel views too), and
    writing the record back gives Pillow's own bytes: every mode, one row or one column,
    several IDAT chunks (600 x 1100), palettes of 1-8 bits with tRNS, metadata chunks before
    and after the image data (kept verbatim), and --byte-exact."""
    palettes = (2, 16, 256) if mode == "P" else (256,)
    for palette_size in palettes:
        picture = _picture(mode, height, width, seed=height + width, palette_size=palette_size)
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "kept verbatim")
        options = {"transparency": 1} if mode == "P" else {}
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", pnginfo=info, **options)
        source = tmp_path / f"{mode}{palette_size}.png"
        source.write_bytes(_with_chunk_after_image_data(buffer.getvalue(), b"tEXt", b"After\x00the pixels"))
        record = read_image(source, byte_exact=True, pixels_in_file=True)
        assert record is not None and isinstance(record.pixels, PixelView), (mode, palette_size)
        with Image.open(source) as decoded:
            expected = np.asarray(decoded).reshape(height, width, MODES[mode])
        assert record.pixels.shape == expected.shape
        assert np.array_equal(np.concatenate(list(record.pixels.bands())), expected)
        assert np.array_equal(record.pixels[1:5, 2:9], expected[1:5, 2:9])
        assert np.array_equal(record.pixels.channels(slice(-1, None))[:, :], expected[:, :, -1:])
        restored = tmp_path / f"{mode}{palette_size}-restored.png"
        write_image(restored, record)  # the compressor's record, written as the decoder writes its own
        record.pixel_file.close()
        assert restored.read_bytes() == source.read_bytes(), (mode, palette_size)


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_real_photos_read_and_write_as_pillow_does(tmp_path, every_image_is_large, photo):
    with Image.open(photo) as image:
        expected = np.asarray(image)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    source = tmp_path / "photo.png"
    source.write_bytes(buffer.getvalue())
    record = read_image(source, byte_exact=True, pixels_in_file=True)
    assert isinstance(record.pixels, PixelView)
    assert np.array_equal(np.concatenate(list(record.pixels.bands())).reshape(expected.shape), expected)
    write_image(tmp_path / "restored.png", record)
    record.pixel_file.close()
    assert (tmp_path / "restored.png").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("image_format", ["BMP", "PPM", "TIFF"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_other_lossless_formats_take_the_large_image_path_too(tmp_path, every_image_is_large, image_format, mode):
    """Their model path needs a byte-exact rewrite: Pillow's, from the mapped file."""
    source = tmp_path / f"picture.{image_format.lower()}"
    _picture(mode, 37, 53, seed=9).save(source, format=image_format)
    record = read_image(source, pixels_in_file=True)
    assert record is not None and isinstance(record.pixels, PixelView)
    write_image(tmp_path / "restored", record)
    record.pixel_file.close()
    assert (tmp_path / "restored").read_bytes() == source.read_bytes()


def test_archives_do_not_depend_on_which_path_an_image_takes(tmp_path, source_tree, monkeypatch):
    """The fixture tree (every mode, palettes, alpha, metadata, odd sizes, general-path files)
    gives the same archive whether its images are held in memory or in pixel files, and the
    same restored files, with one thread or two, and under --byte-exact."""
    for byte_exact in (False, True):
        archives = {}
        for threshold in (SPILL_BYTES, 0):
            monkeypatch.setattr(imaging_io, "SPILL_BYTES", threshold)
            buffer = io.BytesIO()
            compress([source_tree], buffer, byte_exact=byte_exact, **SETTINGS)
            archives[threshold] = buffer.getvalue()
        assert archives[0] == archives[SPILL_BYTES], byte_exact
        restored = {}
        for threshold, threads in ((SPILL_BYTES, 1), (0, 1), (0, 2)):
            monkeypatch.setattr(imaging_io, "SPILL_BYTES", threshold)
            destination = tmp_path / f"out-{byte_exact}-{threshold}-{threads}"
            decompress(io.BytesIO(archives[0]), destination, threads=threads)
            assert_same_tree(source_tree, destination)
            restored[(threshold, threads)] = {path.relative_to(destination).as_posix(): path.read_bytes()
                                             for path in sorted(destination.rglob("*")) if path.is_file()}
        assert restored[(0, 1)] == restored[(SPILL_BYTES, 1)] == restored[(0, 2)]


def test_damaged_large_pngs_take_the_general_path(tmp_path, every_image_is_large):
    """Truncated image data, a bad checksum, corrupt deflate data: never an error, no pixel
    file left open."""
    buffer = io.BytesIO()
    _picture("RGB", 300, 200, seed=3).save(buffer, format="PNG")
    whole = buffer.getvalue()
    idat = whole.index(b"IDAT")
    damaged = {
        "truncated.png": whole[:len(whole) // 2],
        "bad-crc.png": whole[:-20] + bytes([whole[-20] ^ 1]) + whole[-19:],
        "bad-deflate.png": whole[:idat + 40] + bytes(64) + whole[idat + 104:],
        "no-end.png": whole[:-12],
    }
    before = _open_descriptors()
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        assert read_image(tmp_path / name) is None, name
    assert _open_descriptors() == before


def test_pixel_file_views_read_what_pillow_wrote(tmp_path):
    """Channels sit where Pillow keeps them: RGB and LA in 4-byte pixels."""
    for mode in MODES:
        picture = _picture(mode, 9, 11, seed=5)
        with PixelFile(mode, 11, 9) as pixel_file:
            mapped = pixel_file.picture()
            mapped.paste(picture, (0, 0))
            pixel_file.forget()  # the pasted pages stay in the file
            view = pixel_file.view()
            expected = np.asarray(picture).reshape(9, 11, MODES[mode])
            assert np.array_equal(view[:, :], expected)
            assert np.array_equal(view[3:8, 4:5], expected[3:8, 4:5])
            assert np.array_equal(view.channels(slice(0, 1))[2:3, :], expected[2:3, :, :1])
            mapped.close()


@pytest.mark.parametrize("tag", [b"ALPH", b"PIDX"])
def test_damaged_side_planes_are_found_whichever_path_they_take(tmp_path, source_tree, monkeypatch, tag):
    """Alpha planes and palette indices of large images are decompressed into their files a
    band at a time: short, long, truncated or corrupt planes are refused (or lost under
    --salvage) exactly as when they are decompressed whole."""
    from crafting import Crafted

    from osoa_zip.container.format import ArchiveError

    buffer = io.BytesIO()
    compress([source_tree], buffer, **SETTINGS)
    crafted = Crafted.parse(buffer.getvalue())
    index = crafted.index(tag)
    planes = lzma.decompress(crafted.chunks[index][1])
    variants = {"short": lzma.compress(planes[:-1]), "long": lzma.compress(planes + b"\0"),
                "truncated": crafted.chunks[index][1][:-9], "garbage": bytes(64)}
    for damage, payload in variants.items():
        damaged = crafted.copy()
        damaged.chunks[index] = (tag, payload)
        archive = tmp_path / f"{damage}.osoa"
        archive.write_bytes(damaged.build())
        outcomes = []
        for threshold in (SPILL_BYTES, 0):
            monkeypatch.setattr(imaging_io, "SPILL_BYTES", threshold)
            with pytest.raises(ArchiveError):
                decompress(io.BytesIO(archive.read_bytes()), tmp_path / f"{damage}-{threshold}")
            with open(archive, "rb") as handle:
                summary = decompress(handle, tmp_path / f"{damage}-{threshold}-salvaged", salvage=True)
            outcomes.append(sorted(summary.lost))
        assert outcomes[0] == outcomes[1] and outcomes[0], damage


def _filtered_rows(pixels: np.ndarray) -> bytes:
    """PNG scanlines of H x W x C pixels, the filter type cycling through all five row by row."""
    height, width, channels = pixels.shape
    current = pixels.reshape(height, width * channels).astype(np.int16)
    above = np.vstack([np.zeros((1, width * channels), np.int16), current[:-1]])
    left = np.hstack([np.zeros((height, channels), np.int16), current[:, :-channels]])
    upper_left = np.hstack([np.zeros((height, channels), np.int16), above[:, :-channels]])
    guess = left + above - upper_left
    distances = [np.abs(guess - neighbour) for neighbour in (left, above, upper_left)]
    paeth = np.where((distances[0] <= distances[1]) & (distances[0] <= distances[2]), left,
                     np.where(distances[1] <= distances[2], above, upper_left))
    predictions = [0, left, above, (left + above) // 2, paeth]
    rows = []
    for y in range(height):
        kind = y % 5
        rows.append(bytes([kind]) + ((current[y] - (predictions[kind][y] if kind else 0)) % 256).astype(np.uint8)
                    .tobytes())
    return b"".join(rows)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def handmade_png(pixels: np.ndarray, idat_bytes: int = 1000, level: int = 9) -> bytes:
    """A PNG as other encoders write them: every filter type, small IDAT chunks."""
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    stream = zlib.compress(_filtered_rows(pixels), level)
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, colour_type, 0, 0, 0])
    idats = b"".join(_chunk(b"IDAT", stream[i:i + idat_bytes]) for i in range(0, len(stream), idat_bytes))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + idats + _chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_every_filter_type_and_small_idat_chunks_decode_as_pillow_decodes_them(tmp_path, every_image_is_large, mode):
    """Pillow decodes into the pixel file whatever the writer chose: rows of all five filter
    types, the image data cut into chunks of 1000 bytes (a read, and a forget, each)."""
    pixels = np.asarray(_picture(mode, 97, 61, seed=11)).reshape(97, 61, MODES[mode])
    source = tmp_path / "handmade.png"
    source.write_bytes(handmade_png(pixels))
    with Image.open(source) as decoded:
        assert np.array_equal(np.asarray(decoded).reshape(pixels.shape), pixels)  # the helper is right
    record = read_image(source, pixels_in_file=True)
    assert isinstance(record.pixels, PixelView)
    assert np.array_equal(record.pixels.array(), pixels)
    write_image(tmp_path / "restored.png", record)  # Pillow's encoding now: the same pixels
    record.pixel_file.close()
    with Image.open(tmp_path / "restored.png") as restored:
        assert np.array_equal(np.asarray(restored).reshape(pixels.shape), pixels)


def test_a_full_disk_is_an_error_not_a_crash(tmp_path, every_image_is_large, monkeypatch):
    """The pixel file's disk is claimed when it is made (a page of a sparse file written
    through the mapping on a full disk would kill the process with SIGBUS, as it did on a
    1 MiB tmpfs): reading takes the general path, decompressing stops with an OSError
    that says what it needed, and writes nothing."""
    import errno

    source = tmp_path / "src"
    source.mkdir()
    with Image.open(EXAMPLES / "0002.png") as photo:  # a photo: the model path pays
        photo.convert("RGB").crop((0, 0, 30, 40)).save(source / "a.png", compress_level=0)
    buffer = io.BytesIO()
    compress([source], buffer, **SETTINGS)

    def full(descriptor, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    assert read_image(source / "a.png", pixels_in_file=True) is None
    with pytest.raises(OSError, match="temporary file of 4800 bytes for a 30x40 RGB image"):
        decompress(io.BytesIO(buffer.getvalue()), tmp_path / "out")
    assert not (tmp_path / "out").exists()
