"""The classical lossless baselines, each run as its own process.

    python -m osoa_zip.bench.classical encode CODEC SOURCE OUTPUT [--effort N]
    python -m osoa_zip.bench.classical decode CODEC INPUT OUTPUT

Per-image codecs (PNG, WebP lossless, JPEG XL lossless) write one file per
image; decoding writes each image's pixels as .npy, which the benchmark
compares with the originals (a codec that is not lossless fails the run).
tar + xz -9e archives the original files themselves (a shell pipeline).

The optional codecs (WebP if Pillow lacks it, JPEG XL without pillow_jxl or
imagecodecs, tar/xz without the tools) are reported as skipped, never fatal.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, features

WEBP_METHOD = 6       # libwebp's strongest; --fast-baselines uses FAST_WEBP_METHOD
FAST_WEBP_METHOD = 4  # libwebp's default
JXL_EFFORT = 7        # libjxl's default


def jxl_backend() -> str | None:
    """Which installed package can write JPEG XL: "pillow_jxl", "imagecodecs" or None."""
    if importlib.util.find_spec("pillow_jxl"):
        return "pillow_jxl"
    if importlib.util.find_spec("imagecodecs"):
        import imagecodecs
        if imagecodecs.JPEGXL.available:
            return "imagecodecs"
    return None


def _webp_missing() -> str | None:
    return None if features.check("webp") else "Pillow was built without WebP"


def _jxl_missing() -> str | None:
    return None if jxl_backend() else "neither pillow_jxl nor imagecodecs is installed (pip install 'osoa-zip[bench]')"


def _tar_xz_missing() -> str | None:
    missing = [tool for tool in ("sh", "tar", "xz") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found" if missing else None


@dataclass(frozen=True)
class Codec:
    key: str                              # the name on the command line and in the CSV
    label: str                            # the name in tables
    missing: Callable[[], str | None]     # why it cannot run here, or None


CODECS = {
    "png": Codec("png", "PNG (Pillow, optimize, level 9)", lambda: None),
    "webp": Codec("webp", "WebP lossless (method {method})", _webp_missing),
    "jxl": Codec("jxl", f"JPEG XL lossless (effort {JXL_EFFORT})", _jxl_missing),
    "tar-xz": Codec("tar-xz", "tar + xz -9e (original files)", _tar_xz_missing),
}
EXTENSIONS = {"png": ".png", "webp": ".webp", "jxl": ".jxl"}


def child_command(direction: str, codec: str, source: Path, output: Path, webp_method: int) -> list[str]:
    """The argv that encodes or decodes a folder with one codec in a separate process."""
    if codec == "tar-xz":
        archive = shlex.quote(str(output if direction == "encode" else source))
        if direction == "encode":
            script = f"tar -cf - -C {shlex.quote(str(source))} . | xz -9e -T1 -c > {archive}"
        else:
            script = f"xz -dc {archive} | tar -xf - -C {shlex.quote(str(output))}"
        return ["sh", "-c", f"set -e; {script}"]
    return [sys.executable, "-m", "osoa_zip.bench.classical", direction, codec, str(source), str(output),
            "--webp-method", str(webp_method)]


# -- the child -----------------------------------------------------------------

def _pixels_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def _encode(codec: str, image: Image.Image, webp_method: int) -> bytes:
    if codec == "png":
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True, compress_level=9)
        return buffer.getvalue()
    if codec == "webp":
        buffer = io.BytesIO()
        # exact: keep the colour under fully transparent pixels, or it is not lossless.
        image.save(buffer, format="WEBP", lossless=True, method=webp_method, exact=True)
        return buffer.getvalue()
    if codec == "jxl":
        if jxl_backend() == "pillow_jxl":
            import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
            buffer = io.BytesIO()
            image.save(buffer, format="JXL", lossless=True, effort=JXL_EFFORT)
            return buffer.getvalue()
        import imagecodecs
        return bytes(imagecodecs.jpegxl_encode(_pixels_of(image), lossless=True, effort=JXL_EFFORT))
    raise ValueError(f"unknown codec {codec!r}")


def _decode(codec: str, data: bytes) -> np.ndarray:
    if codec == "jxl":
        if jxl_backend() == "pillow_jxl":
            import pillow_jxl  # noqa: F401
        else:
            import imagecodecs
            return np.asarray(imagecodecs.jpegxl_decode(data))
    with Image.open(io.BytesIO(data)) as image:
        return _pixels_of(image)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def encode_folder(codec: str, source: Path, output: Path, webp_method: int) -> None:
    for path in _files(source):
        relative = path.relative_to(source)
        with Image.open(path) as image:
            image.load()
            data = _encode(codec, image, webp_method)
        target = (output / relative).with_name(relative.name + EXTENSIONS[codec])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def decode_folder(codec: str, source: Path, output: Path) -> None:
    for path in _files(source):
        relative = path.relative_to(source)
        target = (output / relative).with_name(relative.name[:-len(EXTENSIONS[codec])] + ".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, _decode(codec, path.read_bytes()))


def decoded_differences(originals: Path, decoded: Path, codec: str) -> list[str]:
    """Images whose decoded pixels differ from the original's (empty: lossless)."""
    problems = []
    for path in _files(originals):
        relative = path.relative_to(originals)
        if codec == "tar-xz":
            restored = decoded / relative
            if not restored.is_file() or restored.read_bytes() != path.read_bytes():
                problems.append(str(relative))
            continue
        restored = decoded / relative.with_name(relative.name + ".npy")
        with Image.open(path) as image:
            original = _pixels_of(image)
        if not restored.is_file() or not _same_pixels(original, np.load(restored)):
            problems.append(str(relative))
    return problems


def _same_pixels(original: np.ndarray, decoded: np.ndarray) -> bool:
    """Equal pixels; a codec without grey formats (WebP) may give L back as RGB, LA as RGBA."""
    if original.ndim == 2:
        original = original[:, :, None]
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    if original.shape[2] in (1, 2) and decoded.shape[2] == original.shape[2] + 2:
        grey = original[:, :, :1]
        original = np.concatenate([grey, grey, grey, original[:, :, 1:]], axis=2)
    return original.shape == decoded.shape and bool(np.array_equal(original, decoded))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("direction", choices=("encode", "decode"))
    parser.add_argument("codec", choices=sorted(EXTENSIONS))
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--webp-method", type=int, default=WEBP_METHOD)
    args = parser.parse_args(argv)
    if args.direction == "encode":
        encode_folder(args.codec, args.source, args.output, args.webp_method)
    else:
        decode_folder(args.codec, args.source, args.output)


if __name__ == "__main__":
    main()
