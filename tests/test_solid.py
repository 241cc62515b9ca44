"""Solid blocks (format 1.5): files off the model path, sorted by type, many to one xz stream.

Round trips of mixed folders, the own-stream rule, damage that stays inside one block
(--salvage), partial extraction that decodes only the blocks it needs, hostile block
indexes (one-line errors, nothing written), and streaming through pipes.
"""
from __future__ import annotations

import io
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL, assert_same_tree, subprocess_env
from crafting import Crafted
from PIL import Image
from test_container import chunk_offsets

from osoa_zip import compress, decompress, test_archive
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.archive import extract_entry
from osoa_zip.container.format import ArchiveError, ArchiveWriter, OversizedEntry, canonical_json
from osoa_zip.container.records import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_FILES,
    BlockData,
    FileEntry,
    MalformedChunk,
    SolidBlock,
)
from osoa_zip.files.restore import RefusedEntries
from osoa_zip.files.scan import FILE, Entry
from osoa_zip.solid import (
    OWN_STREAM_MIN,
    BlockCoder,
    FileChanged,
    code_block,
    plan_blocks,
    solid_order,
    write_block,
    write_coded,
)
from osoa_zip.table import read_overview

CONFIG = AdaptationConfig(tile_size=16, batch_size=4)
BLOCK = 4096  # small blocks, so that a small folder makes several


def _text(seed: int, lines: int) -> str:
    rng = np.random.default_rng(seed)
    words = ["solid", "block", "archive", "stream", "osoa", "zip", "file", "bytes", "index", "damage"]
    return "".join(" ".join(rng.choice(words, 8)) + "\n" for _ in range(lines))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Many small files of a few types, empty files, odd modes, a file larger than a block
    and a large incompressible one."""
    root = tmp_path_factory.mktemp("solid") / "src"
    for folder in ("docs", "code", "data/deep"):
        (root / folder).mkdir(parents=True)
    for number in range(12):
        (root / "docs" / f"note_{number:02d}.txt").write_text(_text(number, 20))
        (root / "code" / f"module_{number:02d}.py").write_text(f"VALUE = {number}\n" + _text(100 + number, 10))
    for number in range(3):
        (root / "data" / f"table_{number}.csv").write_text("a,b,c\n" + "".join(f"{i},{i * i},{number}\n"
                                                                              for i in range(200)))
    (root / "data" / "empty_one").write_bytes(b"")
    (root / "data" / "deep" / "empty_two.txt").write_bytes(b"")
    (root / "data" / "deep" / "larger_than_a_block.log").write_text(_text(7, 400))
    (root / "data" / "random.bin").write_bytes(np.random.default_rng(5).bytes(OWN_STREAM_MIN + 1000))
    (root / "data" / "small_random.bin").write_bytes(np.random.default_rng(6).bytes(700))
    os.chmod(root / "code" / "module_03.py", 0o755)
    os.chmod(root / "docs" / "note_05.txt", 0o600)
    return root


def _compress(source: Path, block_size: int = BLOCK, **options) -> bytes:
    output = io.BytesIO()
    compress([source], output, model=MODEL, adaptation=CONFIG, block_size=block_size, **options)
    return output.getvalue()


@pytest.fixture(scope="module")
def archive(source) -> bytes:
    return _compress(source)


def _blocks(data: bytes) -> list[SolidBlock]:
    return [SolidBlock.parse(payload) for tag, payload in Crafted.parse(data).chunks if tag == SolidBlock.TAG]


def _save(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


def test_mixed_folder_round_trips_through_several_blocks(source, archive, tmp_path):
    blocks = _blocks(archive)
    assert len(blocks) >= 4
    assert all(block.size <= BLOCK for block in blocks)
    in_blocks = [member.name for block in blocks for member in block.files]
    own = [FileEntry.parse(payload).name for tag, payload in Crafted.parse(archive).chunks if tag == FileEntry.TAG]
    assert sorted(own) == ["data/deep/larger_than_a_block.log", "data/random.bin"]
    assert "data/empty_one" in in_blocks and "data/small_random.bin" in in_blocks
    assert len(in_blocks) + len(own) == sum(1 for path in source.rglob("*") if path.is_file())
    destination = tmp_path / "restored"
    summary = decompress(io.BytesIO(archive), destination)
    assert summary.blocks == len(blocks)
    assert_same_tree(source, destination)  # bytes, modes and times
    assert (destination / "code" / "module_03.py").stat().st_mode & 0o777 == 0o755
    assert (destination / "docs" / "note_05.txt").stat().st_mode & 0o777 == 0o600
    assert test_archive(io.BytesIO(archive)).blocks == len(blocks)


def test_blocks_hold_files_sorted_by_type(archive):
    names = [member.name for block in _blocks(archive) for member in block.files]
    extensions = [os.path.splitext(name)[1] for name in names]
    assert extensions == sorted(extensions)  # "", .bin, .csv, .py, .txt
    assert names == sorted(names, key=lambda name: (os.path.splitext(name)[1], name))


def test_plan_blocks_keeps_each_block_within_its_size():
    entries = [Entry(FILE, f"f{i}.{'txt' if i % 2 else 'bin'}", Path("/dev/null"), 0o644, 0, size)
               for i, size in enumerate([10, 3000, 2000, 0, 4096, 1, 1500, 2600])]
    blocks = plan_blocks(entries, 4096)
    assert [entry for block in blocks for entry in block] == sorted(entries, key=solid_order)
    assert all(sum(entry.size for entry in block) <= 4096 for block in blocks)
    assert all(block for block in blocks)
    many = [Entry(FILE, f"e{i}", Path("/dev/null"), 0o644, 0) for i in range(MAX_BLOCK_FILES + 1)]
    assert [len(block) for block in plan_blocks(many, 4096)] == [MAX_BLOCK_FILES, 1]


def test_list_and_info_show_the_blocks(archive):
    overview = read_overview(io.BytesIO(archive))
    methods = {entry.name: entry.method for entry in overview.entries}
    assert methods["docs/note_00.txt"] == "solid" and methods["data/random.bin"] == "store"
    assert overview.totals()["solid_blocks"] == len(_blocks(archive))
    coded = sum(entry.coded_bytes for entry in overview.entries if entry.method == "solid")
    assert 0 < coded < len(archive)


def _entries(root: Path) -> list[Entry]:
    return [Entry(FILE, path.relative_to(root).as_posix(), path, 0o644, 0, path.stat().st_size)
            for path in sorted(root.rglob("*")) if path.is_file()]


def _written(write) -> bytes:
    output = io.BytesIO()
    write(ArchiveWriter(output))
    return output.getvalue()


def test_blocks_coded_ahead_are_the_blocks_written_at_once(source):
    """BlockCoder codes each block on its helper thread exactly as write_block does, stored
    blocks (xz would not shrink them) included."""
    plans = plan_blocks(_entries(source), BLOCK)
    stored = [members for members in plans if [entry.name for entry in members] == ["data/random.bin"]]
    assert len(plans) > 3 and len(stored) == 1 and code_block(stored[0]).stream is None

    def at_once(writer):
        for members in plans:
            write_block(writer, members)

    def ahead(writer):
        with BlockCoder(plans) as coder:
            for block in coder:
                write_coded(writer, block)

    assert _written(ahead) == _written(at_once)


def test_a_block_coder_closed_early_stops_its_thread(source):
    import threading
    coder = BlockCoder(plan_blocks(_entries(source), BLOCK))
    first = next(iter(coder))
    first.close()
    coder.close()
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("osoa-solid")]


def test_a_file_that_changed_before_its_block_is_coded_ahead_is_reported(tmp_path):
    (tmp_path / "a.txt").write_text("grown since it was scanned\n")
    entry = Entry(FILE, "a.txt", tmp_path / "a.txt", 0o644, 0, 5)
    with BlockCoder([[entry]]) as coder, pytest.raises(FileChanged, match="grew"):
        list(coder)


def test_files_a_group_sends_back_after_the_blocks_started_get_blocks_of_their_own(tmp_path):
    """Without triage, a group of noise images codes larger than its files and is stored as
    files: after the blocks of the other files were started, so in a block after them."""
    root = tmp_path / "src"
    root.mkdir()
    rng = np.random.default_rng(3)
    for number in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"noise_{number}.png")
    (root / "notes.txt").write_text(_text(1, 30))
    output = io.BytesIO()
    summary = compress([root], output, model=MODEL, adaptation=CONFIG, triage=False)
    blocks = _blocks(output.getvalue())
    assert [[member.name for member in block.files] for block in blocks] == [
        ["notes.txt"], ["noise_0.png", "noise_1.png", "noise_2.png"]]
    assert summary.images == 0 and summary.blocks == 2
    decompress(io.BytesIO(output.getvalue()), tmp_path / "out")
    assert_same_tree(root, tmp_path / "out")


def test_block_size_zero_gives_every_file_its_own_stream(source):
    data = _compress(source, block_size=0)
    assert _blocks(data) == []
    assert sum(tag == FileEntry.TAG for tag in Crafted.parse(data).tags) == sum(
        1 for path in source.rglob("*") if path.is_file())


def test_one_solid_stream_beats_a_stream_per_file(source):
    """What blocks are for: the similar small files share one dictionary."""
    texts = source / "docs"
    assert len(_compress(texts, block_size=1 << 20)) < 0.8 * len(_compress(texts, block_size=0))


# -- damage and --salvage ------------------------------------------------------------------

def _block_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    return [chunk for chunk in chunk_offsets(data) if chunk[1] in (SolidBlock.TAG, BlockData.TAG)]


def _flip_in(data: bytes, tag: bytes, which: int, where: int = 40) -> bytes:
    offset, _, length = [chunk for chunk in chunk_offsets(data) if chunk[1] == tag][which]
    damaged = bytearray(data)
    damaged[offset + 12 + min(where, length - 1)] ^= 0x55
    return bytes(damaged)


def _files_of(block: SolidBlock) -> set[str]:
    return {member.name for member in block.files}


@pytest.mark.parametrize("tag", [BlockData.TAG, SolidBlock.TAG], ids=["data", "index"])
def test_damage_loses_only_its_block(source, archive, tmp_path, tag):
    blocks = _blocks(archive)
    damaged = _flip_in(archive, tag, which=1)
    with pytest.raises(ArchiveError, match="damaged"):
        decompress(io.BytesIO(damaged), tmp_path / "strict")
    assert not (tmp_path / "strict").exists()

    with open(_save(damaged, tmp_path / "damaged.osoa"), "rb") as handle:
        summary = decompress(handle, tmp_path / "out", salvage=True)
    assert summary.damage
    restored = {path.relative_to(tmp_path / "out").as_posix() for path in (tmp_path / "out").rglob("*")
                if path.is_file()}
    everything = {path.relative_to(source).as_posix() for path in source.rglob("*") if path.is_file()}
    lost = everything - restored
    assert lost and lost <= _files_of(blocks[1])
    for name in restored:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes(), name
    if tag == BlockData.TAG:  # the lost files are named
        assert {line.split(":")[0].strip("'") for line in summary.lost} == lost
    else:
        assert lost == _files_of(blocks[1]) and "solid block" in summary.lost[0]


def test_damage_inside_a_block_keeps_the_files_decoded_before_it(tmp_path):
    """A block of several data chunks: damage to the last loses the files from it on, not the first ones."""
    root = tmp_path / "src"
    root.mkdir()
    for number in range(4):  # incompressible, so every file fills its own data chunk (1 KiB here)
        (root / f"part_{number}.bin").write_bytes(np.random.default_rng(number).bytes(1000) * 1)
    import osoa_zip.solid as solid_module
    original = solid_module.DATA_CHUNK_BYTES
    solid_module.DATA_CHUNK_BYTES = 1000
    try:
        data = _compress(root, block_size=1 << 20)
    finally:
        solid_module.DATA_CHUNK_BYTES = original
    (block,) = _blocks(data)
    assert block.chunks == 4
    with open(_save(_flip_in(data, BlockData.TAG, which=2, where=10), tmp_path / "d.osoa"), "rb") as handle:
        summary = decompress(handle, tmp_path / "out", salvage=True)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["part_0.bin", "part_1.bin"]
    assert len(summary.lost) == 2


# -- partial extraction ----------------------------------------------------------------------

def _break_block_stream(data: bytes, which: int) -> bytes:
    """The which-th block's first data chunk with bytes changed inside its xz stream, re-framed
    with valid checksums: only decoding that block can notice."""
    crafted = Crafted.parse(data)
    positions = [i for i, tag in enumerate(crafted.tags) if tag == BlockData.TAG]
    starts = [i for i, tag in enumerate(crafted.tags) if tag == SolidBlock.TAG]
    index = next(i for i in positions if i > starts[which])
    tag, payload = crafted.chunks[index]
    broken = bytearray(payload)
    for offset in range(30, len(broken) - 20, 7):
        broken[offset] ^= 0xFF
    crafted.chunks[index] = (tag, bytes(broken))
    return crafted.build()


def test_partial_extraction_decodes_only_the_blocks_it_needs(archive, tmp_path):
    blocks = _blocks(archive)
    wanted = sorted(_files_of(blocks[2]))[0]
    with open(_save(archive, tmp_path / "a.osoa"), "rb") as handle:
        summary = decompress(handle, tmp_path / "out", patterns=[wanted])
    assert summary.blocks == 1 and summary.files == 1
    assert [path.relative_to(tmp_path / "out").as_posix() for path in (tmp_path / "out").rglob("*")
            if path.is_file()] == [wanted]


def test_partial_extraction_never_touches_a_broken_block(source, archive, tmp_path):
    """Another block's stream is broken under valid checksums: a full restore fails naming it,
    extracting a file of an intact block succeeds (that block alone is decoded)."""
    blocks = _blocks(archive)
    broken = _save(_break_block_stream(archive, 0), tmp_path / "broken.osoa")
    with open(broken, "rb") as handle, pytest.raises(ArchiveError, match="solid block 0"):
        decompress(handle, tmp_path / "full")
    assert not (tmp_path / "full").exists()
    wanted = sorted(_files_of(blocks[3]))[-1]
    with open(broken, "rb") as handle:
        decompress(handle, tmp_path / "out", patterns=[wanted])
    assert (tmp_path / "out" / wanted).read_bytes() == (source / wanted).read_bytes()
    output = io.BytesIO()
    with open(broken, "rb") as handle:
        assert extract_entry(handle, wanted, output).blocks == 1
    assert output.getvalue() == (source / wanted).read_bytes()
    with open(broken, "rb") as handle, pytest.raises(ArchiveError, match="solid block 0"):
        extract_entry(handle, sorted(_files_of(blocks[0]))[0], io.BytesIO())


def test_a_selected_hard_link_brings_its_file_from_its_block(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.txt").write_text(_text(1, 20))
    (root / "b.txt").write_text(_text(2, 20))
    os.link(root / "a.txt", root / "z_link")
    data = _compress(root, block_size=1500)
    assert len(_blocks(data)) == 2
    with open(_save(data, tmp_path / "a.osoa"), "rb") as handle:
        summary = decompress(handle, tmp_path / "out", patterns=["z_link"])
    assert summary.blocks == 1
    assert (tmp_path / "out" / "z_link").read_bytes() == (root / "a.txt").read_bytes()
    assert not (tmp_path / "out" / "b.txt").exists()


# -- hostile block indexes -------------------------------------------------------------------

def _with_index(data: bytes, change) -> bytes:
    """The first block's index changed by ``change`` (a function of its JSON), re-framed validly."""
    crafted = Crafted.parse(data)
    index = crafted.tags.index(SolidBlock.TAG)
    value = json.loads(crafted.chunks[index][1])
    change(value)
    crafted.chunks[index] = (SolidBlock.TAG, canonical_json(value))
    return crafted.build()


def _shift(key: str, amount: int, member: int = 1):
    def change(value):
        value["files"][member][key] += amount
    return change


def _set(key: str, new):
    def change(value):
        value[key] = new
    return change


HOSTILE = {
    "offset-past-end": (_shift("offset", 1 << 20), MalformedChunk),
    "overlapping-files": (_shift("offset", -1), MalformedChunk),
    "gap-between-files": (_shift("offset", 1), MalformedChunk),
    "file-larger-than-block": (_shift("size", 1 << 30, member=-1), MalformedChunk),
    "negative-size": (_shift("size", -(1 << 40), member=0), MalformedChunk),
    "no-files": (_set("files", []), MalformedChunk),
    "unknown-codec": (_set("codec", "zstd"), MalformedChunk),
    "more-chunks-than-written": (lambda value: value.update(chunks=value["chunks"] + 1), ArchiveError),
    "files-shorter-than-stream": (lambda value: (value["files"][-1].update(size=value["files"][-1]["size"] - 1),
                                                 value.update(size=value["size"] - 1)), ArchiveError),
    "files-longer-than-stream": (lambda value: (value["files"][-1].update(size=value["files"][-1]["size"] + 1),
                                                value.update(size=value["size"] + 1)), ArchiveError),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_block_index_is_refused_and_writes_nothing(archive, tmp_path, case):
    change, error = HOSTILE[case]
    data = _with_index(archive, change)
    with pytest.raises(error) as caught:
        decompress(io.BytesIO(data), tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ArchiveError):
        test_archive(io.BytesIO(data))


def test_a_block_over_the_size_limit_is_refused_and_the_rest_restored(source, archive, tmp_path):
    data = _with_index(archive, _set("size", MAX_BLOCK_BYTES + 1))
    with pytest.raises(OversizedEntry):
        SolidBlock.parse(Crafted.parse(data).chunks[Crafted.parse(data).tags.index(SolidBlock.TAG)][1])
    with pytest.raises(RefusedEntries, match="more than any writer writes"):
        decompress(io.BytesIO(data), tmp_path / "out")
    first = _files_of(_blocks(archive)[0])
    restored = {path.relative_to(tmp_path / "out").as_posix() for path in (tmp_path / "out").rglob("*")
                if path.is_file()}
    assert restored == {path.relative_to(source).as_posix() for path in source.rglob("*") if path.is_file()} - first


def test_a_block_that_decodes_to_far_more_than_declared_stops_early(archive, tmp_path):
    """A bomb: 256 MiB of zeros (~40 kB of xz) under an index declaring 10 bytes.  Refused after
    reading at most the declared bytes plus one."""
    bomb = lzma.compress(bytes(256 << 20), format=lzma.FORMAT_XZ)
    index = SolidBlock.parse(canonical_json({"codec": "xz", "size": 10, "chunks": 1, "files": [
        {"path": "bomb", "mode": 0o644, "mtime_ns": 0, "offset": 0, "size": 10}]}))
    crafted = Crafted.parse(archive)
    at = crafted.tags.index(SolidBlock.TAG)
    crafted.chunks.insert(at, (BlockData.TAG, bomb))
    crafted.chunks.insert(at, (SolidBlock.TAG, index.payload()))
    with pytest.raises(ArchiveError, match="more data than its files declare"):
        decompress(io.BytesIO(crafted.build()), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_block_in_an_older_format_is_refused(archive, tmp_path):
    """Format 1.4 had no solid blocks: an archive that says 1.4 and holds one is forged or damaged."""
    forged = Crafted.parse(archive).as_minor(4).build()
    assert forged[10:12] == (4).to_bytes(2, "little")
    with pytest.raises(ArchiveError, match="new in format 1.5"):
        decompress(io.BytesIO(forged), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_hostile_index_is_one_line_without_traceback(archive, tmp_path):
    path = _save(_with_index(archive, _shift("offset", -1)), tmp_path / "hostile.osoa")
    result = subprocess.run([sys.executable, "-m", "osoa_zip", "decompress", str(path), str(tmp_path / "out")],
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "overlaps another" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["../escape.txt", "/tmp/osoa-zip-solid-abs.txt", "docs/../../up.txt", "new\nline.txt",
                                 "code/module_00.py"], ids=["dotdot", "absolute", "inner-dotdot", "newline",
                                                            "duplicate"])
def test_unsafe_names_in_a_block_are_refused_alone(source, archive, tmp_path, bad):
    """A block member's name obeys the rules every entry does: that file is refused (its bytes are
    still decoded, so the block's later files come out right), the rest restored, nothing outside."""
    # the first file of the last block with several (after the .py files, so that the duplicate comes second)
    victim = next(block.files[0].name for block in reversed(_blocks(archive)) if len(block.files) > 1)
    assert victim.endswith(".txt")
    data = Crafted.parse(archive).edit(victim, path=bad).build()
    box = tmp_path / "box"
    box.mkdir()
    with pytest.raises(RefusedEntries) as caught:
        decompress(io.BytesIO(data), box / "dest")
    assert len(caught.value.reasons) == 1 and repr(bad) in caught.value.reasons[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["box"]
    assert sorted(path.name for path in box.iterdir()) == ["dest"]
    restored = {path.relative_to(box / "dest").as_posix() for path in (box / "dest").rglob("*") if path.is_file()}
    assert restored == {path.relative_to(source).as_posix() for path in source.rglob("*") if path.is_file()} - {victim}
    for name in restored:
        assert (box / "dest" / name).read_bytes() == (source / name).read_bytes(), name
    assert not Path("/tmp/osoa-zip-solid-abs.txt").exists()


# -- streaming -------------------------------------------------------------------------------

def test_blocks_stream_through_pipes(source, tmp_path):
    """compress to standard output and decompress from standard input, with several blocks."""
    environment = subprocess_env()
    packed = subprocess.run([sys.executable, "-m", "osoa_zip", "compress", "-q", "--model", MODEL,
                             "--block-size", "4K", str(source), "-"], capture_output=True, env=environment,
                            timeout=300)
    assert packed.returncode == 0, packed.stderr
    assert len(_blocks(packed.stdout)) >= 4
    unpacked = subprocess.run([sys.executable, "-m", "osoa_zip", "decompress", "-q", "-", str(tmp_path / "out")],
                              input=packed.stdout, capture_output=True, env=environment, timeout=300)
    assert unpacked.returncode == 0, unpacked.stderr
    assert_same_tree(source, tmp_path / "out")
