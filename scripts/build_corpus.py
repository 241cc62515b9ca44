"""Build the training tiles and evaluation sets of osoa-zip from real photos.

    python scripts/build_corpus.py --out data/ [--quick]
    python scripts/build_corpus.py --out data/ --examples examples/images

This script downloads at *build* time (the product itself never downloads anything). It runs
`apt-get download` for three Debian packages and `pip download scikit-image --no-deps` for one
wheel, and keeps them in `<out>/cache/` so later runs are offline; if `apt-get download` fails it
runs `apt-get update` once and tries again. Nothing is installed: files are read straight out of
the .deb (`dpkg-deb --fsys-tarfile`) and the wheel (a zip).

Sources and licences
- Debian `plasma-workspace-wallpapers`: 12 JPEG photos (the rest of the package is digital art).
  GPL-2+, (c) KDE Visual Design Group.
- Debian `mate-backgrounds`: the 12 JPEG photos of `nature/`. GPL-2+, photographers (from the
  package's copyright file) in MATE below.
- PyPI `scikit-image` (pinned wheel): the lossless photos of `skimage/data/`; licence per photo
  in SKIMAGE below (CC0 or public domain, the rest under scikit-image's BSD-3-Clause). Only the
  left view of the motorcycle stereo pair is used: the right view is the same scene.
- Debian `dataset-fashion-mnist`: the first 512 test images, for evaluation only (never trained
  on); the 60000 training images (`train-images-idx3-ubyte.gz`) for training only, as
  `train_fashion28.npy`. MIT (Expat), (c) 2017 Zalando SE.
Checked by eye and not used, because they hold no photos (renderings and digital art only):
Debian `ukui-wallpapers` 20.04.3-1.1 and `gnome-backgrounds` 43.1-1; the other images of
`skimage/data/` are synthetic, microscopy, text or too small.
Kept out on purpose, because the project evaluates on them independently: `lomiri-wallpapers-*`,
`libjxl-testdata`, `opencv-doc`, MNIST digits and scipy's `face`.

The split is by source photo: in each source, sorted by name, every fourth photo goes to eval.
JPEG photos are box-reduced (`PIL.Image.reduce`) by 3-6 so that their 8x8 block artefacts wash
out; the lossless scikit-image photos by 1-3. Every random draw comes from
`numpy.random.default_rng` seeded by the output's name, so a rebuild gives the same bytes
(for the same Debian package versions, wheel and Pillow JPEG decoder).
"""

import argparse
import functools
import gzip
import itertools
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

TRAIN_TILES, QUICK_TRAIN_TILES = 60000, 4000
TRAIN_TILES_64, QUICK_TRAIN_TILES_64 = 20000, 1000  # 64x64 RGB crops: train_rgb64.npy
EVAL_TILES = {"tiles32": (256, 32, False), "tiles64": (128, 64, False), "gray32": (128, 32, True)}
PHOTO_LONG_SIDE, MAX_EVAL_PHOTOS = 768, 6
FASHION_MNIST_COUNT = 512
JPEG_FACTORS, LOSSLESS_FACTORS = range(3, 7), range(1, 4)
EVAL_EVERY = 4
SKIMAGE_WHEEL = "scikit-image==0.26.0"

PLASMA = dict.fromkeys(
    ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
     "Kite", "OneStandsOut", "Path", "summer_1am", "Volna"),
    "GPL-2+, (c) 2014 KDE Visual Design Group")
MATE = {name: f"GPL-2+, (c) {holder}" for name, holder in {
    "Aqua": "2008 Charles Barbin",
    "Blinds": "2008 Lennart Poettering, Andrea Cimitan",
    "Dune": "2007 Marco Cogoni, 2008 Hylke Bons",
    "FreshFlower": "2005 Jens Ansorg",
    "Garden": "2008 Charles Barbin",
    "GreenMeadow": "2005 Timothy Schellhase, 2008 Lapo Calamandrei",
    "LadyBird": "2008 Charles Barbin",
    "RainDrops": "2008 blackcombwhistler07",
    "Storm": "2008 Sergey Nazarov",
    "TwoWings": "2008 Charles Barbin, Hylke Bons",
    "Wood": "2008 Jean-François Fortin Tam",
    "YellowFlower": "2008 Charles Barbin",
}.items()}
SKIMAGE = {
    "astronaut": "public domain (NASA)",
    "brick": "CC0 (cc0textures.com)",
    "camera": "CC0 (Lav Varshney)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
    "grass": "CC0 (linolafett, DeviantArt)",
    "gravel": "CC0 (cc0textures.com)",
    "moon": "BSD-3-Clause (shipped with scikit-image)",
    "motorcycle_left": "BSD-3-Clause (shipped with scikit-image; Middlebury 2014 stereo)",
}


class CorpusError(Exception):
    """A source did not hold what this script expects."""


@functools.cache
def apt_update():
    subprocess.run(["apt-get", "update"], check=True)


def download_deb(package, cache):
    """Path of the package's .deb in the cache, downloaded first if missing."""
    if not list(cache.glob(f"{package}_*.deb")):
        if subprocess.run(["apt-get", "download", package], cwd=cache).returncode != 0:
            apt_update()
            subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
    return sorted(cache.glob(f"{package}_*.deb"))[-1]


def download_wheel(requirement, cache):
    """Path of the requirement's wheel in the cache, downloaded first if missing."""
    name, version = requirement.replace("-", "_").split("==")
    pattern = f"{name}-{version}-*.whl"
    if not list(cache.glob(pattern)):
        subprocess.run([sys.executable, "-m", "pip", "download", requirement, "--no-deps",
                        "--only-binary=:all:", "--dest", str(cache)], check=True)
    return sorted(cache.glob(pattern))[-1]


def archive_files(archive):
    """Yield (path, file object) for every regular file in a .deb's data or a wheel."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for name in wheel.namelist():
                with wheel.open(name) as file:
                    yield name, file
        return
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", archive], stdout=subprocess.PIPE) as proc:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, tar.extractfile(member)
    if proc.returncode != 0:
        raise CorpusError(f"dpkg-deb could not read {archive}")


@dataclass(frozen=True)
class Source:
    """Files taken out of one downloaded archive; `pattern`'s group 1 is a file's name."""
    name: str
    archive: Callable[[Path], Path]
    pattern: str
    suffix: str
    licences: dict
    lossless: bool = False

    def files(self, cache):
        """The source's files, extracted into `cache/<name>/` unless they already are there."""
        paths = {name: cache / self.name / f"{name}{self.suffix}" for name in self.licences}
        if not all(path.exists() for path in paths.values()):
            (cache / self.name).mkdir(exist_ok=True)
            for member, file in archive_files(self.archive(cache)):
                match = re.search(self.pattern, member)
                if match and match.group(1) in paths:
                    paths[match.group(1)].write_bytes(file.read())
        missing = [name for name, path in paths.items() if not path.exists()]
        if missing:
            raise CorpusError(f"{self.name}: not found in the archive: {', '.join(missing)}")
        return [paths[name] for name in sorted(paths)]


PHOTO_SOURCES = (
    Source("mate", functools.partial(download_deb, "mate-backgrounds"),
           r"usr/share/backgrounds/mate/nature/(\w+)\.jpg$", ".jpg", MATE),
    Source("plasma", functools.partial(download_deb, "plasma-workspace-wallpapers"),
           r"usr/share/wallpapers/(\w+)/contents/images/\d+x\d+\.jpg$", ".jpg", PLASMA),
    Source("skimage", functools.partial(download_wheel, SKIMAGE_WHEEL),
           r"^skimage/data/(\w+)\.png$", ".png", SKIMAGE, lossless=True),
)
FASHION_MNIST = Source("fashion-mnist", functools.partial(download_deb, "dataset-fashion-mnist"),
                       r"fashion-mnist/((?:t10k|train)-images-idx3-ubyte)\.gz$", ".gz",
                       {"t10k-images-idx3-ubyte": "MIT", "train-images-idx3-ubyte": "MIT"})


@dataclass(frozen=True)
class Photo:
    source: Source
    path: Path

    @property
    def id(self):
        return f"{self.source.name}/{self.path.stem}"

    @property
    def licence(self):
        return self.source.licences[self.path.stem]

    @property
    def factors(self):
        """Box-reduction factors for tiles: JPEGs need >= 3 to hide their block artefacts."""
        return LOSSLESS_FACTORS if self.source.lossless else JPEG_FACTORS

    @property
    def is_gray(self):
        with Image.open(self.path) as image:
            return image.mode == "L"

    def reduced(self, factors, gray):
        """{factor: uint8 H x W x C array} of the photo box-reduced by each factor.

        Edge rows and columns that do not fill a whole box are dropped, not averaged."""
        with Image.open(self.path) as image:
            image = image.convert("L" if gray else "RGB")
            width, height = image.size
            return {f: np.atleast_3d(image.reduce(f, (0, 0, width // f * f, height // f * f)))
                    for f in factors}

    def reduced_to(self, long_side, gray=False):
        """The photo reduced by the smallest allowed integer factor that fits `long_side`."""
        with Image.open(self.path) as image:
            factor = max(self.factors[0], math.ceil(max(image.size) / long_side))
        return self.reduced([factor], gray)[factor], factor


def photos_for(photos, gray):
    """The photos a set may draw from: gray sets use them all, RGB sets only the colour ones."""
    return photos if gray else [p for p in photos if not p.is_gray]


def split_photos(sources, cache):
    """(train, eval) photos: in each source, sorted by name, every EVAL_EVERY-th goes to eval.

    The eval list interleaves the sources, so any prefix of it mixes them."""
    train, eval_by_source = [], []
    for source in sources:
        photos = [Photo(source, path) for path in source.files(cache)]
        train += [p for i, p in enumerate(photos) if i % EVAL_EVERY != EVAL_EVERY - 1]
        eval_by_source.append([p for i, p in enumerate(photos) if i % EVAL_EVERY == EVAL_EVERY - 1])
    return train, [p for group in itertools.zip_longest(*eval_by_source) for p in group if p]


def rng_for(label):
    """A generator seeded by the name of what it draws, so outputs do not perturb each other."""
    return np.random.default_rng(zlib.crc32(label.encode()))


def sample_tiles(photos, count, size, gray, label):
    """`count` random size x size crops: random photo, random reduction factor, random place.

    Returns the uint8 N x size x size x C array and, per tile, where it came from."""
    rng = rng_for(label)
    levels = [photo.reduced(photo.factors, gray) for photo in photos]
    tiles = np.empty((count, size, size, 1 if gray else 3), np.uint8)
    origins = []
    for i in range(count):
        k = int(rng.integers(len(photos)))
        factor = int(rng.choice(list(levels[k])))
        image = levels[k][factor]
        y, x = (int(rng.integers(n - size + 1)) for n in image.shape[:2])
        tiles[i] = image[y:y + size, x:x + size]
        origins.append(f"{photos[k].id} reduce={factor} y={y} x={x}")
    return tiles, origins


def write_pngs(folder, images):
    """Write images as 0000.png, 0001.png, ... into a fresh `folder`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        pixels = image.squeeze(-1) if image.shape[-1] == 1 else image
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def fashion_mnist_images(cache, split, count=None):
    """The first `count` (default all) Fashion-MNIST images of `split` ("t10k" = test, "train").

    IDX format: big-endian header, then uint8 pixels."""
    path, = (p for p in FASHION_MNIST.files(cache) if p.name == f"{split}-images-idx3-ubyte.gz")
    raw = gzip.decompress(path.read_bytes())
    magic, n, rows, cols = struct.unpack(">4I", raw[:16])
    count = n if count is None else count
    if magic != 2051 or n < count:
        raise CorpusError(f"unexpected Fashion-MNIST header: magic {magic}, {n} images")
    pixels = np.frombuffer(raw, np.uint8, count * rows * cols, offset=16)
    return pixels.reshape(count, rows, cols, 1)


def eval_photos768(eval_photos):
    """Kodak-like set: up to MAX_EVAL_PHOTOS RGB eval photos, reduced to <= PHOTO_LONG_SIDE px."""
    chosen = photos_for(eval_photos, gray=False)[:MAX_EVAL_PHOTOS]
    return [(p, *p.reduced_to(PHOTO_LONG_SIDE)) for p in chosen]


def build(out, cache, train, eval_, train_count, train_count_64, log):
    """Write the training arrays and the evaluation folders."""
    for gray, name in ((False, "train_rgb32"), (True, "train_gray32")):
        photos = photos_for(train, gray)
        np.save(out / f"{name}.npy", sample_tiles(photos, train_count, 32, gray, name)[0])
        log(f"{name}.npy: {train_count} tiles from {len(photos)} photos")
    # 64x64 crops for the RGB network (the archiver codes 64x64 tiles by default); own seed.
    photos, count = photos_for(train, False), train_count_64
    np.save(out / "train_rgb64.npy", sample_tiles(photos, count, 64, False, "train_rgb64")[0])
    log(f"train_rgb64.npy: {count} tiles from {len(photos)} photos")
    # Fashion-MNIST's training split, for training only: its test split is evaluation only.
    fashion = fashion_mnist_images(cache, "train")
    np.save(out / "train_fashion28.npy", fashion)
    log(f"train_fashion28.npy: {len(fashion)} Fashion-MNIST training images")
    provenance = {}
    for name, (count, size, gray) in EVAL_TILES.items():
        photos = photos_for(eval_, gray)
        tiles, provenance[name] = sample_tiles(photos, count, size, gray, f"eval_{name}")
        write_pngs(out / "eval" / name, tiles)
        log(f"eval/{name}: {count} tiles from {len(photos)} photos")
    photos768 = eval_photos768(eval_)
    write_pngs(out / "eval" / "photos768", [image for _, image, _ in photos768])
    provenance["photos768"] = [f"{p.id} reduce={factor}" for p, _, factor in photos768]
    log(f"eval/photos768: {len(photos768)} photos")
    count = FASHION_MNIST_COUNT
    write_pngs(out / "eval" / "fashion_mnist", fashion_mnist_images(cache, "t10k", count))
    provenance["fashion_mnist"] = [f"fashion-mnist t10k image {i}" for i in range(count)]
    log(f"eval/fashion_mnist: {count} images")
    (out / "eval" / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")


def build_examples(folder, eval_):
    """A few small crops of eval photos for the README demo, with a README.txt naming sources."""
    rng = rng_for("examples")
    rgb = [(p, image, 64) for p, image, _ in eval_photos768(eval_)]
    gray = [(p, p.reduced_to(PHOTO_LONG_SIDE, gray=True)[0], 48)
            for p in sorted(eval_, key=lambda p: not p.is_gray)[:3]]
    crops, lines = [], []
    for i, (photo, image, size) in enumerate(rgb + gray):
        y, x = (int(rng.integers(n - size + 1)) for n in image.shape[:2])
        crops.append(image[y:y + size, x:x + size])
        lines.append(f"{i:04d}.png  {size}x{size} {'gray' if image.shape[-1] == 1 else 'RGB'}"
                     f"  {photo.id} ({photo.licence})")
    write_pngs(folder, crops)
    (folder / "README.txt").write_text(
        "Crops of box-reduced evaluation photos (never trained on), made by\n"
        "scripts/build_corpus.py --examples. mate = Debian mate-backgrounds, plasma = Debian\n"
        f"plasma-workspace-wallpapers, skimage = skimage/data of PyPI {SKIMAGE_WHEEL}.\n"
        "GPL-2+: https://www.gnu.org/licenses/old-licenses/gpl-2.0.html\n\n"
        + "\n".join(lines) + "\n",
        encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data"),
                        help="output folder (default: data)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_TRAIN_TILES} training tiles, not {TRAIN_TILES}")
    parser.add_argument("--examples", type=Path, metavar="FOLDER",
                        help="only write the small README example images into FOLDER")
    args = parser.parse_args()
    start = time.monotonic()

    def log(message):
        print(f"[{time.monotonic() - start:6.1f}s] {message}", flush=True)

    cache = args.out / "cache"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        train, eval_ = split_photos(PHOTO_SOURCES, cache)
        log(f"{len(train)} train photos, {len(eval_)} eval photos")
        if args.examples:
            build_examples(args.examples, eval_)
            log(f"examples written to {args.examples}")
            return
        split = {"rule": f"per source, sorted by name, every {EVAL_EVERY}th photo is eval",
                 "train": [p.id for p in train], "eval": [p.id for p in eval_]}
        (args.out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
        build(args.out, cache, train, eval_, QUICK_TRAIN_TILES if args.quick else TRAIN_TILES,
              QUICK_TRAIN_TILES_64 if args.quick else TRAIN_TILES_64, log)
    except (CorpusError, OSError, subprocess.CalledProcessError, tarfile.TarError,
            zipfile.BadZipFile) as error:
        sys.exit(f"build_corpus: error: {error}")
    log("done")


if __name__ == "__main__":
    main()
