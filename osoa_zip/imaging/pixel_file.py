"""Large images live in a temporary file, not in memory (docs/SECURITY.md, "How memory grows").

Pillow decodes and encodes whole images: its decoders write rows into an image's
memory and its encoders read them from there.  That memory may be a file mapped
with mmap (``Image.core.map_buffer``, what ``Image.frombuffer`` maps L, P and
RGBA buffers with; here also RGB and LA, in Pillow's own 4-byte layout), so a
large image is decoded straight into a temporary file, its tiles are read from
that file, and it is written back from such a file, each time by Pillow's own
codecs.  Nothing is re-implemented: the bytes written are Pillow's by
construction (``--byte-exact`` archives hold their SHA-256), for every format
and setting Pillow has.

Pages of a mapping that were touched count as the process's resident memory
until they are unmapped, so whatever walks a mapped image (Pillow reading a file
into it or writing one from it, tiles pasted into it) calls ``forget()`` as it
goes: MADV_DONTNEED on a shared file mapping only drops this process's view of
the pages; their contents stay in the file (the kernel's page cache, written
back to the temporary file's disk as needed) and come back on the next access.
Tiles and bands are read with ``os.pread``, which never maps them.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from typing import Iterator

import numpy as np
from PIL import Image

# Pillow's layout of a pixel: bytes per pixel, and where each of the mode's channels is.
LAYOUT = {"L": (1, (0,)), "P": (1, (0,)), "RGB": (4, (0, 1, 2)), "LA": (4, (0, 3)), "RGBA": (4, (0, 1, 2, 3))}
BAND_BYTES = 1 << 20  # bytes of the file read per band


class PixelFile:
    """One image's pixels in a temporary file, in Pillow's layout, mapped for Pillow."""

    def __init__(self, mode: str, width: int, height: int) -> None:
        self.mode, self.width, self.height = mode, width, height
        self.pixel_bytes, self.offsets = LAYOUT[mode]
        self.row_bytes = width * self.pixel_bytes
        size = self.row_bytes * height
        self.file = tempfile.TemporaryFile(prefix="osoa-zip-pixels-")
        try:
            if hasattr(os, "posix_fallocate"):
                # The disk is claimed now: a full disk is an OSError here, not a SIGBUS
                # when a page of a sparse file is first written through the mapping.
                os.posix_fallocate(self.file.fileno(), 0, size)
            else:
                self.file.truncate(size)
            self.map = mmap.mmap(self.file.fileno(), size)
        except OSError as error:
            self.file.close()
            raise OSError(error.errno, f"a temporary file of {size} bytes for a {width}x{height} {mode} image "
                                       f"in {tempfile.gettempdir()}: {error.strerror}") from None
        except BaseException:
            self.file.close()
            raise

    def core(self):
        """A Pillow core image whose rows are this file's (what Image.frombuffer makes, any mode)."""
        return Image.core.map_buffer(self.map, (self.width, self.height), "raw", 0, (self.mode, self.row_bytes, 1))

    def picture(self) -> Image.Image:
        """A new Pillow image over these pixels (no info, no palette: as Image.new makes it)."""
        return Image.new(self.mode, (0, 0))._new(self.core())

    def forget(self) -> None:
        """Unmap the pages touched so far (their contents stay in the file)."""
        if hasattr(self.map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self.map.madvise(mmap.MADV_DONTNEED)

    def _read_at(self, offset: int, length: int) -> bytes:
        if hasattr(os, "pread"):  # thread-safe, and never maps the pages
            return os.pread(self.file.fileno(), length, offset)
        return self.map[offset:offset + length]  # no pread (Windows): through the mapping

    def read(self, y: int, rows: int, x: int = 0, columns: int | None = None) -> np.ndarray:
        """rows x columns x pixel_bytes bytes of the file at (y, x)."""
        columns = self.width - x if columns is None else columns
        length = columns * self.pixel_bytes
        if columns == self.width:
            data = self._read_at(y * self.row_bytes, rows * length)
        else:
            start = y * self.row_bytes + x * self.pixel_bytes
            data = b"".join(self._read_at(start + k * self.row_bytes, length) for k in range(rows))
        return np.frombuffer(data, np.uint8).reshape(rows, columns, self.pixel_bytes)

    def write(self, offset: int, data: bytes) -> None:
        """Put bytes into the file at ``offset`` (through the file, not the mapping)."""
        self.file.seek(offset)
        self.file.write(data)
        self.file.flush()

    def view(self) -> "PixelView":
        """The pixels as the H x W x C array of the mode's channels (read on demand)."""
        return PixelView(self, self.offsets)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a Pillow image still maps it: unmapped when that image goes
            pass
        self.file.close()

    def __enter__(self) -> "PixelFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PixelView:
    """Some channels of a PixelFile, standing in for the H x W x C uint8 array they would be:
    ``shape`` and ``size`` as that array's, ``view[rows, columns]`` reads those pixels as
    an array (what tiles.gather cuts tiles with), ``channels(k)`` narrows the view,
    ``bands()`` reads it top to bottom, ``array()`` whole."""

    def __init__(self, source: PixelFile, offsets: tuple[int, ...]) -> None:
        self.source, self.offsets = source, offsets
        self.shape = (source.height, source.width, len(offsets))
        self.size = self.nbytes = source.height * source.width * len(offsets)

    def channels(self, selection: slice | int) -> "PixelView":
        chosen = self.offsets[selection]
        return PixelView(self.source, chosen if isinstance(chosen, tuple) else (chosen,))

    def _pick(self, raw: np.ndarray) -> np.ndarray:
        if self.offsets == tuple(range(raw.shape[2])):
            return raw
        return raw[:, :, self.offsets]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, columns = key
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = columns.indices(self.shape[1])
        return self._pick(self.source.read(y0, max(0, y1 - y0), x0, max(0, x1 - x0)))

    def bands(self) -> Iterator[np.ndarray]:
        """h x W x C arrays of about BAND_BYTES, top to bottom."""
        height = self.shape[0]
        step = max(1, BAND_BYTES // self.source.row_bytes)
        for y in range(0, height, step):
            yield np.ascontiguousarray(self._pick(self.source.read(y, min(step, height - y))))

    def array(self) -> np.ndarray:
        """The pixels read into memory."""
        return array_from_bands(self.bands(), self.shape)


def array_from_bands(bands: Iterator[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """An H x W x C uint8 array of its own, filled from h x W x C bands given top to bottom."""
    pixels, y = np.empty(shape, np.uint8), 0
    for band in bands:
        pixels[y:y + band.shape[0]] = band
        y += band.shape[0]
    return pixels
