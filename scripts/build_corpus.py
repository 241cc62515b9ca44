"""Build the training tiles and evaluation sets of osoa-zip from real photos.

    python scripts/build_corpus.py --out data/ [--quick]
    python scripts/build_corpus.py --out data/ --examples examples/images

This script downloads at *build* time (the product itself never downloads anything). It runs
`apt-get download` for six Debian packages and `pip download <wheel> --no-deps` for five
pinned wheels, and keeps them in `<out>/cache/` so later runs are offline; if
`apt-get download` fails it runs `apt-get update` once and tries again. Nothing is installed:
files are read straight out of the .deb (`dpkg-deb --fsys-tarfile`) and the wheels (zips).

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
Training only (all their photos go to training, so the evaluation sets are the same as before
they were added); versions are Debian bookworm's and the pinned wheels':
- Debian `lxqt-themes` 1.2.0-1: the 11 photos of `usr/share/lxqt/wallpapers/` (JPEG, and PNG
  that look JPEG-derived, so all are reduced by 3-6 as JPEGs). LGPL-2.1+, (c) 2010-2012 Razor
  team, 2012-2022 LXQt team (the copyright file's `Files: *`).
- Debian `palapeli-data` 4:22.12.3-1: the 5 JPEG photos of `usr/share/palapeli/collection/`,
  from Wikimedia Commons; licence and author per photo from its `.desktop` file, in PALAPELI.
- Debian `digikam-data` 4:7.9.0-1: `usr/share/digikam/about/images/body-background.jpg`, a
  4032x3024 iPhone photo (EXIF). GPL-2+, the copyright file's licence for all files not listed
  as exceptions.
- PyPI `scikit-learn` 1.9.1: `sklearn/datasets/images/china.jpg` and `flower.jpg`. CC-BY-2.0
  (Flickr users danielbuechele and vultilion, per the folder's README.txt).
- PyPI `matplotlib` 3.11.2: `mpl-data/sample_data/grace_hopper.jpg`. Public domain (US Navy).
- PyPI `pywavelets` 1.9.0: the lossless 512x512 grayscale photo `pywt/data/ascent.npz` (cached
  as PNG), public domain, from public-domain-image.com (per `pywt/data/_readers.py`).
Left out because nothing says where the photo comes from: `imgaug`'s `quokka.jpg` and
PyWavelets's `aero.npz`.
Checked by eye and not used, because they hold no photos (renderings and digital art only):
Debian `ukui-wallpapers` 20.04.3-1.1 and `gnome-backgrounds` 43.1-1; the other images of
`skimage/data/` are synthetic, microscopy, text or too small.
Also checked by eye and not used: `sway-backgrounds` 1.7-6, `desktop-base` 12.0.6+nmu1~deb12u1,
`debian-edu-artwork-*` 2.12.4-1~deb12u1 / 20220131-1, `xfdesktop4-data` 4.18.1-1, `eterm`
0.9.6-7 (renderings and digital art); `stellarium-data` 0.22.2-1 (its landscape panoramas are
photos with transparent sky, the rest art or small); `jigzo-data` 0.6.1-7.1 (photos cut into
jigsaw pieces); `hugin-data` 2022.0.0+dfsg-2 (small help pictures); `gcompris-qt-data` 3.1-2
(images packed in Qt resource files); `mahotas` 1.4.19 (DepartmentStore.jpg is a drawing,
luispedro.jpg is smaller than 64 px after reduction by 6, lena.jpg left out on purpose);
PyWavelets's `camera` (the same picture as scikit-image's).
Kept out on purpose, because the project evaluates on them independently: `lomiri-wallpapers-*`,
`libjxl-testdata`, `opencv-doc`, MNIST digits and scipy's `face`.

The split is by source photo: in each source, sorted by name, every fourth photo goes to eval
(none of the training-only sources). Training tiles come from a photo drawn with probability
proportional to the square root of its reduced area (see `sample_tiles`); evaluation tiles
from a photo drawn uniformly, as before.
JPEG photos are box-reduced (`PIL.Image.reduce`) by 3-6 so that their 8x8 block artefacts wash
out; the lossless scikit-image photos by 1-3. Every random draw comes from
`numpy.random.default_rng` seeded by the output's name, so a rebuild gives the same bytes
(for the same Debian package versions, wheel and Pillow JPEG decoder).
"""

import argparse
import functools
import gzip
import io
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
SKLEARN_WHEEL, MATPLOTLIB_WHEEL = "scikit-learn==1.9.1", "matplotlib==3.11.2"
PYWAVELETS_WHEEL = "pywavelets==1.9.0"

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
# Training-only sources (see the module docstring).
LXQT = dict.fromkeys(
    ("Butterfly-Kenneth-Wimer", "Valendas", "after-the-rain", "appleflower", "beam", "butterfly",
     "cloud", "drop", "flowers", "fog", "this-is-not-windows"),
    "LGPL-2.1+, (c) 2010-2012 Razor team, 2012-2022 LXQt team")
PALAPELI = {
    "castle-maintenon": "GFDL (Eric Pouhier, Wikimedia Commons EPO_2432_wiki.jpg)",
    "cincinnati-bridge": "public domain (Derek Jensen, Wikimedia Commons)",
    "citrus-fruits": "public domain (US Department of Agriculture, Wikimedia Commons)",
    "european-honey-bee": "public domain (John Severns, Wikimedia Commons)",
    "panther-chameleon-female": "GFDL (B. Navez and others, Wikimedia Commons)",
}
DIGIKAM = {"body-background": "GPL-2+ (digiKam; iPhone 7 photo of 2021 per its EXIF)"}
SKLEARN = {"china": "CC-BY-2.0 (danielbuechele, Flickr)", "flower": "CC-BY-2.0 (vultilion, Flickr)"}
MATPLOTLIB = {"grace_hopper": "public domain (US Navy photo), shipped with matplotlib"}
PYWAVELETS = {"ascent": "public domain (public-domain-image.com), shipped with PyWavelets (MIT)"}


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


def npz_to_png(data):
    """PNG bytes of the one uint8 array stored in an .npz file (PyWavelets keeps its photos so)."""
    with np.load(io.BytesIO(data)) as arrays:
        pixels, = arrays.values()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Source:
    """Files taken out of one downloaded archive; `pattern`'s group 1 is a file's name.

    A file is cached as `<name><suffix>`; with no suffix it keeps its own (a source may mix
    .jpg and .png). `convert`, if given, turns the archived bytes into the cached ones.
    `train_only` sources give no photo to evaluation."""
    name: str
    archive: Callable[[Path], Path]
    pattern: str
    suffix: str | None
    licences: dict
    lossless: bool = False
    train_only: bool = False
    convert: Callable[[bytes], bytes] | None = None

    def _cached(self, cache):
        """{file name: cached path} of the files already extracted."""
        folder = cache / self.name
        return {path.stem: path for path in folder.glob("*") if path.stem in self.licences}

    def files(self, cache):
        """The source's files, extracted into `cache/<name>/` unless they already are there."""
        paths = self._cached(cache)
        if len(paths) < len(self.licences):
            (cache / self.name).mkdir(exist_ok=True)
            for member, file in archive_files(self.archive(cache)):
                match = re.search(self.pattern, member)
                if match and match.group(1) in self.licences:
                    data = file.read()
                    suffix = self.suffix or Path(member).suffix
                    path = cache / self.name / f"{match.group(1)}{suffix}"
                    path.write_bytes(self.convert(data) if self.convert else data)
            paths = self._cached(cache)
        missing = sorted(set(self.licences) - set(paths))
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
    # Training only, so the evaluation sets stay what they were before these were added.
    Source("lxqt", functools.partial(download_deb, "lxqt-themes"),
           r"usr/share/lxqt/wallpapers/([\w-]+)\.(?:jpg|png)$", None, LXQT, train_only=True),
    Source("palapeli", functools.partial(download_deb, "palapeli-data"),
           r"usr/share/palapeli/collection/([\w-]+)\.jpg$", ".jpg", PALAPELI, train_only=True),
    Source("digikam", functools.partial(download_deb, "digikam-data"),
           r"usr/share/digikam/about/images/([\w-]+)\.jpg$", ".jpg", DIGIKAM, train_only=True),
    Source("sklearn", functools.partial(download_wheel, SKLEARN_WHEEL),
           r"^sklearn/datasets/images/(\w+)\.jpg$", ".jpg", SKLEARN, train_only=True),
    Source("matplotlib", functools.partial(download_wheel, MATPLOTLIB_WHEEL),
           r"^matplotlib/mpl-data/sample_data/(\w+)\.jpg$", ".jpg", MATPLOTLIB, train_only=True),
    Source("pywavelets", functools.partial(download_wheel, PYWAVELETS_WHEEL),
           r"^pywt/data/(\w+)\.npz$", ".png", PYWAVELETS, lossless=True, train_only=True,
           convert=npz_to_png),
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
    """(train, eval) photos: in each source, sorted by name, every EVAL_EVERY-th goes to eval
    (none of a train-only source).

    The eval list interleaves the sources, so any prefix of it mixes them."""
    train, eval_by_source = [], []
    for source in sources:
        photos = [Photo(source, path) for path in source.files(cache)]
        if source.train_only:
            train += photos
            continue
        train += [p for i, p in enumerate(photos) if i % EVAL_EVERY != EVAL_EVERY - 1]
        eval_by_source.append([p for i, p in enumerate(photos) if i % EVAL_EVERY == EVAL_EVERY - 1])
    return train, [p for group in itertools.zip_longest(*eval_by_source) for p in group if p]


def rng_for(label):
    """A generator seeded by the name of what it draws, so outputs do not perturb each other."""
    return np.random.default_rng(zlib.crc32(label.encode()))


def sample_tiles(photos, count, size, gray, label, by_area=False):
    """`count` random size x size crops: random photo, random reduction factor, random place.

    Photos are equally likely, or with `by_area` in proportion to the square root of their
    mean area over their reduction factors: a compromise between equal shares per photo (a
    small photo is cropped over and over) and per pixel (the two largest JPEG photos would
    outweigh all the lossless ones).
    Returns the uint8 N x size x size x C array and, per tile, where it came from."""
    rng = rng_for(label)
    levels = [photo.reduced(photo.factors, gray) for photo in photos]
    # Reductions too small for a crop are left out (only 128 x 128 crops meet any).
    levels = [{f: a for f, a in lv.items() if min(a.shape[:2]) >= size} for lv in levels]
    photos, levels = [p for p, lv in zip(photos, levels) if lv], [lv for lv in levels if lv]
    areas = np.array([np.mean([a.shape[0] * a.shape[1] for a in lv.values()]) for lv in levels])
    tiles = np.empty((count, size, size, 1 if gray else 3), np.uint8)
    origins = []
    for i in range(count):
        k = int(rng.choice(len(photos), p=np.sqrt(areas) / np.sqrt(areas).sum()) if by_area
                else rng.integers(len(photos)))
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
        tiles = sample_tiles(photos, train_count, 32, gray, name, by_area=True)[0]
        np.save(out / f"{name}.npy", tiles)
        log(f"{name}.npy: {train_count} tiles from {len(photos)} photos")
    # 64x64 crops for the RGB network (the archiver codes 64x64 tiles by default); own seed.
    photos, count = photos_for(train, False), train_count_64
    np.save(out / "train_rgb64.npy",
            sample_tiles(photos, count, 64, False, "train_rgb64", by_area=True)[0])
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


SPEED_TILES = {"tiles32": (2048, 32, False), "gray32": (2048, 32, True)}
TRAIN_TILES_128 = 6000  # 128x128 RGB crops: train_rgb128.npy (--large-crops)


def build_large_crops(out, train, log):
    """128 x 128 RGB training crops (the archiver's default tile since release 1.4), own seed:
    at 32 x 32 and 64 x 64 the coarsest levels of a 128 tile are never seen in training."""
    photos = photos_for(train, False)
    np.save(out / "train_rgb128.npy",
            sample_tiles(photos, TRAIN_TILES_128, 128, False, "train_rgb128", by_area=True)[0])
    log(f"train_rgb128.npy: {TRAIN_TILES_128} tiles from {len(photos)} photos")


def build_speed_sets(out, cache, eval_, log):
    """Larger folders of the small-image kinds, for speed only (start-up is amortised there):
    all 10,000 Fashion-MNIST test images and 2048 tiles of 32 x 32, RGB and grey, from the
    evaluation photos (own seeds).  Never used for bits: the eval sets are those."""
    for name, (count, size, gray) in SPEED_TILES.items():
        tiles = sample_tiles(photos_for(eval_, gray), count, size, gray, f"speed_{name}")[0]
        write_pngs(out / "speed" / f"{name}_{count}", tiles)
        log(f"speed/{name}_{count}: {count} tiles")
    fashion = fashion_mnist_images(cache, "t10k")
    write_pngs(out / "speed" / f"fashion_mnist_{len(fashion)}", fashion)
    log(f"speed/fashion_mnist_{len(fashion)}: {len(fashion)} test images")


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
    parser.add_argument("--speed-sets", action="store_true",
                        help="only write the larger speed-measurement folders into OUT/speed")
    parser.add_argument("--large-crops", action="store_true",
                        help="only write OUT/train_rgb128.npy (128x128 RGB training crops)")
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
        if args.speed_sets:
            build_speed_sets(args.out, cache, eval_, log)
            return
        if args.large_crops:
            build_large_crops(args.out, train, log)
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
