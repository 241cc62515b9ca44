"""glibc's heap for a process that codes batch after batch: the command line's and its worker's.

Why: a batch allocates and frees the same large tensors every time (a conv's im2col patches:
7 MB for 32 tiles of 32 x 32 with two input limbs; float64 outputs of a few MB).  glibc maps
blocks above its mmap threshold on their own, and hands the top of its heap back to the
system once more than its trim threshold lies free there (both self-adjusting, to the
largest block freed so far and twice that).  Either way the next batch's tensors landed on
fresh pages, which the kernel zeroes on first touch: 1000-2000 page faults a batch of
data/speed/tiles32_2048 in the command's process, 2-5 ms of system time.  With blocks up to
MMAP_THRESHOLD taken from the heap and up to TRIM_THRESHOLD of it kept free, ~100 faults a
batch, and about the same peak memory (docs/PERFORMANCE.md, "The collector, numpy's threads
and the heap").  Larger blocks (a large image's) are still mapped on their own, and ``trim``
gives a large image's freed heap back (imaging/io.give_back_memory).  Nothing here changes a
byte of output; where the C library is not glibc, or the user set glibc's MALLOC_* variables,
the heap is left as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the self-adjusting threshold
TRIM_THRESHOLD = 128 << 20
# mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, TypeError):
        return None


_LIBC = _glibc()


def keep_freed_blocks() -> bool:
    """Take blocks up to MMAP_THRESHOLD from the heap and keep up to TRIM_THRESHOLD of it free,
    for the rest of the process.  Whether the settings were made."""
    if _LIBC is None or any(name in os.environ for name in _USER_SETTINGS):
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        _LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def trim() -> None:
    """Hand the heap's free memory back to the system now (glibc's malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
