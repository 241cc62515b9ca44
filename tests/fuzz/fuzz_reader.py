"""Coverage-guided fuzzing of the archive reader with atheris (libFuzzer).

    pip install -e '.[fuzz]'
    python tests/fuzz/make_corpus.py                       # seed corpus (already committed)
    python tests/fuzz/fuzz_reader.py tests/fuzz/corpus -max_total_time=600

Each input is decompressed into a fresh folder and `test`ed; the contract in
tests/fuzzing.py (a correct decode, refused entries, or a one-line
ArchiveError with nothing left; never another exception, a hang, a write
outside DEST) turns any violation into a crash that libFuzzer saves as
crash-*.  Plain byte mutations almost never get past the CRCs, so the custom
mutator mostly works on the chunk structure: it mutates one chunk's payload
(image tables inside their xz), or swaps, duplicates or drops chunks, and
re-frames the result with valid CRCs and END digest.  Pass -only_ascii=0
(the default) and, to replay one input, its file name instead of a folder.
"""
from __future__ import annotations

import lzma
import os
import random
import struct
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["osoa_zip"]):
    import osoa_zip  # noqa: F401
    from osoa_zip.archive import decompress  # noqa: F401  (loads the decoder under instrumentation)

import torch  # noqa: E402
from crafting import frame  # noqa: E402
from fuzzing import check_decode  # noqa: E402

torch.set_num_threads(1)
WORK = Path(tempfile.mkdtemp(prefix="osoa-fuzz-"))
_counter = 0


def _lenient_chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """The chunks before END, read without checking CRCs (None unless framed like an archive)."""
    if len(data) < 12 or not data.startswith(b"OSOAZIP"):
        return None
    chunks, offset = [], 12
    while offset + 16 <= len(data):
        tag, length = struct.unpack_from("<4sQ", data, offset)
        if tag == b"END " or offset + 16 + length > len(data):
            break
        chunks.append((tag, data[offset + 12:offset + 12 + length]))
        offset += 16 + length
    return chunks or None


def _mutate_payload(tag: bytes, payload: bytes, max_size: int, seed: int) -> bytes:
    if tag == b"IMGS":
        try:
            table = lzma.decompress(payload)
        except lzma.LZMAError:
            return atheris.Mutate(payload, max_size)
        return lzma.compress(atheris.Mutate(table, max(len(table) * 2, 64)))
    return atheris.Mutate(payload, max(len(payload) * 2, 64))


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    chunks = _lenient_chunks(data)
    if chunks is None or rng.random() < 0.1:
        return atheris.Mutate(data, max_size)  # raw bytes: exercises the framing itself
    operation = rng.choice(["payload", "payload", "payload", "swap", "duplicate", "drop", "move"])
    i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
    if operation == "payload":
        chunks[i] = (chunks[i][0], _mutate_payload(chunks[i][0], chunks[i][1], max_size, seed))
    elif operation == "swap":
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif operation == "duplicate":
        chunks.insert(j, chunks[i])
    elif operation == "drop" and len(chunks) > 1:
        del chunks[i]
    elif operation == "move":
        chunks.insert(j, chunks.pop(i))
    return frame(chunks)[:max(max_size, 64)]


def test_one_input(data: bytes) -> None:
    global _counter
    _counter += 1
    check_decode(data, WORK / f"case{_counter}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
