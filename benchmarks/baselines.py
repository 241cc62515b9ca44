"""Sizes that classical lossless codecs reach on the same pixels, for comparison with osoa-zip.

Each `*_bytes` function takes a uint8 array (H x W or H x W x C) or an image path and returns the
encoded size in bytes, or None where the codec is not available here. Paths are read into arrays
first, so a JPEG file is re-encoded from its pixels rather than transcoded from its bitstream.
"""

import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image, features


def _pixels(path_or_array):
    """uint8 H x W or H x W x C pixels (a single channel loses its axis, as Pillow wants)."""
    if isinstance(path_or_array, np.ndarray):
        pixels = path_or_array
    else:
        with Image.open(Path(path_or_array)) as image:
            pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels


def _image(path_or_array):
    return Image.fromarray(_pixels(path_or_array))


def _saved_size(image, codec, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=codec, **options)
    return buffer.tell()


def png_bytes(path_or_array):
    """PNG at its strongest zlib setting: the format everyone has, so the floor to beat."""
    return _saved_size(_image(path_or_array), "PNG", optimize=True, compress_level=9)


def webp_lossless_bytes(path_or_array):
    """WebP lossless at method 4 (libwebp's default; method 6 takes minutes per set on 2 cores).

    `exact` keeps the colour of fully transparent pixels, so the encoding is truly lossless."""
    if not features.check("webp"):
        return None
    return _saved_size(_image(path_or_array), "WEBP", lossless=True, method=4, exact=True)


def jxl_lossless_bytes(path_or_array):
    """JPEG XL lossless at effort 7 (libjxl's default), the strongest classical baseline.

    Uses whichever of `pillow_jxl` or `imagecodecs` is installed; neither is a dependency."""
    if importlib.util.find_spec("pillow_jxl"):
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
        return _saved_size(_image(path_or_array), "JXL", lossless=True, effort=7)
    if importlib.util.find_spec("imagecodecs"):
        import imagecodecs
        if imagecodecs.JPEGXL.available:
            encoded = imagecodecs.jpegxl_encode(_pixels(path_or_array), lossless=True, effort=7)
            return len(encoded)
    return None


def bpsp(total_bytes, total_subpixels):
    """Bits per sub-pixel (one sample of one channel): the unit of lossless image benchmarks."""
    return 8 * total_bytes / total_subpixels
