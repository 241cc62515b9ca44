"""Memory does not grow with the image (docs/SECURITY.md, "How memory grows").

Reading an image for the model path used to hold ~5 copies of its pixels and
writing one back ~3: a 100 MP photo peaked at 1.9 GB; then one Pillow image
(4 bytes per RGB pixel), 661 MiB.  Now a large image is decoded into, coded
from and written from a temporary file mapped for Pillow (imaging/pixel_file.py),
and memory stays flat.  These tests measure it in subprocesses (a process's
peak RSS is its own), and check the pieces that make it possible: tiles cut
from unpadded images, decoded tiles pasted straight into the picture that is
written, and pictures built band by band that Pillow writes exactly as before.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from osoa_zip.imaging.io import ImageRecord, picture_from_bands, record_picture, save_picture
from osoa_zip.imaging.tiles import gather, pad_even, plan_batches
from osoa_zip.unpack import _Canvas, _paste_batch

MODES = {"L": 1, "RGB": 3, "LA": 2, "RGBA": 4, "P": 1}
MiB = 1 << 20


def _pixels(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(["L", "RGB", "LA", "RGBA"]),
       st.integers(1, 10).map(lambda k: 2 * k), st.integers(0, 2 ** 32 - 1))
def test_decoded_tiles_go_straight_into_the_picture(height, width, mode, tile, seed):
    """The decoder's canvas takes tiles of the padded image (colour only; alpha from its plane)
    and is the original image, padding dropped."""
    pixels = _pixels(height, width, MODES[mode], seed)
    colour = pixels[:, :, :{"L": 1, "RGB": 3, "LA": 1, "RGBA": 3}[mode]]
    alpha = pixels[:, :, -1:] if mode in ("LA", "RGBA") else None
    canvases = [_Canvas(height, width, mode, alpha)]
    for batch in plan_batches([colour.shape], tile, 3):
        _paste_batch(batch, gather(batch, [pad_even(colour)]), canvases)
    picture = canvases[0].picture()
    assert picture.mode == mode and picture.size == (width, height)
    assert np.array_equal(np.asarray(picture).reshape(pixels.shape), pixels)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("height, width", [(1, 1), (7, 3), (600, 1100)])
def test_pictures_built_by_bands_are_written_as_fromarray_wrote_them(mode, height, width):
    """--byte-exact archives hold the SHA-256 of Pillow's output for Image.fromarray (what
    earlier versions wrote): the band-built picture must give the same bytes, in every format."""
    pixels = _pixels(height, width, MODES[mode], seed=height)
    formats = ["PNG", "BMP", "PPM", "TIFF"] if mode in ("L", "RGB") else ["PNG"]
    palettes = [bytes(range(3 * n)) for n in (2, 16, 85)] if mode == "P" else [b""]
    for image_format in formats:
        for palette in palettes:
            plane = pixels[:, :, 0] if mode in ("L", "P") else pixels
            expected = Image.fromarray(plane, mode)
            if mode == "P":
                expected.putpalette(palette)
            buffer = io.BytesIO()
            expected.save(buffer, format=image_format)
            record = ImageRecord(pixels=pixels, mode=mode, format=image_format, palette=palette)
            written = io.BytesIO()
            save_picture(record_picture(record), record, written)  # what decompress writes
            assert written.getvalue() == buffer.getvalue(), (mode, image_format, len(palette))
            bands = (pixels[y:y + 5] for y in range(0, height, 5))
            rebuilt = picture_from_bands(bands, mode, width, height, palette)
            assert np.array_equal(np.asarray(rebuilt).reshape(pixels.shape), pixels)


PEAK_SCRIPT = r"""
import sys
from pathlib import Path
from osoa_zip.imaging.io import ImageRecord, read_image, record_picture, write_image

def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak RSS starts again from the current RSS

reset_peak()
base = status("VmRSS:")  # before the image exists: both peaks count every copy of it
record = read_image(Path(sys.argv[1]), pixels_in_file=True)  # as the compressor reads it
read_peak = status("VmHWM:") - base
# What the decoder holds when a group is decoded: the picture its tiles went into, nothing else.
record = ImageRecord(pixels=None, mode=record.mode, format=record.format, picture=record_picture(record),
                     pixel_file=record.pixel_file)
reset_peak()
write_image(Path(sys.argv[2]), record)
print(read_peak, status("VmHWM:") - base)
"""


def _clear_refs_works() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _clear_refs_works(), reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
def test_reading_and_writing_a_large_image_does_not_hold_it(tmp_path):
    """A 6 MP RGB PNG (18 MB of pixels, 24 MB in Pillow's layout): read_image peaked at ~5.7
    bytes per sub-pixel (file, Pillow's decode, numpy copies, the re-encoded PNG and its
    decode, together), and writing it back at ~2.4 (pixels, Pillow image, the PNG in a
    BytesIO and its copy); then both at Pillow's own image, 4/3 bytes per sub-pixel.  Now
    the pixels stay in a mapped temporary file: ~5 MiB either way (measured at 16 and 36 MP
    alike)."""
    height, width = 2000, 3000
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x // 7) % 256, (y // 5) % 256, (x + y) % 256], axis=2).astype(np.uint8)
    pixels ^= _pixels(height, width, 3) & 3  # a little noise: not too compressible
    source = tmp_path / "big.png"
    Image.fromarray(pixels).save(source, compress_level=1)
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(source), str(tmp_path / "restored.png")],
                            capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    read_peak, write_peak = map(int, result.stdout.split())
    subpixels = pixels.size
    assert subpixels > 16 * MiB  # more than the whole budget
    assert read_peak < 16 * MiB, f"read peaked {read_peak / MiB:.0f} MiB"
    assert write_peak < 16 * MiB, f"write peaked {write_peak / MiB:.0f} MiB"
    with Image.open(tmp_path / "restored.png") as restored:
        assert np.array_equal(np.asarray(restored), pixels)


# The command line ends with os._exit once torch is in (launcher.py): no atexit handler runs
# then, so the peak is reported on the way out either way.
CLI_PEAK = r"""
import atexit, os, runpy, sys

def peak():
    with open("/proc/self/status") as handle:
        sys.stderr.write("\npeak-rss " + next(line.split()[1] for line in handle if line.startswith("VmHWM:")) + "\n")
    sys.stderr.flush()

quick_exit = os._exit

def reporting_exit(status):
    peak()
    quick_exit(status)

os._exit = reporting_exit
atexit.register(peak)
sys.argv = ["osoa_zip", *sys.argv[1:]]
runpy.run_module("osoa_zip", run_name="__main__")
"""


def _cli_peak(*args) -> int:
    """Peak RSS in bytes of one CLI run, as the process itself saw it (VmHWM: not inherited
    from this process across fork and exec, unlike wait4's ru_maxrss)."""
    result = subprocess.run([sys.executable, "-c", CLI_PEAK, *map(str, args)], capture_output=True, text=True,
                            env={**subprocess_env(), "OMP_NUM_THREADS": "1"}, cwd=REPO, timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stderr.strip().splitlines()[-1].split()[-1]) * 1024


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_cli_memory_does_not_grow_with_the_image(tmp_path):
    """Compress and decompress (--no-adapt, stored source PNG so the model path is taken) a
    0.25 MP and a 9 MP photo: the peak may grow by 0.5 bytes per added sub-pixel, run-to-run
    noise of the fixed part (it grew by ~4.6 compressing and ~2.4 decompressing from 4 to
    36 MP at first, then by ~1.0 and ~1.3 with one Pillow image held; now not at all,
    docs/SECURITY.md).  4-11 minutes."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from scale import realistic_photo
    peaks = {}
    for megapixels in (0.25, 9):
        folder = tmp_path / f"mp{megapixels}"
        (folder / "src").mkdir(parents=True)
        image = realistic_photo(megapixels)
        image.save(folder / "src" / "photo.png", compress_level=0)
        archive = folder / "a.osoa"
        compress = _cli_peak("compress", "-q", "--no-adapt", "--every-image", folder / "src", archive)
        decompress = _cli_peak("decompress", "-q", archive, folder / "out")
        with Image.open(folder / "out" / "photo.png") as restored:
            assert np.array_equal(np.asarray(restored), np.asarray(image))
        peaks[megapixels] = (compress, decompress, image.width * image.height * 3)
    (small_c, small_d, small_n), (large_c, large_d, large_n) = peaks[0.25], peaks[9]
    added = large_n - small_n
    assert large_c - small_c < 0.5 * added + 32 * MiB, f"compress: +{(large_c - small_c) / MiB:.0f} MiB"
    assert large_d - small_d < 0.5 * added + 32 * MiB, f"decompress: +{(large_d - small_d) / MiB:.0f} MiB"
