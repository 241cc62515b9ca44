"""End to end: the `osoa-zip` command line (in subprocesses) and the Python API.

A folder must come back exactly (images pixel-identical, other files byte-
identical), with and without online adaptation, through files and pipes.
Errors must be one line, with the documented exit code (1 data, 2 usage), and
a damaged archive must leave nothing behind in the destination.
"""
from __future__ import annotations

import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import (
    BATCH_SIZE,
    EXAMPLES,
    GENERAL_PATH_IMAGES,
    MODEL,
    NON_IMAGE_FILES,
    TILE_SIZE,
    assert_same_tree,
    model_path_images,
    relative_files,
    subprocess_env,
)
from crafting import deflate, frame
from PIL import Image

from osoa_zip import pack as pack_module
from osoa_zip import unpack as unpack_module
from osoa_zip.adapt.engine import AdaptationConfig
from osoa_zip.archive import ArchiveError, ModelError, RefusedEntries, UsageError, compress, decompress
from osoa_zip.cli import main
from osoa_zip.container.format import ArchiveReader

# Every image the model can take is coded (no per-image triage): these tests are about the model path.
CODING = ["--model", MODEL, "--tile-size", str(TILE_SIZE), "--batch-size", str(BATCH_SIZE),
          "--batch-pixels", "0", "--every-image"]
API_CONFIG = AdaptationConfig(tile_size=TILE_SIZE, batch_size=BATCH_SIZE, batch_pixels=0)


def run_cli(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run `python -m osoa_zip.cli ARGS`; stdout stays bytes (archives), stderr is text."""
    result = subprocess.run([sys.executable, "-m", "osoa_zip.cli", *map(str, args)], input=stdin,
                            capture_output=True, env=subprocess_env(), timeout=300)
    result.stderr = result.stderr.decode("utf-8", "replace")
    return result


def invoke(*args):
    """Run the click command in this process (for the cheaper extra checks); same result fields."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an uncaught exception is what a traceback would show
    return SimpleNamespace(returncode=result.exit_code, stderr=result.stderr, stdout=result.stdout_bytes)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def assert_one_line_error(result: subprocess.CompletedProcess, code: int) -> None:
    """The documented error contract: exit code, one line on stderr, no traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("osoa-zip: error:"), result.stderr


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (with content) and directory below root."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def assert_left_nothing(destination: Path) -> None:
    """No restored files and no staging folders: the destination is gone or empty."""
    if destination.exists():
        assert sorted(p.name for p in destination.rglob("*")) == []


@pytest.fixture(scope="module")
def tree_archive(source_tree, tmp_path_factory) -> Path:
    """The fixture folder compressed by the CLI with online adaptation (read-only)."""
    archive = tmp_path_factory.mktemp("archives") / "tree.osz"
    result = run_cli("compress", source_tree, archive, *CODING)
    assert_ok(result)
    assert result.stderr == ""  # as with xz and tar: nothing on a stderr that is not a terminal
    return archive


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> bytes:
    """A cheap archive (two tiny images and two files) for tests that decode it many times."""
    source = tmp_path_factory.mktemp("small")
    with Image.open(EXAMPLES / "0007.png") as image:  # uncompressed, so the model path wins
        image.save(source / "gray.png", compress_level=0)
    with Image.open(EXAMPLES / "0001.png") as image:
        image.crop((0, 0, 9, 5)).save(source / "rgb_9x5.png", compress_level=0)
    (source / "a.txt").write_text("hello\n" * 30)
    (source / "b.bin").write_bytes(bytes(range(200)))
    output = io.BytesIO()
    compress([source], output, model=MODEL, adaptation=API_CONFIG, block_size=0,
             triage=False)  # FILE entries, which tests edit
    return output.getvalue()


# -- help --------------------------------------------------------------------

def test_module_help():
    """`python -m osoa_zip.cli --help` works and lists both commands."""
    result = run_cli("--help")
    assert_ok(result)
    assert b"compress" in result.stdout and b"decompress" in result.stdout


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_command_help(command):
    result = run_cli(command, "--help")
    assert_ok(result)
    assert b"Usage:" in result.stdout


# -- round trips -------------------------------------------------------------

def test_round_trip_with_adaptation(source_tree, tree_archive, tmp_path):
    """The main promise: the whole folder comes back, images pixel-identical, files byte-identical."""
    destination = tmp_path / "restored"
    result = run_cli("decompress", tree_archive, destination, "-v")
    assert_ok(result)
    assert "restored" in result.stderr  # the summary line, asked for
    assert_same_tree(source_tree, destination)


def test_round_trip_without_adaptation(source_tree, tree_archive, tmp_path):
    """--no-adapt codes with the frozen model; it must round-trip too (and differ from adapting)."""
    archive = tmp_path / "frozen.osz"
    assert_ok(run_cli("compress", source_tree, archive, *CODING, "--no-adapt", "-q"))
    assert archive.read_bytes() != tree_archive.read_bytes(), "--no-adapt changed nothing"
    destination = tmp_path / "restored"
    result = run_cli("decompress", archive, destination, "-q")
    assert_ok(result)
    assert result.stderr == ""  # -q: no summary
    assert_same_tree(source_tree, destination)


@pytest.fixture(scope="module")
def stdout_archive(source_tree) -> bytes:
    result = run_cli("compress", source_tree, "-", *CODING)
    assert_ok(result)
    return result.stdout


def test_archive_through_pipes(source_tree, stdout_archive, tmp_path):
    """'-' writes the archive to stdout and reads it from stdin; nothing else goes to stdout."""
    destination = tmp_path / "restored"
    result = run_cli("decompress", "-", destination, stdin=stdout_archive)
    assert_ok(result)
    assert result.stdout == b""
    assert_same_tree(source_tree, destination)


def test_identical_inputs_give_identical_archives(source_tree, tree_archive, stdout_archive, tmp_path):
    """Same files (same contents and metadata, in another place) -> same bytes, to a file or stdout."""
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(source_tree, moved)  # copy2 + copystat: contents, modes and times
    archive = tmp_path / "again.osz"
    assert_ok(run_cli("compress", moved, archive, *CODING, "-q"))
    assert archive.read_bytes() == tree_archive.read_bytes()
    assert stdout_archive == tree_archive.read_bytes()


def test_archive_file_permissions_follow_the_umask(tree_archive):
    """Archives are ordinary files for the user (not mkstemp's private 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    assert tree_archive.stat().st_mode & 0o777 == 0o666 & ~umask


# -- usage errors (exit 2) ---------------------------------------------------

def test_missing_source(tmp_path):
    archive = tmp_path / "out.osz"
    result = run_cli("compress", tmp_path / "no-such-folder", archive, *CODING)
    assert_one_line_error(result, 2)
    assert sorted(tmp_path.iterdir()) == []  # no archive, no temp file


def test_existing_archive_without_force(tmp_path):
    """An existing archive is never overwritten by accident."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("new content")
    archive = tmp_path / "out.osz"
    archive.write_bytes(b"precious")
    result = run_cli("compress", tmp_path / "src", archive, *CODING)
    assert_one_line_error(result, 2)
    assert archive.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.osz", "src"]


def test_existing_archive_with_force(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("new content")
    archive = tmp_path / "out.osz"
    archive.write_bytes(b"precious")
    assert_ok(run_cli("compress", tmp_path / "src", archive, *CODING, "-f", "-q"))
    destination = tmp_path / "restored"
    decompress(io.BytesIO(archive.read_bytes()), destination)
    assert_same_tree(tmp_path / "src", destination)


def test_odd_tile_size_is_a_usage_error(source_tree, tmp_path):
    result = invoke("compress", source_tree, tmp_path / "out.osz", "--model", MODEL, "--tile-size", "15")
    assert_one_line_error(result, 2)
    assert sorted(tmp_path.iterdir()) == []


def test_missing_archive_is_a_usage_error(tmp_path):
    result = invoke("decompress", tmp_path / "missing.osz", tmp_path / "out")
    assert_one_line_error(result, 2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["compress"], ["compress", "only-one-argument"], ["decompress", "x.osz"],
                                  ["compress", "--no-such-option", "a", "b"]], ids=["none", "one", "no-dest", "option"])
def test_malformed_command_lines_exit_2(args):
    """click's own usage errors use the same exit code as ours (2)."""
    result = invoke(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_existing_destination_file_without_force(source_tree, tree_archive, tmp_path):
    """Decompressing over a file that exists changes nothing at all (not even other files)."""
    destination = tmp_path / "restored"
    (destination / "files").mkdir(parents=True)
    (destination / "files" / "notes.txt").write_text("mine, do not touch")
    before = snapshot(destination)
    result = run_cli("decompress", tree_archive, destination)
    assert_one_line_error(result, 2)
    assert snapshot(destination) == before


def test_existing_destination_file_with_force(source_tree, tree_archive, tmp_path):
    destination = tmp_path / "restored"
    (destination / "files").mkdir(parents=True)
    (destination / "files" / "notes.txt").write_text("mine, overwrite me")
    assert_ok(run_cli("decompress", tree_archive, destination, "-f", "-q"))
    assert_same_tree(source_tree, destination)


def test_file_in_the_way_of_a_directory_changes_nothing(tree_archive, tmp_path):
    """A file where the archive needs a folder is a conflict like any other: exit 2, DEST untouched."""
    destination = tmp_path / "restored"
    destination.mkdir()
    (destination / "sub").write_text("a file, not a folder")
    before = snapshot(destination)
    result = invoke("decompress", tree_archive, destination)
    assert snapshot(destination) == before, "files were moved into DEST before the conflict was found"
    assert_one_line_error(result, 2)


# -- data errors (exit 1) ----------------------------------------------------

def test_unknown_model(source_tree, tmp_path):
    archive = tmp_path / "out.osz"
    result = run_cli("compress", source_tree, archive, "--model", "no-such-model")
    assert_one_line_error(result, 1)
    assert "no-such-model" in result.stderr
    assert sorted(tmp_path.iterdir()) == []  # no archive and no leftover temp file


def _truncate(data: bytes, where: int) -> bytes:
    return data[:where]


def _flip(data: bytes, where: int) -> bytes:
    damaged = bytearray(data)
    damaged[where] ^= 0x10
    return bytes(damaged)


# (The Python API test below damages a small archive at many more offsets.)
@pytest.mark.parametrize("damage, where, destination_exists", [
    (_truncate, "middle", False),
    (_flip, "last", True),  # everything is decoded and staged before the END checksum fails
], ids=["truncated-middle", "flipped-last-byte"])
def test_damaged_archive_leaves_nothing(tree_archive, tmp_path, damage, where, destination_exists):
    data = tree_archive.read_bytes()
    damaged = tmp_path / "damaged.osz"
    damaged.write_bytes(damage(data, len(data) // 2 if where == "middle" else len(data) - 1))
    destination = tmp_path / "restored"
    if destination_exists:
        destination.mkdir()
    result = run_cli("decompress", damaged, destination)
    assert_one_line_error(result, 1)
    assert_left_nothing(destination)


def test_not_an_archive(tmp_path):
    path = tmp_path / "not-an-archive.osz"
    path.write_bytes((EXAMPLES / "0000.png").read_bytes())
    destination = tmp_path / "restored"
    result = run_cli("decompress", path, destination)
    assert_one_line_error(result, 1)
    assert_left_nothing(destination)


def test_file_name_that_is_not_utf8(tmp_path):
    """Linux allows any bytes in names; the archiver must store them or refuse in one line, never crash."""
    source = tmp_path / "src"
    source.mkdir()
    with open(os.path.join(os.fsencode(source), b"caf\xe9.bin"), "wb") as handle:
        handle.write(b"latin-1 name")
    result = run_cli("compress", source, tmp_path / "out.osz", *CODING)
    if result.returncode == 0:
        destination = tmp_path / "restored"
        decompress(io.BytesIO((tmp_path / "out.osz").read_bytes()), destination)
        assert os.listdir(os.fsencode(destination)) == [b"caf\xe9.bin"]
    else:
        assert_one_line_error(result, result.returncode)


def test_archive_inside_the_source_folder(tmp_path):
    """`osoa-zip compress DIR DIR/out.osz` must archive DIR as it was, not the archive being written."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("alpha\n")
    shutil.copyfile(EXAMPLES / "0008.png", source / "gray.png")
    before = relative_files(source)
    assert_ok(run_cli("compress", source, source / "out.osz", *CODING, "-q"))
    destination = tmp_path / "restored"
    decompress(io.BytesIO((source / "out.osz").read_bytes()), destination)
    assert relative_files(destination) == before


# -- the Python API ------------------------------------------------------------

def test_python_api_round_trip(source_tree, tree_archive, tmp_path):
    """compress/decompress with in-memory streams; same bytes as the CLI, same summary counts."""
    output = io.BytesIO()
    summary = compress([source_tree], output, model=MODEL, adaptation=API_CONFIG, triage=False)
    data = output.getvalue()
    n_images = len(model_path_images())
    n_files = n_images + len(GENERAL_PATH_IMAGES) + len(NON_IMAGE_FILES)
    assert (summary.files, summary.images) == (n_files, n_images)
    assert summary.image_bits > 0 and 0 < summary.bits_per_subpixel < 8
    assert data == tree_archive.read_bytes(), "the API and the CLI wrote different archives"

    destination = tmp_path / "restored"
    restored = decompress(io.BytesIO(data), destination)
    assert (restored.files, restored.images) == (n_files, n_images)
    assert_same_tree(source_tree, destination)


def test_python_api_is_deterministic(small_archive, tmp_path):
    """Compressing the same files twice in one process gives the same bytes (no state leaks)."""
    destination = tmp_path / "restored"
    decompress(io.BytesIO(small_archive), destination)
    first, second = io.BytesIO(), io.BytesIO()
    compress([destination], first, model=MODEL, adaptation=API_CONFIG, triage=False)
    compress([destination], second, model=MODEL, adaptation=API_CONFIG, triage=False)
    assert first.getvalue() == second.getvalue()


def test_python_api_damage_at_many_offsets_leaves_nothing(small_archive, tmp_path):
    """Truncations and bit flips all over a small archive: ArchiveError and an empty destination."""
    step = max(1, len(small_archive) // 12)
    for where in list(range(0, len(small_archive), step)) + [len(small_archive) - 1]:
        for damaged in (small_archive[:where], _flip(small_archive, where)):
            destination = tmp_path / f"restored-{where}"
            with pytest.raises(ArchiveError):
                decompress(io.BytesIO(damaged), destination)
            assert_left_nothing(destination)


@pytest.mark.parametrize("content", [b"", b"OSOAZIP", b"PK\x03\x04" + bytes(60)], ids=["empty", "short", "zip"])
def test_python_api_refuses_foreign_data(tmp_path, content):
    with pytest.raises(ArchiveError):
        decompress(io.BytesIO(content), tmp_path / "restored")
    assert_left_nothing(tmp_path / "restored")


def test_python_api_existing_file_is_a_usage_error(small_archive, tmp_path):
    destination = tmp_path / "restored"
    destination.mkdir()
    (destination / "a.txt").write_text("mine")
    before = snapshot(destination)
    with pytest.raises(UsageError):
        decompress(io.BytesIO(small_archive), destination)
    assert snapshot(destination) == before


def _clash_tree(root: Path) -> Path:
    """a/x.txt, b/x.txt (the same name in two folders), c/x (a file) and d/x/y (a folder
    of that name), e/y.txt and e/sub/z.bin (no clash)."""
    for name, data in {"a/x.txt": b"from a\n", "b/x.txt": b"from b\n", "c/x": b"a file x\n",
                       "d/x/y": b"below a folder x\n", "e/y.txt": b"e\n", "e/sub/z.bin": bytes(range(256))}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    os.chmod(root / "e" / "y.txt", 0o600)
    return root


@pytest.mark.parametrize("sources, clash", [
    (["a", "b"], "same archive path 'x.txt'"),                            # the same name in two folders
    (["a", "a"], "same archive path 'x.txt'"),                            # one folder twice
    (["c", "d"], "same archive path 'x'"),                                # a file where the other has a folder
    (["d", "c"], "same archive path 'x'"),                                # and the other way round
    (["e", ("c/x", "y.txt")], "same archive path 'y.txt'"),                # a name given with the source
    ([("c/x", "f/x"), ("a/x.txt", "./f/x")], "same archive path 'f/x'"),  # given names are normalised
    (["c", ("e/y.txt", "x/y")], "'x/y' goes through the file 'x'"),        # a name below another's file
    ([("e/y.txt", "x/y"), "c"], "'x' is already a folder"),               # and the other way round
], ids=["two-folders", "one-folder-twice", "file-then-folder", "folder-then-file", "given-name",
        "normalised-name", "given-below-file", "file-above-given"])
def test_sources_with_clashing_names_are_refused(tmp_path, sources, clash):
    """Sources whose names would not restore as one tree (decompress refuses duplicates and
    paths through files) are refused before anything is written: one line, exit 2."""
    root = _clash_tree(tmp_path / "src")
    resolved = [root / s if isinstance(s, str) else (root / s[0], s[1]) for s in sources]
    output = io.BytesIO()
    with pytest.raises(UsageError, match=re.escape(clash)):
        compress(resolved, output, model=MODEL, adaptation=API_CONFIG, triage=False)
    assert output.getvalue() == b""
    if all(isinstance(s, str) for s in sources):  # the same through the command line
        result = invoke("compress", *CODING, *resolved, tmp_path / "out.osoa")
        assert result.returncode == 2 and clash in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out.osoa").exists()


def test_sources_without_clashes_restore_every_file_from_its_source(tmp_path):
    """Several folders and named files in one archive: every file comes back with its own
    source's bytes and mode, under the name it was given."""
    root = _clash_tree(tmp_path / "src")
    output = io.BytesIO()
    compress([root / "a", root / "d", root / "e", (root / "b" / "x.txt", "from-b/x.txt")], output,
             model=MODEL, adaptation=API_CONFIG, triage=False)
    restored = tmp_path / "restored"
    decompress(io.BytesIO(output.getvalue()), restored)
    expected = {"x.txt": root / "a" / "x.txt", "x/y": root / "d" / "x" / "y", "y.txt": root / "e" / "y.txt",
                "sub/z.bin": root / "e" / "sub" / "z.bin", "from-b/x.txt": root / "b" / "x.txt"}
    assert relative_files(restored) == set(expected)
    for name, source in expected.items():
        assert (restored / name).read_bytes() == source.read_bytes(), name
        assert (restored / name).stat().st_mode == source.stat().st_mode, name


def test_failed_decompress_leaves_no_new_parent_folders(small_archive, tmp_path):
    with pytest.raises(ArchiveError):
        decompress(io.BytesIO(small_archive[:-1]), tmp_path / "new" / "deeper" / "restored")
    assert sorted(tmp_path.iterdir()) == []


# -- crafted archives (valid checksums, hostile or inconsistent content) ------

def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    return list(ArchiveReader(io.BytesIO(data)).chunks())


_rebuild = frame  # correct CRCs and END digest, as a hostile writer would


def _load_entry(payload: bytes) -> tuple[object, str]:
    """An entry chunk's JSON, and how it was compressed: "" (plain), "xz" (image tables)
    or "deflate" (a 1.6 header)."""
    try:
        return json.loads(payload), ""
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    try:
        return json.loads(lzma.decompress(payload)), "xz"
    except lzma.LZMAError:
        return json.loads(zlib.decompress(payload, -15)), "deflate"


def _dump_entry(value, compressed: str) -> bytes:
    data = json.dumps(value).encode()
    if compressed == "deflate":
        return deflate(data)
    return lzma.compress(data) if compressed else data


def _first_entry(chunks, tag: bytes) -> tuple[object, str]:
    return _load_entry(next(p for t, p in chunks if t == tag))


def _with_first(chunks, tag: bytes, payload: bytes):
    index = [t for t, _ in chunks].index(tag)
    return chunks[:index] + [(tag, payload)] + chunks[index + 1:]


def test_rebuilt_archive_is_still_valid(small_archive, tmp_path):
    """Sanity check of the helpers below: re-framing the same chunks gives the same archive."""
    assert _rebuild(_chunks(small_archive)) == small_archive


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/abs.txt", "a/../../b.txt", "a\\b.txt", "", "a//b.txt",
                                  "./a.txt", "x\x00y.txt", "."])
def test_unsafe_paths_are_refused(small_archive, tmp_path, name):
    """Nothing in an archive may write outside DEST (path traversal): the unsafe entry is
    refused by name, everything else is restored."""
    chunks = _chunks(small_archive)
    entry, compressed = _first_entry(chunks, b"FILE")
    original = entry["path"]
    entry["path"] = name
    destination = tmp_path / "inner" / "restored"
    destination.mkdir(parents=True)
    with pytest.raises(RefusedEntries, match="unsafe path") as caught:
        decompress(io.BytesIO(_rebuild(_with_first(chunks, b"FILE", _dump_entry(entry, compressed)))), destination)
    assert len(caught.value.reasons) == 1 and repr(name) in caught.value.reasons[0]
    restored = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert restored == ["inner", "inner/restored"] + sorted(
        f"inner/restored/{n}" for n in ("a.txt", "b.bin", "gray.png", "rgb_9x5.png") if n != original)


@pytest.mark.parametrize("payload", [b"", b"\x01\x00\x00\x00", bytes(400), b"\xff" * 400, b"abc"],
                         ids=["empty", "one-word", "zeros", "ones", "partial-word"])
def test_undecodable_batches_are_archive_errors(small_archive, tmp_path, payload):
    """Coded data that do not decode to pixels give ArchiveError, never garbage images or a crash."""
    chunks = _with_first(_chunks(small_archive), b"BATC", payload)
    with pytest.raises(ArchiveError):
        decompress(io.BytesIO(_rebuild(chunks)), tmp_path / "restored")
    assert_left_nothing(tmp_path / "restored")


@pytest.mark.parametrize("change", [
    lambda e: {**e, "size": e["size"] + 1},
    lambda e: {**e, "size": e["size"] - 1},
    lambda e: {**e, "chunks": e["chunks"] + 1},
    lambda e: {**e, "chunks": 0},
    lambda e: {key: value for key, value in e.items() if key != "size"},
    lambda e: [e],
], ids=["size-up", "size-down", "chunks-up", "no-chunks", "size-missing", "not-an-object"])
def test_inconsistent_file_entries_are_archive_errors(small_archive, tmp_path, change):
    """A file entry that disagrees with its data is refused (whatever else the entry holds)."""
    chunks = _chunks(small_archive)
    entry, compressed = _first_entry(chunks, b"FILE")
    assert entry["size"] > 0 and entry["chunks"] > 0
    with pytest.raises(ArchiveError):
        decompress(io.BytesIO(_rebuild(_with_first(chunks, b"FILE", _dump_entry(change(entry), compressed)))),
                   tmp_path / "restored")
    assert_left_nothing(tmp_path / "restored")


def _with_image_mode(entry: dict, value) -> dict:
    """Replace whichever field holds the image mode ('L' or 'RGB')."""
    keys = [key for key, current in entry.items() if current in ("L", "RGB")]
    assert len(keys) == 1, entry
    return {**entry, keys[0]: value}


@pytest.mark.parametrize("change", [
    lambda t: [{**t[0], "height": 0}] + t[1:],
    lambda t: [{**t[0], "width": -2}] + t[1:],
    lambda t: [{**t[0], "height": 1 << 20, "width": 1 << 20}] + t[1:],
    lambda t: [_with_image_mode(t[0], "CMYK")] + t[1:],
], ids=["zero-height", "negative-width", "huge", "image-mode"])
def test_impossible_images_are_refused_with_their_group(small_archive, tmp_path, change):
    """Image tables are checked before anything is allocated or decoded: an image that no
    encoder writes is refused by name, with the rest of its group (they share batches),
    and every other entry is restored."""
    chunks = _chunks(small_archive)
    table, compressed = _first_entry(chunks, b"IMGS")
    assert len(table) == 2
    with pytest.raises(RefusedEntries) as caught:
        decompress(io.BytesIO(_rebuild(_with_first(chunks, b"IMGS", _dump_entry(change(table), compressed)))),
                   tmp_path / "restored")
    assert len(caught.value.reasons) == 2 and all(repr(e["path"]) in r for e, r in zip(table, caught.value.reasons))
    assert relative_files(tmp_path / "restored") == {"a.txt", "b.bin"}


@pytest.mark.parametrize("change", [
    lambda t: [{}] + t[1:],
    lambda t: {"not": "a list"},
], ids=["empty-entry", "not-a-list"])
def test_malformed_image_tables_are_archive_errors(small_archive, tmp_path, change):
    chunks = _chunks(small_archive)
    table, compressed = _first_entry(chunks, b"IMGS")
    with pytest.raises(ArchiveError) as caught:
        decompress(io.BytesIO(_rebuild(_with_first(chunks, b"IMGS", _dump_entry(change(table), compressed)))),
                   tmp_path / "restored")
    assert not isinstance(caught.value, RefusedEntries)
    assert_left_nothing(tmp_path / "restored")


def test_header_for_another_engine_is_refused(small_archive, tmp_path):
    """An archive from a different numeric engine cannot be replayed: say so, don't decode garbage."""
    chunks = _chunks(small_archive)
    header, compressed = _first_entry(chunks, b"HEAD")
    header["engine"] = {**header["engine"], "version": header["engine"]["version"] + 1}
    with pytest.raises(ArchiveError, match="engine"):
        decompress(io.BytesIO(_rebuild(_with_first(chunks, b"HEAD", _dump_entry(header, compressed)))),
                   tmp_path / "restored")


def test_header_for_a_missing_model_is_a_model_error(small_archive, tmp_path):
    chunks = _chunks(small_archive)
    header, compressed = _first_entry(chunks, b"HEAD")
    header["model"]["name"] = "not-installed"
    with pytest.raises(ModelError, match="not-installed"):
        decompress(io.BytesIO(_rebuild(_with_first(chunks, b"HEAD", _dump_entry(header, compressed)))),
                   tmp_path / "restored")


def test_deeply_nested_json_is_an_archive_error(small_archive, tmp_path):
    chunks = _with_first(_chunks(small_archive), b"HEAD", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ArchiveError):
        decompress(io.BytesIO(_rebuild(chunks)), tmp_path / "restored")


def test_large_general_files_are_split_into_data_chunks(monkeypatch, tmp_path):
    """Files bigger than one DATA chunk (16 MiB by default; 1 KiB here) come back whole, stored or xz."""
    monkeypatch.setattr(pack_module, "DATA_CHUNK_BYTES", 1024)
    monkeypatch.setattr(unpack_module, "DATA_CHUNK_BYTES", 1024)
    source = tmp_path / "src"
    source.mkdir()
    (source / "random.bin").write_bytes(os.urandom(5000))  # incompressible: stored
    (source / "text.txt").write_bytes(os.urandom(3000).hex().encode())  # hex compresses to ~half: xz
    output = io.BytesIO()
    compress([source], output, model=MODEL, adaptation=API_CONFIG, block_size=0, triage=False)
    tags = [tag for tag, _ in _chunks(output.getvalue())]
    assert tags.count(b"DATA") >= 5 + 3
    decompress(io.BytesIO(output.getvalue()), tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")


def test_empty_folder_and_single_file_sources(tmp_path):
    """Edge sources: an empty folder gives an empty restore; a file source is stored under its name."""
    (tmp_path / "empty").mkdir()
    lone = tmp_path / "lone.png"
    with Image.open(EXAMPLES / "0008.png") as image:  # uncompressed, so the model path wins
        image.save(lone, compress_level=0)
    output = io.BytesIO()
    summary = compress([tmp_path / "empty", lone], output, model=MODEL, adaptation=API_CONFIG, triage=False)
    assert (summary.files, summary.images) == (1, 1)
    destination = tmp_path / "restored"
    decompress(io.BytesIO(output.getvalue()), destination)
    assert relative_files(destination) == {"lone.png"}


# -- archives written by earlier versions ---------------------------------------

OLD_ARCHIVE = Path(__file__).parent / "golden" / "osoa-zip-0.1.0-format-0.1.osz"


def _old_archive_source(root: Path) -> Path:
    """The three files OLD_ARCHIVE was made from (by osoa-zip 0.1.0, commit c4cd214, with
    `compress SRC OUT --model idf-tiny-test --tile-size 16 --batch-size 4`)."""
    root.mkdir()
    with Image.open(EXAMPLES / "0002.png") as image:
        image.crop((10, 20, 13, 22)).save(root / "rgb_3x2.png")
    with Image.open(EXAMPLES / "0006.png") as image:
        image.crop((5, 5, 7, 9)).save(root / "gray_2x4.png")
    (root / "hello.txt").write_text("hello from osoa-zip 0.1.0\n")
    return root


def test_archive_from_version_0_1_0_still_decodes_or_is_refused_by_version(tmp_path):
    """The reader promises to read format 0.x.  An older archive must decode to the same files,
    or be refused up front because of its version, never reported as damaged."""
    data = OLD_ARCHIVE.read_bytes()
    assert data[8:12] == b"\x00\x00\x01\x00"  # written as format 0.1
    destination = tmp_path / "restored"
    try:
        decompress(io.BytesIO(data), destination)
    except ArchiveError as error:  # an explicit incompatibility is acceptable; "damaged"/"malformed" is not
        assert re.search(r"format \d|version|engine", str(error)), str(error)
        return
    assert_same_tree(_old_archive_source(tmp_path / "source"), destination)


def test_a_reader_that_stops_early_ends_quietly(tmp_path):
    """`osoa-zip list a.osoa | head -1`: no error line when the pipe closes, exit 141 like SIGPIPE.

    The reader is `true`, which exits before osoa-zip has imported torch, so the first write
    always meets a closed pipe (with `head` the outcome would depend on timing)."""
    archive = tmp_path / "a.osoa"
    subprocess.run([sys.executable, "-m", "osoa_zip", "compress", "-q", "--model", "idf-tiny-test",
                    str(EXAMPLES), str(archive)], check=True, env=subprocess_env())
    result = subprocess.run(f"'{sys.executable}' -m osoa_zip list '{archive}' | true; "
                            "echo \" ${PIPESTATUS[0]}\" >&2", shell=True, executable="/bin/bash",
                            capture_output=True, text=True, env=subprocess_env())
    assert result.stderr.split() == ["141"], result.stderr


def test_one_torch_thread_unless_omp_num_threads_says_otherwise(monkeypatch):
    """A second intra-op thread made coding slower (docs/PERFORMANCE.md): the CLI uses one,
    unless the user set OMP_NUM_THREADS."""
    import torch
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert CliRunner().invoke(main, ["models"]).exit_code == 0
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert CliRunner().invoke(main, ["models"]).exit_code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
