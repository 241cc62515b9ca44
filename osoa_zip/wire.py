"""Messages between osoa-zip's own processes: a JSON header and raw arrays, never pickle.

The worker that takes half of each batch (adapt/parts.py) and the child that reads small files
while compress imports torch (read_process.py) both hand their results over in this one
format: a 4-byte length, the JSON header (with each array's dtype and shape added), then the
arrays' bytes, C order.  Unpacked arrays are views of the message (writable if it is a
``bytearray``).
"""
from __future__ import annotations

import json

import numpy as np


def pack_message(header: dict, arrays: list[np.ndarray]) -> bytes:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    head = json.dumps({**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}).encode()
    return len(head).to_bytes(4, "little") + head + b"".join(a.tobytes() for a in arrays)


def unpack_message(message: bytes | bytearray) -> tuple[dict, list[np.ndarray]]:
    length = int.from_bytes(message[:4], "little")
    header = json.loads(message[4:4 + length])
    at, arrays = 4 + length, []
    for dtype, shape in header.pop("arrays"):
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        arrays.append(np.frombuffer(message, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                    offset=at).reshape(shape))
        at += size
    return header, arrays
