"""Hostile archives: valid CRCs and END digest, malicious content.

Each offending entry is refused with a one-line error that names it, every
other entry is restored, the exit code is 1, nothing is ever written outside
DEST, and memory stays bounded (the CLI runs under RLIMIT_AS).  Archive-level
damage (a chunk claiming 2^60 bytes) restores nothing.
"""
from __future__ import annotations

import io
import json
import lzma
import os
from pathlib import Path

import pytest
from conftest import EXAMPLES
from crafting import Crafted, build_source, frame
from measure import run_cli
from PIL import Image

from osoa_zip import pack as pack_module
from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.archive import RefusedEntries, UsageError, compress, decompress, test_archive
from osoa_zip.verify import tree_differences

# block_size 0: every file in a FILE entry of its own, which these tests edit (format 1.5 still writes them;
# names inside solid blocks are checked by tests/test_solid.py::test_unsafe_names_in_a_block_are_refused_alone).
SETTINGS = dict(model="idf-tiny-test", adaptation=AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0),
                block_size=0, triage=False)  # triage off: the model path for every image it can take
MEMORY_LIMIT = 3 << 29  # 1.5 GiB of address space: the CLI needs ~250 MB of RSS on these archives


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    return build_source(tmp_path_factory.mktemp("hostile") / "src")


@pytest.fixture(scope="module")
def archive(original) -> bytes:
    output = io.BytesIO()
    compress([original], output, **SETTINGS)
    return output.getvalue()


def _restore(data: bytes, box: Path) -> tuple[list[str], Path]:
    """Decompress into box/dest; the refusal reasons (empty when everything was restored)."""
    box.mkdir()
    destination = box / "dest"
    try:
        decompress(io.BytesIO(data), destination)
        reasons = []
    except RefusedEntries as error:
        reasons = error.reasons
    with pytest.raises(RefusedEntries) if reasons else _no_error():
        test_archive(io.BytesIO(data))  # `test` reaches the same verdict
    assert sorted(p.name for p in box.iterdir()) == ["dest"], "something was written beside DEST"
    return reasons, destination


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _assert_refused_only(reasons, name: str, original: Path, destination: Path, missing=()) -> None:
    """Exactly one refusal, naming `name`; the rest of the tree restored exactly."""
    assert len(reasons) == 1, reasons
    assert repr(name) in reasons[0], reasons
    assert "\n" not in reasons[0]
    problems = tree_differences(original, destination)
    assert sorted(problems) == sorted(f"missing: {m}" for m in missing), problems


# -- names and links ------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/osoa-zip-hostile-abs.txt", "docs/../../up.txt",
                                  "x\x00y.txt", "new\nline.txt", "esc\x1b[2J.txt", "del\x7f.txt"])
def test_file_with_an_unsafe_name(archive, original, tmp_path, name):
    reasons, destination = _restore(Crafted.parse(archive).edit("docs/c.txt", path=name).build(), tmp_path / "box")
    _assert_refused_only(reasons, name, original, destination, missing=["docs/c.txt"])
    assert not Path("/tmp/osoa-zip-hostile-abs.txt").exists()


@pytest.mark.parametrize("name", ["../outside-dir", "/tmp/osoa-zip-hostile-dir"])
def test_folder_with_an_unsafe_name(archive, original, tmp_path, name):
    reasons, destination = _restore(Crafted.parse(archive).edit("docs/empty", path=name).build(), tmp_path / "box")
    _assert_refused_only(reasons, name, original, destination)
    assert not (destination / "docs" / "empty").exists()
    assert not Path("/tmp/osoa-zip-hostile-dir").exists()


def test_image_with_an_unsafe_name_is_refused_alone(archive, original, tmp_path):
    """The group still decodes (its pixels are needed by the adaptation); only that image is skipped."""
    reasons, destination = _restore(Crafted.parse(archive).edit("img1.png", path="../img1.png").build(),
                                    tmp_path / "box")
    _assert_refused_only(reasons, "../img1.png", original, destination, missing=["img1.png"])


@pytest.mark.parametrize("target", ["../../etc", "/etc/passwd", "../..", "a/../../../x", ""])
def test_link_leaving_the_destination(archive, original, tmp_path, target):
    reasons, destination = _restore(Crafted.parse(archive).edit("docs/link-to-a", target=target).build(),
                                    tmp_path / "box")
    _assert_refused_only(reasons, "docs/link-to-a", original, destination, missing=["docs/link-to-a"])


def test_link_leaving_through_another_link(archive, original, tmp_path):
    """`m -> .` and `x -> m/..` are each lexically inside, but x resolves to DEST's parent.
    Found while writing these tests: x used to be restored."""
    crafted = Crafted.parse(archive)
    crafted.insert_entry(b"LINK", {"path": "x", "target": "m/.."})
    crafted.insert_entry(b"LINK", {"path": "m", "target": "."})
    reasons, destination = _restore(crafted.build(), tmp_path / "box")
    assert len(reasons) == 1 and "'x'" in reasons[0], reasons
    assert not (destination / "x").is_symlink() and os.readlink(destination / "m") == "."


def test_link_loop_is_not_a_hang(archive, tmp_path):
    crafted = Crafted.parse(archive)
    crafted.insert_entry(b"LINK", {"path": "p", "target": "q"})
    crafted.insert_entry(b"LINK", {"path": "q", "target": "p/r"})
    reasons, destination = _restore(crafted.build(), tmp_path / "box")
    assert reasons  # q -> p/r -> q/r -> ... never settles: refused (the kernel says ELOOP)


@pytest.mark.parametrize("through", ["docs/link-to-a/evil.txt", "b.bin/evil.txt"], ids=["link", "file"])
def test_nothing_is_written_through_a_link_or_a_file(archive, original, tmp_path, through):
    crafted = Crafted.parse(archive)
    crafted.duplicate("docs/c.txt", new_name=through, at=crafted.tags.index(b"HARD"))
    reasons, destination = _restore(crafted.build(), tmp_path / "box")
    _assert_refused_only(reasons, through, original, destination)


def test_file_where_a_folder_was_implied(archive, original, tmp_path):
    crafted = Crafted.parse(archive)
    crafted.duplicate("docs/c.txt", new_name="q/x.txt")
    crafted.duplicate("docs/c.txt", new_name="q", at=crafted.tags.index(b"HARD"))
    reasons, destination = _restore(crafted.build(), tmp_path / "box")
    assert len(reasons) == 1 and reasons[0].startswith("path 'q' is already a folder"), reasons
    assert (destination / "q" / "x.txt").read_text() == "third file\n"


@pytest.mark.parametrize("target", ["../b.bin", "/etc/passwd", "docs", "nothing-here"])
def test_hard_link_to_anything_but_an_earlier_file(archive, original, tmp_path, target):
    reasons, destination = _restore(Crafted.parse(archive).edit("hard-b.bin", target=target).build(),
                                    tmp_path / "box")
    _assert_refused_only(reasons, "hard-b.bin", original, destination, missing=["hard-b.bin"])


@pytest.mark.parametrize("name", ["b.bin", "docs", "docs/a.txt", "docs/link-to-a", "hard-b.bin"])
def test_duplicate_names(archive, original, tmp_path, name):
    """The first entry of a name wins; the second is refused."""
    reasons, destination = _restore(Crafted.parse(archive).duplicate(name).build(), tmp_path / "box")
    _assert_refused_only(reasons, name, original, destination)


def test_duplicate_image_name(archive, original, tmp_path):
    reasons, destination = _restore(Crafted.parse(archive).edit("img1.png", path="img0.png").build(),
                                    tmp_path / "box")
    _assert_refused_only(reasons, "img0.png", original, destination, missing=["img1.png"])


def test_several_refusals_are_all_named(archive, original, tmp_path):
    crafted = Crafted.parse(archive).edit("docs/c.txt", path="../c.txt").edit("docs/link-to-a", target="/etc")
    reasons, destination = _restore(crafted.duplicate("b.bin").build(), tmp_path / "box")
    assert len(reasons) == 3
    assert [name for name in ("'../c.txt'", "'docs/link-to-a'", "'b.bin'") if any(name in r for r in reasons)] \
        == ["'../c.txt'", "'docs/link-to-a'", "'b.bin'"]


def test_partial_extraction_reports_only_selected_refusals(archive, tmp_path):
    crafted = Crafted.parse(archive).edit("docs/link-to-a", target="/etc")
    decompress(io.BytesIO(crafted.build()), tmp_path / "imgs", patterns=["img*"])  # no refusal among these
    with pytest.raises(RefusedEntries):
        decompress(io.BytesIO(crafted.build()), tmp_path / "docs", patterns=["docs"])
    assert (tmp_path / "docs" / "docs" / "a.txt").exists()


# -- the command line ---------------------------------------------------------

def run_limited(*args, limit: int = MEMORY_LIMIT):
    """The CLI in a subprocess under RLIMIT_AS; (result, peak RSS in bytes)."""
    return run_cli(*args, address_space=limit)


def assert_error_lines(result, count: int | None = None) -> list[str]:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("osoa-zip: error: ") for line in lines), result.stderr
    assert all(ch == "\t" or ch >= " " for line in lines for ch in line), "raw control characters on stderr"
    if count is not None:
        assert len(lines) == count, lines
    return lines


def test_cli_refuses_each_entry_and_restores_the_rest(archive, original, tmp_path):
    crafted = Crafted.parse(archive).edit("docs/c.txt", path="../c.txt").edit("docs/link-to-a", target="/etc")
    crafted.edit("img1.png", path="esc\x1b]0;owned\x07.png")
    path = tmp_path / "hostile.osoa"
    path.write_bytes(crafted.build())
    (tmp_path / "box").mkdir()
    result, _ = run_limited("decompress", "-q", path, tmp_path / "box" / "dest")
    lines = assert_error_lines(result, 3)
    assert "'../c.txt'" in lines[0] and "'docs/link-to-a'" in lines[1] and "\\x1b" in lines[2]
    assert sorted(tree_differences(original, tmp_path / "box" / "dest")) == [
        "missing: docs/c.txt", "missing: docs/link-to-a", "missing: img1.png"]
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["dest"]
    result, _ = run_limited("test", "-q", path)
    assert_error_lines(result, 3)


def _image_group_too_large(archive: bytes) -> bytes:
    return Crafted.parse(archive).edit("img0.png", height=10 ** 6, width=10 ** 6).build()


def _table_of(entries: int) -> bytes:
    """An xz'd image table of `entries` empty objects: a few KB that used to parse into GBs."""
    compressor = lzma.LZMACompressor(preset=1)
    pieces = [compressor.compress(b"[")]
    block = b"{}," * (1 << 20)
    for _ in range(entries // (1 << 20)):
        pieces.append(compressor.compress(block))
    pieces.append(compressor.compress(b"{}]"))
    pieces.append(compressor.flush())
    return b"".join(pieces)


def _huge_table(archive: bytes) -> bytes:
    crafted = Crafted.parse(archive)
    crafted.chunks[crafted.index(b"IMGS")] = (b"IMGS", _table_of(10 ** 7))
    return crafted.build()


@pytest.mark.parametrize("craft", [_image_group_too_large, _huge_table], ids=["image-10^6x10^6", "table-10^7"])
def test_impossible_image_groups_are_refused_in_bounded_memory(archive, original, tmp_path, craft):
    path = tmp_path / "hostile.osoa"
    path.write_bytes(craft(archive))
    destination = tmp_path / "box" / "dest"
    destination.parent.mkdir()
    result, peak = run_limited("decompress", "-q", path, destination)
    lines = assert_error_lines(result)
    assert peak < 700 << 20, f"peak RSS {peak >> 20} MB"
    if craft is _image_group_too_large:
        assert len(lines) == 2 and "'img0.png'" in lines[0] and "1000000x1000000" in lines[0]
        assert "'img1.png'" in lines[1]
    else:
        assert len(lines) == 1 and "image table" in lines[0]
    assert sorted(tree_differences(original, destination)) == ["missing: img0.png", "missing: img1.png"]


def test_table_larger_than_the_limit_is_refused(archive, original, tmp_path, monkeypatch):
    from osoa_zip.container import records
    monkeypatch.setattr(records, "MAX_TABLE_BYTES", 1 << 20)
    reasons, destination = _restore(_huge_table(archive), tmp_path / "box")
    assert len(reasons) == 1 and "larger than" in reasons[0]
    assert sorted(tree_differences(original, destination)) == ["missing: img0.png", "missing: img1.png"]


def test_chunk_claiming_2_to_the_60_bytes(archive, tmp_path):
    """Archive-level damage: the framing is lost, nothing is restored, nothing is allocated."""
    crafted = Crafted.parse(archive)
    good = frame(crafted.chunks[:3])[:-(16 + 40)]  # preamble + 3 chunks, without END
    hostile = good + b"DATA" + (1 << 60).to_bytes(8, "little") + b"\x00" * 64
    path = tmp_path / "hostile.osoa"
    path.write_bytes(hostile)
    result, peak = run_limited("decompress", path, tmp_path / "dest")
    lines = assert_error_lines(result, 1)
    assert "declares" in lines[0] and peak < 700 << 20
    assert not (tmp_path / "dest").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hostile.osoa"]


# -- later image groups depend on earlier ones (adaptation) ------------------------

@pytest.mark.parametrize("adapt", [True, False])
def test_refused_group_and_the_groups_after_it(tmp_path, monkeypatch, adapt):
    """With adaptation, a group that cannot be decoded takes every later group with it
    (their model is adapted on its pixels); frozen, the later groups are restored."""
    monkeypatch.setattr(pack_module, "GROUP_SUBPIXELS", 1)  # one image per group
    source = tmp_path / "src"
    source.mkdir()
    for index in range(2):  # large enough that each group codes smaller than its file
        with Image.open(EXAMPLES / f"000{index}.png") as image:
            image.crop((0, 0, 32, 32)).save(source / f"img{index}.png", compress_level=0)
    (source / "notes.txt").write_text("restored whatever happens to the images\n")
    original = source
    output = io.BytesIO()
    compress([original], output, model="idf-tiny-test",
             adaptation=AdaptationConfig(tile_size=16, batch_size=4, batch_pixels=0, adapt=adapt), triage=False)
    crafted = Crafted.parse(output.getvalue())
    assert crafted.tags.count(b"IMGS") == 2
    reasons, destination = _restore(crafted.edit("img0.png", width=0).build(), tmp_path / "box")
    missing = ["img0.png", "img1.png"] if adapt else ["img0.png"]
    assert len(reasons) == len(missing) and all(f"'{m}'" in r for m, r in zip(missing, reasons))
    assert sorted(tree_differences(original, destination)) == [f"missing: {m}" for m in missing]


# -- DEST that already holds files ---------------------------------------------

def test_existing_files_are_not_overwritten_without_force(archive, tmp_path):
    destination = tmp_path / "dest"
    (destination / "docs").mkdir(parents=True)
    (destination / "docs" / "a.txt").write_text("mine")
    with pytest.raises(UsageError, match="use -f"):
        decompress(io.BytesIO(archive), destination)
    assert sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*")) == ["docs", "docs/a.txt"]
    assert (destination / "docs" / "a.txt").read_text() == "mine"


@pytest.mark.parametrize("force", [False, True])
def test_links_already_in_dest_are_never_followed(archive, tmp_path, force):
    """DEST/docs -> a folder outside and DEST/b.bin -> a file outside: the archive's docs/* and
    b.bin never land outside.  Without -f nothing changes; with -f the links themselves are
    replaced (as any existing file would be), never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    destination = tmp_path / "dest"
    destination.mkdir()
    os.symlink(outside, destination / "docs")
    os.symlink(outside / "precious", destination / "b.bin")
    if force:
        decompress(io.BytesIO(archive), destination, force=True)
        for name in ("docs", "b.bin"):
            assert not (destination / name).is_symlink()
        assert (destination / "b.bin").read_bytes() == bytes(range(200))
        assert (destination / "docs" / "a.txt").read_text() == "hello\n" * 30
    else:
        with pytest.raises(UsageError, match="use -f"):
            decompress(io.BytesIO(archive), destination)
        assert sorted(os.listdir(destination)) == ["b.bin", "docs"]
    assert sorted(os.listdir(outside)) == ["precious"] and (outside / "precious").read_text() == "keep"


def test_compress_skips_names_with_control_characters(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "fine.txt").write_text("ok")
    (source / "bad\nname.txt").write_text("newline in the name")
    warnings = []
    output = io.BytesIO()
    compress([source], output, warn=warnings.append, **SETTINGS)
    assert len(warnings) == 1 and "control characters" in warnings[0]
    assert [json.loads(p)["path"] for t, p in Crafted.parse(output.getvalue()).chunks if t == b"FILE"] == ["fine.txt"]


@pytest.mark.parametrize("settings", [
    {"batch_pixels": "x"}, {"batch_pixels": -1}, {"batch_pixels": 10 ** 30}, {"batch_pixels": 1.5},
    {"gray_parameters": 7}, {"gray_parameters": "most"}, {"give_up_after": -1}, {"give_up_after": None},
    {"update_delay": 1},
], ids=lambda s: f"{next(iter(s))}={next(iter(s.values()))!r}")
def test_hostile_adaptation_settings_get_one_error_line(archive, tmp_path, settings):
    """Format 1.1's header keys, hostile or from a future release: one line, exit 1, nothing written
    (a huge batch_pixels is capped by the 1024-tile batch limit, so it simply decodes)."""
    crafted = Crafted.parse(archive)
    index = crafted.index(b"HEAD")
    header = crafted.value(index)
    header["adaptation"].update(settings)
    path = tmp_path / "hostile.osoa"
    path.write_bytes(crafted.set_value(index, header).build())
    result = run_limited("decompress", path, tmp_path / "out")
    if settings == {"batch_pixels": 10 ** 30}:  # capped: batches of at most 1024 tiles, as here
        assert result[0].returncode == 0, result[0].stderr
        return
    assert_error_lines(result[0], count=1)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
