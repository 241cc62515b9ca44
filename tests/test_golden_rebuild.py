"""Today's encoder writes the bytes it wrote before: one pinned archive per model family.

test_golden.py proves that old archives still *decode*; this proves that the
encoder still *writes* the same archive, so that a refactor of the engine, a
model family or the coders cannot change the bytes unnoticed.  The folder is
format 1.0's golden source.  The tiny VAEs' archives are compared with their
format-1.4 golden archives (written by release 1.6's encoder) chunk by chunk;
the flows', which have no golden archive of the current format, with pinned
digests.  Only the header's ``creator`` (the writer's version) is left out of
the comparison.  A deliberate change of the bytes (a new format version or
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
from osoa_zip.container.format import ArchiveReader, canonical_json, read_json

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import format_1_0  # noqa: E402
import format_1_4  # noqa: E402

# model -> (adaptation settings, SHA-256 of the archive's chunks without the creator)
PINNED = {
    "idf-tiny-test": ({"tile_size": 8, "batch_size": 2, "learning_rate": 0.3, "segment_batches": 3},
                      "73c567c1da653fb3331525fb83b28ed2c164c06af7fe41ad7ebd15b050993858"),
    "idf-sublattice-v6": ({"tile_size": 16, "batch_size": 2},
                          "b4c897fcb8e3e34886cccbdaa76b887a29405b6e20af6641cc1c566c9fd48329"),
    "vae-hier-tiny-test": (format_1_4.ARCHIVES["format-1.4-vae-hier-tiny-test.osoa"][1],
                           "ad94c368d7564f5e282019d862e22ef5b258dc738b6c1cb61eb40fc51a621f3d"),
}
REBUILT = ["format-1.4-vae-tiny-test.osoa", "format-1.4-vae-hier-tiny-test.osoa"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return format_1_0.build_source(tmp_path_factory.mktemp("rebuild") / "source")


def _chunks(archive: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk, the header without its ``creator``."""
    chunks = []
    for tag, payload in ArchiveReader(io.BytesIO(archive)).chunks():
        if tag == b"HEAD":
            header = read_json(payload, "the header")
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
    compress([source], output, model=model, adaptation=AdaptationConfig(**settings), triage=False)
    return output.getvalue()


@pytest.mark.parametrize("name", REBUILT)
def test_the_encoder_rebuilds_the_golden_vae_archives(name, source):
    model, settings = format_1_4.ARCHIVES[name]
    assert _chunks(_compress(source, model, settings)) == _chunks((GOLDEN / name).read_bytes())


@pytest.mark.parametrize("model", sorted(PINNED))
def test_the_encoder_writes_the_pinned_bytes_of_each_family(model, source):
    settings, expected = PINNED[model]
    assert _digest(_chunks(_compress(source, model, settings))) == expected
