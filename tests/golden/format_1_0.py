"""The golden archives of format 1.0 and the folder they were made from.

FROZEN: these archives must decode to this folder in every later release
(tests/test_golden.py).  Never change build_source or the archives; a new
format version gets a new module and new archives beside these (format_1_1.py).
A new *model* gets a new archive in the newest format's module, so that its
coding is pinned from its first release on.  Since release 1.3 the writer
writes format 1.1, so this module writes nothing any more; format_1_1.py uses
its write_missing().
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples" / "images"
ARCHIVES = {  # file name -> (model, adaptation settings)
    "format-1.0-idf-tiny-test.osoa": ("idf-tiny-test", {"tile_size": 16, "batch_size": 4, "learning_rate": 0.3,
                                                "segment_batches": 5}),
    "format-1.0-idf-sublattice-v2.osoa": ("idf-sublattice-v2", {"tile_size": 16, "batch_size": 2}),
    # v4's edge bins (written by osoa-zip 1.2)
    "format-1.0-idf-sublattice-v4.osoa": ("idf-sublattice-v4", {"tile_size": 16, "batch_size": 2}),
}
MTIME_NS = 1_700_000_000_000_000_000


def build_source(root: Path) -> Path:
    """A small folder with every kind of entry the format holds."""
    rgb = Image.open(EXAMPLES / "0002.png").crop((3, 5, 37, 26))     # 34 x 21: odd height
    gray = Image.open(EXAMPLES / "0006.png").crop((1, 2, 24, 19))    # 23 x 17
    images = root / "images"
    images.mkdir(parents=True)
    rgb.save(images / "rgb.png", compress_level=0)
    gray.save(images / "gray.png", compress_level=0)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(34 * 21).reshape(21, 34) % 256).astype(np.uint8)))
    rgba.save(images / "rgba.png", compress_level=0)
    rgb.convert("LA").save(images / "la.png", compress_level=0)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(images / "palette.png", transparency=2)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "kept verbatim")
    rgb.save(images / "text.png", pnginfo=info, compress_level=0)
    rgb.crop((0, 0, 1, 1)).save(images / "one_pixel.png", compress_level=0)
    rgb.save(images / "lossy.jpg", quality=85)
    (root / "notes.txt").write_text("osoa-zip golden archive, format 1.0\n" * 8)
    (root / "empty.bin").write_bytes(b"")
    (root / "empty_dir").mkdir()
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "bytes.bin").write_bytes(bytes(range(256)))
    os.symlink("../notes.txt", root / "nested" / "link_to_notes")
    os.link(root / "notes.txt", root / "nested" / "hardlink_to_notes")
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    return root


def write_missing(archives: dict, build=None) -> None:
    """Write each archive of ``archives`` that does not exist yet, from ``build``'s folder
    (default: build_source), with this release's writer; never rewrite one.

    ``archives``: name -> (model, settings) or (model, settings, compress options).  Every
    image the model can take goes on the model path (per-image decisions off, 1.8), as when
    the earlier archives were written.
    """
    import tempfile

    from osoa_zip import compress
    from osoa_zip.adapt.config import AdaptationConfig
    with tempfile.TemporaryDirectory() as scratch:
        source = (build or build_source)(Path(scratch) / "source")
        for name, (model, settings, *options) in archives.items():
            if (HERE / name).exists():
                continue
            output = io.BytesIO()
            compress([source], output, model=model, adaptation=AdaptationConfig(**settings), triage=False,
                     **(options[0] if options else {}))
            (HERE / name).write_bytes(output.getvalue())
            print(name, len(output.getvalue()), "bytes")


if __name__ == "__main__":
    raise SystemExit("format 1.0 is no longer written (osoa-zip 1.3 writes 1.1): run format_1_1.py")
