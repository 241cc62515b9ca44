"""Today's encoder writes the bytes it wrote before: one pinned archive per model family.

test_golden.py proves that old archives still *decode*; this proves that the
encoder still *writes* the same archive, so that a refactor of the engine, a
model family or the coders cannot change the bytes unnoticed.  The folder is
format 1.0's golden source.  The tiny VAEs' archives are compared with their
format-1.4 golden archives (written by release 1.6's encoder) chunk by chunk, but
for the files off the model path (format 1.5 put them in solid blocks), and so
is the engine-2 archive (a faster kernel or a fused integer pass must not
change one integer);
the flows', which have no golden archive of the current format, with pinned
digests.  Format 1.6's archives (tests/golden/format_1_6.py, one per engine) are
written again chunk for chunk, solid blocks included.  HEAD is compared by what
it says (the engine's whole record, whether the format spelt it out or named it
by version), without its ``creator`` (the writer's version).  A deliberate change of the bytes (a new format version or
engine) updates the digests in the same commit.
"""
from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import pytest

from osoa_zip import compress
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.container.format import ArchiveReader, canonical_json
from osoa_zip.container.records import BlockData, Data, FileEntry, Header, SolidBlock

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import engine_2  # noqa: E402
import format_1_0  # noqa: E402
import format_1_4  # noqa: E402
import format_1_6  # noqa: E402

WRITTEN_GIVE_UP_AFTER = 8  # the default give_up_after when the archives below were written
WRITTEN_BATCH_PIXELS = 16384  # the default batch_pixels then (32768 from release 1.19.0)
# model -> (adaptation settings, SHA-256 of the archive's chunks without the creator)
PINNED = {
    "idf-tiny-test": ({"tile_size": 8, "batch_size": 2, "learning_rate": 0.3, "segment_batches": 3},
                      "59ea625d5a44edb5c3aead7a1f9d2c3235adb7517d21ad31c6cfee1ac957d234"),
    "idf-sublattice-v6": ({"tile_size": 16, "batch_size": 2},
                          "831e045594ce65552474252cc396604c670964f7b6151a0bc98d6a8ef07f77b5"),
    "vae-hier-tiny-test": (format_1_4.ARCHIVES["format-1.4-vae-hier-tiny-test.osoa"][1],
                           "8aa46d8a406553a36b589e64ffcd103e1830776e3477fc1b9f90423321697911"),
}
# name -> (model, settings) of the golden archives written again: the tiny models' (fast).
REBUILT = {name: {**format_1_4.ARCHIVES, **engine_2.ARCHIVES}[name]
           for name in ("format-1.4-vae-tiny-test.osoa", "format-1.4-vae-hier-tiny-test.osoa",
                        "format-1.5-engine-2-idf-tiny-test-e2.osoa")}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return format_1_0.build_source(tmp_path_factory.mktemp("rebuild") / "source")


def _chunks(archive: bytes, skip: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """Every chunk (but those with a tag in ``skip``); the header as what it says (whatever format
    spelt it: the engine's whole record, canonical JSON), without its ``creator``."""
    chunks = []
    reader = ArchiveReader(io.BytesIO(archive))
    for tag, payload in reader.chunks():
        if tag in skip:
            continue
        if tag == Header.TAG:
            header = Header.parse(payload, reader.version).to_json()
            header.pop("creator")
            payload = canonical_json(header)
        chunks.append((tag, payload))
    return chunks


def _digest(chunks: list[tuple[bytes, bytes]]) -> str:
    digest = hashlib.sha256()
    for tag, payload in chunks:
        digest.update(tag + len(payload).to_bytes(8, "little") + payload)
    return digest.hexdigest()


def _compress(source: Path, model: str, settings: dict) -> bytes:
    """Every image the model can take is coded (triage=False, as every writer before 1.8 did):
    this pins the coding; which images triage sends to the model is test_triage.py's."""
    output = io.BytesIO()
    # They were written while the default gave up after 8 lost comparisons (4 after release 1.11.0)
    # and batched small tiles by 16384 pixels (32768 from 1.19.0); the header records both, so
    # the decoder is the same either way.
    settings = {"give_up_after": WRITTEN_GIVE_UP_AFTER, "batch_pixels": WRITTEN_BATCH_PIXELS, **settings}
    compress([source], output, model=model, adaptation=AdaptationConfig(**settings), triage=False)
    return output.getvalue()


# Format 1.5 moved the files off the model path into solid blocks; everything else is 1.4's bytes.
GENERAL_FILES = frozenset({FileEntry.TAG, Data.TAG, SolidBlock.TAG, BlockData.TAG})


@pytest.mark.parametrize("name", sorted(REBUILT))
def test_the_encoder_rebuilds_the_golden_archives(name, source):
    model, settings = REBUILT[name]
    rebuilt = _compress(source, model, settings)
    assert _chunks(rebuilt, GENERAL_FILES) == _chunks((GOLDEN / name).read_bytes(), GENERAL_FILES)


@pytest.mark.parametrize("name", sorted(format_1_6.ARCHIVES))
def test_the_encoder_rebuilds_the_format_1_6_golden_archives(name, source):
    """Today's format: every chunk again, the solid blocks too; HEAD by what it says (its bytes
    hold the writer's version, deflated)."""
    model, settings = format_1_6.ARCHIVES[name]
    assert _chunks(_compress(source, model, settings)) == _chunks((GOLDEN / name).read_bytes())


@pytest.mark.parametrize("model", sorted(PINNED))
def test_the_encoder_writes_the_pinned_bytes_of_each_family(model, source):
    settings, expected = PINNED[model]
    assert _digest(_chunks(_compress(source, model, settings))) == expected
