"""Decide which files the model may code, and write them back.

A file takes the model path only when Pillow reads it as a single 8-bit L or
RGB frame in a lossless format and writing the decoded pixels back loses
nothing but the pixel encoding:

* PNG: every chunk besides IHDR/IDAT/IEND (text, ICC profile, gamma, DPI,
  EXIF, transparency, private chunks) is kept verbatim and spliced back
  around Pillow's IDAT on restore, so metadata survive byte for byte;
* BMP, PPM/PGM, TIFF: when Pillow re-writes the file byte for byte (for an
  LZW TIFF: given ``compression="tiff_lzw"``, which the archive then records), or
  (format 1.5) when the file's pixels are plain raster: everything else is kept
  verbatim beside the model-coded pixels and the raster is re-encoded in place
  (verbatim.py), so files other tools wrote come back byte for byte too.

LA and RGBA images qualify too: the model codes the colour channels and the
archive keeps the alpha plane beside them.  Palette (P) PNGs keep their
palette and code their index plane beside the model (xz): on 48
64-colour tiles, 3.21 bits per index against 8.39 for the model on the
expanded RGB; alpha planes likewise (xz 1.77 against 2.95 for the model
as gray; benchmarks/palette_path.py).  Everything else (JPEG, 16-bit,
multi-frame, corrupt files) is an ordinary file for the general path: never
an error.

Memory (docs/SECURITY.md, "How memory grows") does not grow with the image.
Pillow decodes and encodes whole images, so an image with more than
SPILL_BYTES of pixels is decoded straight into a temporary file mapped as
the Pillow image's memory (pixel_file.py), its tiles are read from that file,
and the decoder writes it back from such a file: peak RSS stayed at 332-362
MiB compressing and 288-314 MiB decompressing from 4 to 100 MP (it grew by
~1.0 and ~1.3 bytes per sub-pixel with one Pillow image held: 661 and 713 MiB
at 100 MP).  Smaller images are held in memory as before (a group holds ~2^25
sub-pixels), and everything else works in row bands of about BAND_BYTES.
Checking an image holds one image at a time: its pixels wait (in their own array or
in their file) while the file is written again as the decoder will write it.  A file
of at most SMALL_FILE_BYTES is read in one read and decoded and checked from memory
(most of a small image's cost was the work around Pillow's: reads, copies, hashes;
docs/PERFORMANCE.md, "Small files").  A file
that must come back byte for byte (BMP, PPM/PGM, TIFF, or any with --byte-exact) is
compared with the original by SHA-256 and size, nothing more: the same bytes decode
to the same pixels.  A PNG whose header is the one Pillow writes for its pixels
(8 bits per sample, grey, RGB or with alpha, not interlaced) needs no check: its
rewrite differs from it only in the image data, which Pillow encodes from exactly
the samples it decoded (_rewrite_is_same_png).  Any other PNG's rewrite goes to a
scratch file and is decoded again, and the two decodes are compared by the SHA-256
of their pixels (on Fashion-MNIST that check was ~45% of reading an image); the pixels'
SHA-256 is taken for that check only.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from .. import heap
from .messages import Note, library_messages
from .pixel_file import PixelFile, PixelView, array_from_bands
from .verbatim import Raster, rasters_of, verbatim_bytes, write_file

LOSSLESS_FORMATS = ("PNG", "BMP", "PPM", "TIFF")
# The file name suffixes of LOSSLESS_FORMATS: a hint for planning work before any file is read.
LOSSLESS_SUFFIXES = frozenset({".png", ".bmp", ".ppm", ".pgm", ".pnm", ".tif", ".tiff"})
MODEL_MODES = {"L": 1, "RGB": 3, "LA": 2, "RGBA": 4, "P": 1}  # channels in the file
COLOR_CHANNELS = {"L": 1, "RGB": 3, "LA": 1, "RGBA": 3, "P": 0}  # channels the model codes; any rest is side data
# Pillow's own bomb limit is a warning up to 2x; we refuse anything above it.
MAX_IMAGE_PIXELS = 178_956_970
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Files that may be model-path images start with one of these (PNG, BMP, PPM/PGM, TIFF).
IMAGE_SIGNATURES = (PNG_SIGNATURE, b"BM", b"P5", b"P6", b"II*\x00", b"MM\x00*")
# The largest image file read for the model path: 179 MP x 4 channels is ~716 MB raw.
MAX_IMAGE_FILE_BYTES = 1 << 30
BAND_BYTES = 1 << 20   # pixels moved between Pillow, numpy and files per step
SPILL_BYTES = 1 << 24  # images with more bytes of pixels are checked through temporary files
# Files no larger are read into memory in one read, and decoded and checked from there (Pillow
# reads a PNG chunk by chunk, and the checks read the file again).
SMALL_FILE_BYTES = 1 << 20
# The PNG colour type Pillow writes for each mode at 8 bits per sample (P is left out: Pillow
# writes a palette image with fewer bits when its palette is short).
PILLOW_PNG_COLOUR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}


@dataclass
class ImageRecord:
    pixels: np.ndarray | PixelView | None  # H x W x C, uint8 (None when `picture` holds them)
    mode: str
    format: str
    png_before: bytes = b""  # PNG chunks between IHDR and the first IDAT, verbatim
    png_after: bytes = b""   # PNG chunks between the last IDAT and IEND, verbatim
    sha256: str = ""         # of the original file, when its exact bytes are promised
    compression: str = ""    # TIFF: the compression Pillow writes it with ("tiff_lzw"; "" = none)
    verbatim: bytes = b""    # the file minus its rasters, when the rasters are re-encoded in place (verbatim.py)
    rasters: tuple[Raster, ...] = ()
    palette: bytes = b""     # P images: the palette as Pillow reports it (RGB triples)
    picture: Image.Image | None = None  # the decoder's pixels, already in the Pillow image that writes them
    # A large image's pixels are in this temporary file (`pixels` is its view, or `picture` maps
    # it); whoever is done with the record closes it.
    pixel_file: PixelFile | None = None


def is_large(height: int, width: int, channels: int) -> bool:
    """Images with more bytes of pixels than SPILL_BYTES live in a PixelFile, not in memory."""
    return height * width * channels > SPILL_BYTES


def give_back_memory(pixel_bytes: int) -> None:
    """After a large image, hand the heap it freed back to the system.  glibc keeps freed
    blocks below its mmap threshold (heap.py), such as Pillow's 16 MiB image blocks and our
    bands, so without this each large image would leave ~1 byte per sub-pixel of
    free-but-held memory in the peak of whatever comes next (measured)."""
    if pixel_bytes > SPILL_BYTES:
        heap.trim()


def close_picture(picture: Image.Image) -> None:
    """Free a Pillow image now (leaving its `with` block only closes its file)."""
    width, height = picture.size
    picture.close()
    give_back_memory(width * height * 4)


def band_rows(width: int) -> int:
    """Rows per band: about BAND_BYTES at Pillow's 4 bytes per pixel."""
    return max(1, BAND_BYTES // (4 * max(1, width)))


def pixel_bands(image: Image.Image) -> Iterator[np.ndarray]:
    """A loaded image's pixels as H x W x C bands, top to bottom.  np.asarray(image)
    would go through tobytes(), which holds the pixels twice more besides Pillow's copy."""
    width, height = image.size
    rows = band_rows(width)
    if rows >= height:  # one band: the image itself, no crop copy first
        yield np.asarray(image).reshape(height, width, -1)
        return
    for y in range(0, height, rows):
        band = np.asarray(image.crop((0, y, width, min(height, y + rows))))
        yield band.reshape(band.shape[0], width, -1)


def blank_picture(mode: str, width: int, height: int) -> Image.Image:
    """The image the pixels are pasted into before writing (Pillow's own layout)."""
    return Image.new(mode, (width, height))


def paste(picture: Image.Image, pixels: np.ndarray, y: int, x: int) -> None:
    """Put h x w x C pixels of the picture's mode at (y, x)."""
    plane = pixels[:, :, 0] if picture.mode in ("L", "P") else pixels
    picture.paste(Image.fromarray(np.ascontiguousarray(plane), picture.mode), (x, y))


def finish_picture(picture: Image.Image, palette: bytes) -> Image.Image:
    """Give a P picture its palette (its size sets the bit depth Pillow writes)."""
    if picture.mode == "P":
        picture.putpalette(palette)
    return picture


def picture_from_bands(bands: Iterator[np.ndarray], mode: str, width: int, height: int,
                       palette: bytes = b"") -> Image.Image:
    """The Pillow image of these pixels, pasted band by band: the same image as
    Image.fromarray, without its whole-image copy of a non-contiguous array."""
    picture, y = blank_picture(mode, width, height), 0
    for band in bands:
        paste(picture, band, y, 0)
        y += band.shape[0]
    return finish_picture(picture, palette)


def record_picture(record: ImageRecord) -> Image.Image:
    """The Pillow image a record is written from."""
    if record.picture is not None:
        return record.picture
    if record.pixel_file is not None:
        return finish_picture(record.pixel_file.picture(), record.palette)
    height, width = record.pixels.shape[:2]
    rows = band_rows(width)
    bands = (record.pixels[y:y + rows] for y in range(0, height, rows))
    return picture_from_bands(bands, record.mode, width, height, record.palette)


class _Hashing:
    """A write-only stream that passes bytes on and hashes them (no fileno: Pillow writes through write()).
    ``after_write`` is called after each write (a mapped picture forgets the pages written)."""

    def __init__(self, out: BinaryIO | None, after_write: Callable[[], None] | None = None) -> None:
        self.out, self.digest, self.size = out, hashlib.sha256(), 0
        self.after_write = after_write

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        if self.after_write is not None:
            self.after_write()
        return len(data)

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Pillow's TIFF writer seeks to where it already is; anything else cannot stream."""
        if (offset, whence) not in ((self.size, io.SEEK_SET), (0, io.SEEK_CUR), (0, io.SEEK_END)):
            raise io.UnsupportedOperation("the image writer streams: no seeking back")
        return self.size

    def flush(self) -> None:
        pass


class _PngSplicer:
    """Pillow's PNG stream with the original's metadata chunks in place of Pillow's own:
    signature, Pillow's IHDR, png_before, Pillow's IDATs, png_after, IEND.  Only one
    chunk is ever buffered, so the file streams."""

    def __init__(self, out: _Hashing, before: bytes, after: bytes) -> None:
        self.out, self.before, self.after = out, before, after
        self.buffer = bytearray()
        self.seen_signature = self.before_written = False

    def write(self, data) -> int:
        self.buffer += data
        if not self.seen_signature and len(self.buffer) >= len(PNG_SIGNATURE):
            self.out.write(bytes(self.buffer[:len(PNG_SIGNATURE)]))
            del self.buffer[:len(PNG_SIGNATURE)]
            self.seen_signature = True
        while self.seen_signature and len(self.buffer) >= 12:
            end = 12 + int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < end:
                break
            self._chunk(bytes(self.buffer[4:8]), bytes(self.buffer[:end]))
            del self.buffer[:end]
        return len(data)

    def _chunk(self, kind: bytes, raw: bytes) -> None:
        if kind == b"IHDR":
            self.out.write(raw)
        elif kind == b"IDAT":
            self._write_before()
            self.out.write(raw)
        elif kind == b"IEND":
            self._write_before()
            self.out.write(self.after + raw)

    def _write_before(self) -> None:
        if not self.before_written:
            self.out.write(self.before)
            self.before_written = True

    def flush(self) -> None:
        pass


def save_picture(picture: Image.Image, record: ImageRecord, out: BinaryIO | None) -> tuple[str, int]:
    """Write the file to restore to ``out`` (None: nowhere) as it is encoded; its (SHA-256, size)."""
    sink = _Hashing(out, record.pixel_file.forget if record.pixel_file is not None else None)
    if record.rasters:
        write_file(picture, record.verbatim, record.rasters, sink)
        return sink.digest.hexdigest(), sink.size
    splice = record.format == "PNG" and (record.png_before or record.png_after)
    options = {"compression": record.compression} if record.compression else {}
    picture.save(_PngSplicer(sink, record.png_before, record.png_after) if splice else sink, format=record.format,
                 **options)
    return sink.digest.hexdigest(), sink.size


class _Reader:
    """A file for Pillow without a descriptor: given one, Pillow hands some TIFFs to
    libtiff by descriptor, and a spill file's descriptor may not exist yet.
    ``after_read`` is called after each read (a mapped picture forgets the pages decoded)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.readline, self.seek, self.tell = handle.readline, handle.seek, handle.tell
        self.after_read: Callable[[], None] | None = None

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if self.after_read is not None:
            self.after_read()
        return data


@contextmanager
def _opened(reader: _Reader) -> Iterator[Image.Image]:
    reader.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Our limit, not Pillow's default (89 MP warns): up to MAX_IMAGE_PIXELS takes the model path.
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        with Image.open(reader) as image:
            try:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ValueError("image too large")
                yield image
            finally:
                close_picture(image)


def _facts(image: Image.Image) -> tuple:
    """What must survive a rewrite besides the pixels: mode, format, info, palette."""
    palette = bytes(image.getpalette() or b"") if image.mode == "P" else b""
    return image.mode, image.format, dict(image.info), palette


def _png_chunks(handle: BinaryIO, size: int) -> list[tuple[bytes, bytes]] | None:
    """(type, whole chunk) in order, IDAT data skipped (b""), read chunk by chunk;
    None unless the file is exactly a chunk list from IHDR to IEND."""
    handle.seek(0)
    if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        return None
    chunks, position = [], len(PNG_SIGNATURE)
    while position + 12 <= size:
        header = handle.read(8)
        kind, end = header[4:8], position + 12 + int.from_bytes(header[:4], "big")
        if kind == b"IDAT":
            handle.seek(end)
            chunks.append((kind, b""))
        else:
            chunks.append((kind, header + handle.read(end - position - 8)))
        position = end
    if position != size or not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        return None
    return chunks


def _split_png(handle: BinaryIO, size: int) -> tuple[bytes, bytes, bytes] | None:
    """The whole IHDR chunk and the ancillary chunks before and after the image data, or None
    if IDATs are not contiguous."""
    chunks = _png_chunks(handle, size)
    if chunks is None:
        return None
    types = [kind for kind, _ in chunks]
    if b"IDAT" not in types:
        return None
    first = types.index(b"IDAT")
    last = len(types) - 1 - types[::-1].index(b"IDAT")
    if any(kind != b"IDAT" for kind in types[first:last + 1]) or b"IHDR" in types[1:] or b"IEND" in types[:-1]:
        return None
    return (chunks[0][1], b"".join(raw for _, raw in chunks[1:first]),
            b"".join(raw for _, raw in chunks[last + 1:-1]))


def _rewrite_is_same_png(ihdr: bytes, mode: str, width: int, height: int) -> bool:
    """Whether the decoder's PNG of these pixels is this file but for its image data.

    It is when the original's IHDR is the one Pillow writes for the mode (8 bits per
    sample, the mode's colour type, no interlacing): the restored file is then the
    signature, this very IHDR, the original's other chunks byte for byte, Pillow's IDATs
    and IEND.  Pillow stores 8-bit samples as they are (no scaling, no palette), and
    zlib and the PNG filters are lossless, so those IDATs hold the decoded samples
    exactly, and the same chunks give the same info: decoding the rewrite again, as
    _rewrite_decodes_alike does for every other PNG, would find what is known already.
    """
    colour_type = PILLOW_PNG_COLOUR_TYPES.get(mode)
    if colour_type is None or len(ihdr) != 25:
        return False
    return ihdr[4:21] == b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)


def _file_sha256(handle: BinaryIO) -> str:
    handle.seek(0)
    digest = hashlib.sha256()
    while block := handle.read(BAND_BYTES):
        digest.update(block)
    return digest.hexdigest()


def _digest(bands: Iterable[np.ndarray]) -> str:
    """The SHA-256 of an image's pixels, given as H x W x C bands."""
    digest = hashlib.sha256()
    for band in bands:
        digest.update(np.ascontiguousarray(band).data)
    return digest.hexdigest()


def _pixels_digest(pixels: np.ndarray | PixelView) -> str:
    """The SHA-256 of a record's pixels (an array, or a large image's file, band by band)."""
    return _digest(pixels.bands() if isinstance(pixels, PixelView) else (pixels,))


def _decode(image: Image.Image, reader: _Reader) -> tuple[tuple, np.ndarray | PixelView, PixelFile | None]:
    """Load an opened image: (its facts, its pixels, the PixelFile holding them if it is large).  A
    small image's pixels are copied into an array of their own; a large one is decoded straight into
    a PixelFile (Pillow decodes into the image memory it finds: ImageFile.load_prepare), forgetting
    the pages decoded after each read of the file, and its pixels are a view of that file."""
    width, height = image.size
    shape = (height, width, MODEL_MODES.get(image.mode, 1))
    if not is_large(*shape):
        image.load()  # before _facts: loading reads the chunks after the image data into info
        return _facts(image), array_from_bands(pixel_bands(image), shape), None
    pixel_file = PixelFile(image.mode, width, height)
    try:
        mapped = image.im = pixel_file.core()
        reader.after_read = pixel_file.forget
        try:
            image.load()
        finally:
            reader.after_read = None
        if image.im is not mapped:
            raise ValueError("Pillow decoded the image elsewhere than into the mapped file")
        del mapped
        pixel_file.forget()
        return _facts(image), pixel_file.view(), pixel_file
    except BaseException:
        pixel_file.close()
        raise


def _decoded_digest(image: Image.Image, reader: _Reader) -> tuple[tuple, str]:
    """Load an opened image only to compare it: its facts and the SHA-256 of its pixels, hashed
    band by band as they are cut from Pillow's image (a large one's from a PixelFile, closed again)."""
    width, height = image.size
    if not is_large(height, width, MODEL_MODES.get(image.mode, 1)):
        image.load()
        return _facts(image), _digest(pixel_bands(image))
    facts, pixels, pixel_file = _decode(image, reader)
    with pixel_file:
        return facts, _pixels_digest(pixels)


def scratch_file(size_hint: int) -> BinaryIO:
    """Where pixels, rewrites and coded batches wait: in memory when small, else a temporary file.
    Decided up front: a file that starts in memory and moves to disk
    (SpooledTemporaryFile) holds two more copies of its start while it moves."""
    return io.BytesIO() if size_hint <= SPILL_BYTES else tempfile.TemporaryFile(prefix="osoa-zip-")


def _model_record(handle: BinaryIO, size: int, byte_exact: bool, verbatim: bool) -> ImageRecord | None:
    """The record of an image file if writing its pixels back loses nothing, else None.

    One image at a time: a small image is decoded into an array of its own, a
    large one straight into a PixelFile; the rewrite is encoded (into a scratch
    file, if it must be decoded again) and compared by hash.  A large image's
    pixels stay in their file (the record's ``pixel_file``, closed once its group
    is coded).  The SHA-256 of the pixels is taken only for a rewrite that is
    decoded again: the other checks compare files.  With ``verbatim`` (the
    archive's format holds 1.5's fields), an LZW TIFF may be re-written LZW and a
    raster file around verbatim bytes (verbatim.py).
    """
    reader = _Reader(handle)
    with ExitStack() as scratch, ExitStack() as kept:
        with _opened(reader) as image:
            mode, image_format, frames = image.mode, image.format, getattr(image, "n_frames", 1)
            if image_format not in LOSSLESS_FORMATS or mode not in MODEL_MODES or frames != 1:
                return None
            rasters = rasters_of(image) if verbatim and image_format != "PNG" else None
            if mode == "P" and image_format != "PNG" and rasters is None:
                return None
            lzw = verbatim and image_format == "TIFF" and image.info.get("compression") == "tiff_lzw"
            width, height = image.size
            shape = (height, width, MODEL_MODES[mode])
            facts, pixels, pixel_file = _decode(image, reader)
        if pixel_file is not None:
            kept.callback(pixel_file.close)
        record = ImageRecord(pixels=pixels, mode=mode, format=image_format, palette=facts[3], pixel_file=pixel_file,
                             compression="tiff_lzw" if lzw else "")
        if image_format == "PNG":
            split = _split_png(handle, size)
            if split is None:
                return None
            ihdr, record.png_before, record.png_after = split

        if image_format != "PNG" or byte_exact:
            reproduced = _reproduces_file(record, handle, size, rasters)
        elif _rewrite_is_same_png(ihdr, mode, width, height):
            reproduced = True
        else:
            rewrite = scratch.enter_context(scratch_file(height * width * shape[2]))
            reproduced = _rewrite_decodes_alike(record, record_picture(record), rewrite, facts, _pixels_digest(pixels))
        if not reproduced:
            return None
        if byte_exact:
            record.sha256 = _file_sha256(handle)
        kept.pop_all()
    give_back_memory(record.pixels.nbytes)
    return record


def _written(record: ImageRecord, picture: Image.Image, out: BinaryIO | None) -> tuple[str, int]:
    """Write the picture as the decoder will write the record (SHA-256 and size), then free it."""
    try:
        return save_picture(picture, record, out)
    finally:
        close_picture(picture)


def _reproduces_file(record: ImageRecord, original: BinaryIO, size: int, rasters: tuple[Raster, ...] | None) -> bool:
    """Whether the record's pixels, written as the decoder will, give back the original bytes:
    first as Pillow writes the format, then (given rasters) as the original's verbatim bytes
    around its re-encoded rasters, which the record then keeps.  Identical bytes decode to
    the same pixels and facts, so nothing is decoded again."""
    original_digest = _file_sha256(original)
    if _written(record, record_picture(record), None) == (original_digest, size):
        return True
    if not rasters:
        return False
    verbatim = verbatim_bytes(original, size, rasters)
    if verbatim is None:
        return False
    record.compression, record.verbatim, record.rasters = "", verbatim, rasters
    if _written(record, record_picture(record), None) == (original_digest, size):
        return True
    record.verbatim, record.rasters = b"", ()
    return False


def _rewrite_decodes_alike(record: ImageRecord, picture: Image.Image, rewrite: BinaryIO, facts: tuple,
                           pixels_digest: str) -> bool:
    """Write the picture (the record's pixels) as the decoder will; true if that gives back the same
    pixels and facts (a PNG: its IDAT may differ).  Only the rewrite's own Pillow image is held
    meanwhile (a large one's pixels in a PixelFile)."""
    _written(record, picture, rewrite)
    reader = _Reader(rewrite)
    with _opened(reader) as again:
        if again.mode != record.mode:
            return False
        again_facts, again_digest = _decoded_digest(again, reader)
    return again_facts == facts and again_digest == pixels_digest


# Bytes of a file's start that say whether it may hold colour (``may_hold_colour``).
COLOUR_HINT_BYTES = 30


def may_hold_colour(head: bytes) -> bool:
    """Whether a file that starts with ``head`` (COLOUR_HINT_BYTES) may be a colour image on the
    model path, from its header alone: a PNG of colour type 2 or 6, a PPM (P6), a BMP of 16 bits
    a pixel or more, any TIFF.  A hint for planning work (pack.py), never a decision on a file."""
    if head.startswith(PNG_SIGNATURE):
        return len(head) > 25 and head[25] in (2, 6)
    if head.startswith(b"BM"):
        return len(head) >= 30 and int.from_bytes(head[28:30], "little") >= 16
    return head.startswith((b"P6", b"II*\x00", b"MM\x00*"))


def read_image(path: Path, byte_exact: bool = False, pixels_in_file: bool = False,
               note: Note | None = None, verbatim: bool = False) -> ImageRecord | None:
    """The pixels of a model-path image, or None for the general path.

    With byte_exact, only images whose restored file would be byte-identical
    qualify, and the record carries the original's SHA-256 for the decoder to check.
    A file that changes while it is read takes the general path (which notices).
    With pixels_in_file, a large image's pixels stay in a temporary file (``pixels``
    is a PixelView of ``pixel_file``, which the caller closes), as the compressor
    keeps them; else they are read into an array.  What Pillow and its C libraries say
    about the file goes to ``note``, one line per message naming the file (messages.py).
    With ``verbatim`` (an archive of format 1.5 on), files whose bytes Pillow does not write
    back may keep them verbatim around their re-encoded raster (verbatim.py).
    """
    with library_messages(str(path), note):
        return _read_image(path, byte_exact, pixels_in_file, verbatim)


def _read_image(path: Path, byte_exact: bool, pixels_in_file: bool, verbatim: bool) -> ImageRecord | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            before = os.fstat(handle.fileno())
            if not head.startswith(IMAGE_SIGNATURES) or before.st_size > MAX_IMAGE_FILE_BYTES:
                return None  # never read a non-image (or a huge file) whole just to ask Pillow
            if before.st_size <= SMALL_FILE_BYTES:  # read once; Pillow and the checks read memory
                # Its size and one byte more (a read of SMALL_FILE_BYTES allocates that much first: ~20 us
                # of a small PNG's ~170); a file growing or shrinking meanwhile is noticed below.
                data = head + handle.read(min(before.st_size + 1, SMALL_FILE_BYTES))
                record = _model_record(io.BytesIO(data), len(data), byte_exact, verbatim)
            else:
                record = _model_record(handle, before.st_size, byte_exact, verbatim)
            after = os.fstat(handle.fileno())
            changed = (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
            if record is not None and record.pixel_file is not None and (changed or not pixels_in_file):
                with record.pixel_file:
                    record.pixels, record.pixel_file = None if changed else record.pixels.array(), None
            return None if changed else record
    except Exception:  # noqa: BLE001 — any unreadable image is just a file
        return None


class CannotReproduce(Exception):
    """A --byte-exact image whose original bytes this machine's encoder does not give back."""


def check_reproduced(record: ImageRecord, digest: str) -> None:
    """With --byte-exact, the bytes written must be the original's."""
    if record.sha256 and digest != record.sha256:
        raise CannotReproduce("the image encoder here does not reproduce its exact bytes (the pixels are intact)")


def write_image(path: Path, record: ImageRecord) -> None:
    """Write the image straight to its file as Pillow encodes it (no copy of the file in memory);
    a --byte-exact mismatch leaves no file behind."""
    try:
        with open(path, "wb") as handle:
            digest, _ = save_picture(record_picture(record), record, handle)
        check_reproduced(record, digest)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
