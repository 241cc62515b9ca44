"""Typed chunks (container/records.py): one class per chunk kind, a registry everyone reads
through, and the same bytes as every release before them."""
from __future__ import annotations

import ast
import json
import lzma
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import subprocess_env
from crafting import deflate
from test_golden import GOLDEN

from osoa_zip.container.format import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    OversizedEntry,
    canonical_json,
)
from osoa_zip.container.records import (
    CHUNK_KINDS,
    CODEC_STORE,
    CODEC_XZ,
    KNOWN_TAGS,
    Batch,
    Chunk,
    Data,
    Directory,
    FileEntry,
    Header,
    ImageEntry,
    ImageTable,
    MalformedChunk,
    Statistics,
    Symlink,
    chunk_kind,
    parse_chunk,
)
from osoa_zip.exact.grid import ENGINES

PACKAGE = Path(__file__).parent.parent / "osoa_zip"

ARCHIVES = sorted(GOLDEN.glob("format-1.*.osoa"))


@pytest.mark.parametrize("path", ARCHIVES, ids=lambda path: path.name)
def test_every_golden_chunk_reads_and_writes_back_the_same(path):
    """Each chunk parses with its registered kind and its writer gives back its payload: the typed
    records describe the bytes of every format version, they do not change them."""
    reader = ArchiveReader(path.open("rb"))
    for tag, payload in reader.chunks():
        chunk = Header.parse(payload, reader.version) if tag == Header.TAG else parse_chunk(tag, payload)
        assert type(chunk).TAG == tag
        if isinstance(chunk, ImageTable):  # xz: compare what it holds (the encoder may differ by version)
            assert [image.to_json() for image in chunk.images] == json.loads(lzma.decompress(payload))
            assert ImageTable.parse(chunk.payload()) == chunk
        elif isinstance(chunk, Header) and chunk.layout >= (1, 6):  # deflated: compare what it says, too
            assert zlib.decompress(chunk.payload(), -15) == zlib.decompress(payload, -15)
            assert Header.parse(chunk.payload(), reader.version) == chunk
        else:
            assert chunk.payload() == payload


def test_the_registry_knows_every_kind_by_its_tag():
    assert KNOWN_TAGS == frozenset(CHUNK_KINDS)
    assert {tag.decode() for tag in KNOWN_TAGS} == {"HEAD", "DIRE", "LINK", "HARD", "FILE", "DATA", "IMGS", "ALPH",
                                                     "PIDX", "BATC", "STAT", "BLCK", "BDAT"}
    assert {kind.TAG for kind in CHUNK_KINDS.values() if kind.SINCE == (1, 5)} == {b"BLCK", b"BDAT"}
    for tag, kind in CHUNK_KINDS.items():
        assert kind.TAG == tag and kind.ROLE in ("header", "entry", "part", "statistics")
    assert {kind.TAG for kind in CHUNK_KINDS.values() if kind.MODEL_STATE} == {b"IMGS", b"BATC"}


def test_a_new_chunk_kind_is_one_class():
    """What a solid block (or any later kind) needs: declare it, and the registry, the framing and
    the salvaging reader's known tags (KNOWN_TAGS is taken per archive) all know it."""
    @chunk_kind
    class Example(Chunk):
        TAG = b"EXMP"
        ROLE = "part"

        def __init__(self, data: bytes) -> None:
            self.data = data

        def payload(self) -> bytes:
            return self.data

        @classmethod
        def parse(cls, payload: bytes):
            return cls(payload)

    try:
        assert parse_chunk(b"EXMP", b"abc").data == b"abc"
        with pytest.raises(ValueError):
            chunk_kind(Example)  # one class per tag
    finally:
        del CHUNK_KINDS[b"EXMP"]
    with pytest.raises(ArchiveError, match="unexpected chunk"):
        parse_chunk(b"EXMP", b"abc")


def test_names_that_are_not_utf8_travel_as_bytes():
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")
    entry = Directory(name, 0o755, 12)
    assert json.loads(entry.payload()) == {"path_b64": "Y2Fm6S50eHQ=", "mode": 0o755, "mtime_ns": 12}
    assert Directory.parse(entry.payload()) == entry


def test_image_entries_leave_empty_optional_fields_out():
    image = ImageEntry("a.png", 0o644, 5, 2, 3, "P", "PNG", palette=b"\x00\x01\x02")
    assert image.to_json() == {"path": "a.png", "mode": 0o644, "mtime_ns": 5, "height": 2, "width": 3,
                               "image_mode": "P", "format": "PNG", "palette": "AAEC"}
    assert ImageTable.parse(ImageTable([image]).payload()).images == [image]


def test_data_is_xz_only_when_smaller():
    assert Data.packed(b"a" * 1000).codec == CODEC_XZ
    assert Data.packed(bytes(range(10))).codec == CODEC_STORE
    piece = Data.packed(b"hello " * 100)
    assert Data.parse(piece.payload()).content(1 << 20) == b"hello " * 100


@pytest.mark.parametrize("kind, payload", [
    (Directory, canonical_json({"mode": 1, "mtime_ns": 2})),                        # no name
    (Directory, canonical_json({"path": "a", "mode": "1", "mtime_ns": 2})),         # a string for a number
    (Directory, canonical_json({"path": "a", "mode": True, "mtime_ns": 2})),        # a bool for a number
    (Symlink, canonical_json({"path": 3, "target": "b"})),
    (Symlink, canonical_json({"path_b64": "not base64!", "target": "b"})),
    (FileEntry, canonical_json({"path_b64": "\x80", "mode": 1, "mtime_ns": 2, "size": 0, "chunks": 0})),
    (FileEntry, canonical_json({"path": "a", "mode": 1, "mtime_ns": 2, "size": -1, "chunks": 0})),
    (FileEntry, canonical_json([{"path": "a"}])),
    (Header, deflate(canonical_json({"model": {"name": "m"}, "engine": {"version": 1}, "adaptation": {}}))),
    (Statistics, canonical_json({"batches": [[1, 2]]})),
    (Statistics, canonical_json({"batches": [[1, 2, "3"]]})),
    (Data, b""),
    (Data, b"\x07abc"),
    (ImageTable, lzma.compress(canonical_json({"not": "a list"}))),
    (ImageTable, lzma.compress(canonical_json([{"path": "a", "mode": 1}]))),
    (ImageTable, b"not xz at all"),
    (ImageTable, lzma.compress(canonical_json([{"path": "a.png", "mode": 420, "mtime_ns": 1, "height": 1,
                                                "width": 1, "image_mode": "L", "format": "PNG",
                                                "png_before": "\u00e9"}]))),
], ids=["no-name", "string-mode", "bool-mode", "number-path", "bad-base64", "non-ascii-base64", "negative-size",
        "file-not-object", "model-without-hash", "short-batch", "string-flags", "empty-data", "unknown-codec",
        "table-not-list", "image-without-fields", "table-not-xz", "non-ascii-binary-field"])
def test_readers_refuse_what_no_writer_writes(kind, payload):
    with pytest.raises(MalformedChunk):
        kind.parse(payload)


def test_batch_flags():
    assert Batch(b"\x05abcd").flags == 5 and Batch(b"").flags == 0


def test_tags_appear_only_in_the_container():
    """No chunk tag is spelt out as bytes anywhere in the package but container/."""
    tags = {tag for tag in KNOWN_TAGS} | {b"END "}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "container":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in tags:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


def test_the_container_imports_neither_torch_nor_pillow():
    code = ("import sys, osoa_zip.container.records, osoa_zip.reading; "
            "print(sorted(m for m in ('torch', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_written_chunks_are_framed_by_their_tag():
    import io
    output = io.BytesIO()
    writer = ArchiveWriter(output)
    Symlink("a", "b").write(writer)
    writer.close()
    ((tag, payload),) = list(ArchiveReader(io.BytesIO(output.getvalue())).chunks())
    assert tag == Symlink.TAG and Symlink.parse(payload) == Symlink("a", "b")


# -- HEAD: the engine's whole record up to 1.5, named by version (deflated) since 1.6 --------

MODEL = {"name": "m", "sha256": "0" * 64, "family": "flow"}
ADAPTATION = {"adapt": True, "learning_rate": 0.0003}


@pytest.mark.parametrize("version", sorted(ENGINES))
def test_a_header_is_spelt_as_its_format_spells_it(version):
    """1.5: the whole record, plain JSON, as every release wrote it; 1.6: deflated, the engine
    named by version; both read back to the same header, the engine's whole record."""
    older = Header("osoa-zip x", MODEL, ENGINES[version], ADAPTATION, (1, 5))
    assert json.loads(older.payload())["engine"] == ENGINES[version]
    newer = Header("osoa-zip x", MODEL, ENGINES[version], ADAPTATION, (1, 6))
    assert json.loads(zlib.decompress(newer.payload(), -15)) == {**newer.to_json(), "engine": {"version": version}}
    assert len(newer.payload()) < len(older.payload()) // 2
    assert Header.parse(older.payload(), (1, 5)).to_json() == Header.parse(newer.payload(), (1, 6)).to_json()
    assert Header.parse(newer.payload()) == newer  # by default, the format this release writes
    assert Header("c", MODEL, ENGINES[version], ADAPTATION).layout == (FORMAT_MAJOR, FORMAT_MINOR)


def test_only_a_shipped_engine_is_named_by_its_version():
    with pytest.raises(ValueError, match="shipped engine"):
        Header("c", MODEL, dict(ENGINES[2], leaky_shift=4), ADAPTATION, (1, 6)).payload()


def _header_1_6(**changes) -> bytes:
    return deflate(canonical_json({"creator": "c", "model": MODEL, "engine": {"version": 2},
                                     "adaptation": ADAPTATION, **changes}))


@pytest.mark.parametrize("payload, error, match", [
    (_header_1_6(engine={"version": 3}), ArchiveError, "numeric engine v3, which this version cannot replay"),
    (_header_1_6(engine={"version": "2"}), MalformedChunk, "by its version alone"),
    (_header_1_6(engine={"version": 2, "name": "exact-integer"}), MalformedChunk, "by its version alone"),
    (_header_1_6(engine=ENGINES[2]), MalformedChunk, "by its version alone"),
    (_header_1_6(engine={}), MalformedChunk, "by its version alone"),
    (_header_1_6(engine=2), MalformedChunk, "'engine' is not a dict"),
    (canonical_json({"creator": "c", "model": MODEL, "engine": {"version": 2}, "adaptation": {}}), MalformedChunk,
     "damaged"),
    (_header_1_6() + b"\x00", MalformedChunk, "followed by other bytes"),
    (_header_1_6()[:-3], MalformedChunk, "truncated"),
    (deflate(b" " * (1 << 20) + b"{}"), OversizedEntry, "more than 65536 bytes"),
    (deflate(b"[1, 2]"), MalformedChunk, "not a JSON object"),
], ids=["unknown-version", "version-as-text", "version-and-name", "whole-record", "empty", "not-an-object",
        "not-deflated", "trailing-bytes", "truncated", "bomb", "not-an-object-at-all"])
def test_a_1_6_header_refuses_what_no_writer_writes(payload, error, match):
    with pytest.raises(error, match=match) as caught:
        Header.parse(payload, (1, 6))
    assert "\n" not in str(caught.value)


def test_a_1_5_header_may_not_name_its_engine_by_version():
    payload = canonical_json({"creator": "c", "model": MODEL, "engine": {"version": 2}, "adaptation": {}})
    with pytest.raises(MalformedChunk, match="damaged or forged"):
        Header.parse(payload, (1, 5))
    assert Header.parse(canonical_json({"creator": "c", "model": MODEL, "engine": {"name": "future", "version": 9},
                                        "adaptation": {}}), (1, 5)).engine["version"] == 9  # unpack.py refuses it
