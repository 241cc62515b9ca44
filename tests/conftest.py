"""Shared fixtures: a folder of real images and awkward files, and a tree comparison.

The image folder is made from examples/images (copies, plus crops whose odd
sides exercise padding and the small-tile batches) and is mixed with files
that must take the general path (JPEG, 16-bit, corrupt PNG), images with
alpha, palettes and text chunks, and plain non-image files.  Tests treat the
session-scoped folder as read-only; copy it (``shutil.copytree``) to change it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

import osoa_zip  # noqa: F401  (first: sets OpenMP's passive wait policy before torch loads)
from osoa_zip.verify import tree_differences

# The checkout and its bundled photos: every test module takes them from here.
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "images"
MODEL = "idf-tiny-test"
# Small tiles and batches keep the model path fast while still giving several batches.
TILE_SIZE = 16
BATCH_SIZE = 4

# On a busy machine (e.g. two cores shared with training jobs) more than one torch
# thread per process makes everything many times slower (oversubscription).
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# (width, height) of the crops; 1-pixel sides and odd sides need padding.
CROP_SIZES = [(1, 1), (1, 7), (13, 5), (31, 17)]

# Files in the fixture tree that must take the general path (read_image is None).
GENERAL_PATH_IMAGES = [
    "general/photo.jpg",
    "general/deep16.png",
    "general/truncated.png",
]
NON_IMAGE_FILES = [
    "files/empty.bin",
    "files/random.bin",
    "files/notes.txt",
    "files/with space é.txt",
    "sub/deeper/x.bin",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread in every test module: on a machine shared with other jobs, more
    than one intra-op thread per process makes everything many times slower.  Tests
    about thread counts set their own and put this one back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def model_round_trip(network, pixels: torch.Tensor) -> bytes:
    """Code a batch with a model alone (no engine, no container), decode it, check it came
    back exactly and the stream was used up; the coded bytes."""
    from osoa_zip.coding.ans import Decoder, Encoder
    encoder = Encoder()
    network.encode(pixels, encoder)
    data = encoder.finish()
    decoder = Decoder(data)
    assert torch.equal(network.decode(decoder, pixels.shape), pixels)
    decoder.check_finished()
    return data


def assert_damage_stays_in_range(network, pixels: torch.Tensor) -> None:
    """Flip bytes of a model's coded batch, one every three: each damaged stream either
    raises CorruptStream or decodes to values inside the pixel range [0, 255]."""
    from osoa_zip.coding.ans import CorruptStream, Decoder
    data = model_round_trip(network, pixels)
    for position in range(0, len(data), 3):
        damaged = bytearray(data)
        damaged[position] ^= 0x5A
        try:
            decoded = network.decode(Decoder(bytes(damaged)), pixels.shape)
        except CorruptStream:
            continue
        assert float(decoded.min()) >= 0 and float(decoded.max()) <= 255


def subprocess_env() -> dict[str, str]:
    return {**os.environ, **SINGLE_THREAD_ENV}


def uncompressed_copy(source: Path, destination: Path) -> Path:
    """PNGs re-saved without compression: the tiny test model codes them smaller than
    their files, so they take the model path (a group coded larger than its files is
    stored instead)."""
    destination.mkdir(parents=True)
    for path in sorted(source.glob("*.png")):
        with Image.open(path) as image:
            image.save(destination / path.name, compress_level=0)
    return destination


def model_path_images() -> list[str]:
    names = [f"images/{p.name}" for p in sorted(EXAMPLES.glob("*.png"))]
    names += ["images/text_chunk.png", "images/rgba.png", "images/la.png", "images/palette.png",
              "images/palette4_trns.png"]
    for kind in ("rgb", "gray"):
        names += [f"crops/{kind}_{w}x{h}.png" for w, h in CROP_SIZES]
    return names


def build_tree(root: Path) -> Path:
    """Write the fixture tree below root and return root."""
    rgb = Image.open(EXAMPLES / "0002.png")
    gray = Image.open(EXAMPLES / "0006.png")
    assert (rgb.mode, gray.mode) == ("RGB", "L")

    images = root / "images"
    images.mkdir(parents=True)
    for example in sorted(EXAMPLES.glob("*.png")):
        with Image.open(example) as image:  # stored uncompressed so the tiny test model beats the file size
            image.save(images / example.name, compress_level=0)

    crops = root / "crops"
    crops.mkdir()
    for w, h in CROP_SIZES:
        rgb.crop((5, 3, 5 + w, 3 + h)).save(crops / f"rgb_{w}x{h}.png", compress_level=0)
        gray.crop((2, 7, 2 + w, 7 + h)).save(crops / f"gray_{w}x{h}.png", compress_level=0)

    files = root / "files"
    files.mkdir()
    (files / "empty.bin").write_bytes(b"")
    (files / "random.bin").write_bytes(np.random.default_rng(7).bytes(3001))
    (files / "notes.txt").write_text("osoa-zip fixture\n" * 40)
    (files / "with space é.txt").write_text("a file name with a space and an accent\n")
    deeper = root / "sub" / "deeper"
    deeper.mkdir(parents=True)
    (deeper / "x.bin").write_bytes(bytes(range(256)) * 3)

    general = root / "general"
    general.mkdir()
    rgb.save(general / "photo.jpg", quality=90)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(images / "palette.png")
    # 4 colours: Pillow writes 2 bits per index; tRNS makes one colour transparent.
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(images / "palette4_trns.png", transparency=1)
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(general / "deep16.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.asarray(gray.resize(rgb.size))))
    rgba.save(images / "rgba.png", compress_level=0)
    rgb.convert("LA").save(images / "la.png", compress_level=0)
    whole = (EXAMPLES / "0000.png").read_bytes()
    (general / "truncated.png").write_bytes(whole[: len(whole) // 2])
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "metadata the model path must keep verbatim")
    rgb.save(images / "text_chunk.png", pnginfo=info, compress_level=0)
    return root


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory) -> Path:
    """The fixture folder (read-only: copy it before changing anything)."""
    return build_tree(tmp_path_factory.mktemp("fixture") / "tree")


def relative_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file() or p.is_symlink()}


def assert_same_tree(src: Path, dst: Path) -> None:
    """Same paths; model-path images identical in pixels and metadata, everything else in bytes."""
    problems = tree_differences(src, dst)
    assert not problems, problems


@pytest.fixture
def sampled(monkeypatch) -> list:
    """The images whose samples θ0's passes will measure in triage (``Triage.begin``), in order."""
    from osoa_zip.triage import Triage
    seen = []
    begin = Triage.begin

    def counting(self, *arguments, **options):
        judging = begin(self, *arguments, **options)
        seen.extend(judging.samples.records)
        return judging
    monkeypatch.setattr(Triage, "begin", counting)
    return seen
