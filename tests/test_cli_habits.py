"""The command-line habits users bring from xz, zstd, tar and unzip (issue 18).

- Terminal safety: no archive is written to, or read from, a terminal unless -f
  says so (checked on real pseudo-terminals, the CLI in a subprocess).
- --exclude / --exclude-from: the same entries as GNU tar --exclude leaves out,
  on the same tree (tar is run here; it is part of every Debian system).
- Levels -1 ... -9: each a bundle of recorded settings that decodes exactly;
  explicit options win over the level.
- decompress --stdout NAME: the entry's bytes, identical to what decompress
  writes to disk.
- Shell completion scripts from click.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import termios
import tty
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MODEL, TILE_SIZE, assert_same_tree, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.adapt.defaults import adaptation_for
from osoa_zip.adapt.presets import DEFAULT_LEVEL, PRESETS, preset
from osoa_zip.archive import compress, decompress
from osoa_zip.cli import main
from osoa_zip.files.scan import ExcludePatterns, scan
from osoa_zip.models.catalog import DEFAULT_MODEL, FAST_MODEL
from osoa_zip.table import read_archive, read_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CODING = ["--model", MODEL, "--tile-size", str(TILE_SIZE), "--batch-size", "4", "--batch-pixels", "0",
          "--every-image"]  # the model path for every image (no triage)
SCRIPT = Path(sys.executable).with_name("osoa-zip")  # the console script users run


def run_cli(*args, **streams) -> subprocess.CompletedProcess:
    """`python -m osoa_zip.cli ARGS` with the given stdin/stdout (bytes out, text err)."""
    streams.setdefault("stdout", subprocess.PIPE)
    result = subprocess.run([sys.executable, "-m", "osoa_zip.cli", *map(str, args)], stderr=subprocess.PIPE,
                            env=subprocess_env(), timeout=300, **streams)
    result.stderr = result.stderr.decode("utf-8", "replace")
    return result


def assert_one_line_error(result, code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("osoa-zip: error:"), result.stderr
    for word in words:
        assert word in lines[0], result.stderr


@pytest.fixture
def terminal():
    """A pseudo-terminal: (master, slave) file descriptors, slave in raw mode (bytes pass unchanged)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, slave
    for descriptor in (master, slave):
        try:
            os.close(descriptor)
        except OSError:
            pass


def drain(master: int) -> bytes:
    """Everything written to the terminal, once its writer has gone."""
    data = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: no writer left
            return data
        if not chunk:
            return data
        data += chunk


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> Path:
    """A small archive (one model-coded image, one file) for the refusals."""
    folder = tmp_path_factory.mktemp("small")
    archive = folder / "small.osoa"
    source = folder / "src"
    source.mkdir()
    (source / "note.txt").write_text("hello\n")
    result = run_cli("compress", "-q", *CODING, source, archive)
    assert result.returncode == 0, result.stderr
    return archive


# --- terminal safety ------------------------------------------------------------------------------------------


def test_compress_refuses_to_write_to_a_terminal(terminal, small_archive):
    master, slave = terminal
    result = run_cli("compress", *CODING, small_archive, "-", stdout=slave)
    os.close(slave)
    assert_one_line_error(result, 2, "terminal", "-f")
    assert drain(master) == b""  # not a byte of archive reached the screen


def test_compress_f_writes_to_a_terminal(terminal, tmp_path):
    master, slave = terminal
    source = tmp_path / "note.txt"
    source.write_text("hello\n")
    process = subprocess.Popen([sys.executable, "-m", "osoa_zip.cli", "compress", "-q", "-f", *CODING, source, "-"],
                               stdout=slave, stderr=subprocess.PIPE, env=subprocess_env())
    os.close(slave)
    written = drain(master)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    process.stderr.close()
    expected = run_cli("compress", "-q", *CODING, source, "-").stdout  # archives are deterministic
    assert written == expected and written


@pytest.mark.parametrize("command", [["decompress", "-", "out"], ["list", "-"], ["test", "-"], ["info", "-"]])
def test_reading_an_archive_from_a_terminal_is_refused(terminal, tmp_path, command):
    master, slave = terminal
    result = run_cli(*command, stdin=slave, cwd=tmp_path)
    assert_one_line_error(result, 2, "terminal", "-f")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["list", "-f", "-"], ["test", "-f", "-"], ["decompress", "-f", "-", "out"]])
def test_f_reads_an_archive_from_a_terminal(command, tmp_path):
    """With -f the terminal is read: here it holds nothing but an end of file (Ctrl-D in a
    terminal's normal mode), so the error is about the archive, not the terminal."""
    master, slave = os.openpty()
    try:
        os.write(master, termios.tcgetattr(slave)[6][termios.VEOF])
        result = run_cli(*command, stdin=slave, cwd=tmp_path)
    finally:
        os.close(master)
        os.close(slave)
    assert_one_line_error(result, 1)
    assert "terminal" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_stdout_entry_refuses_a_terminal(terminal, small_archive):
    master, slave = terminal
    result = run_cli("decompress", small_archive, "--stdout", "note.txt", stdout=slave)
    os.close(slave)
    assert_one_line_error(result, 2, "terminal")
    assert drain(master) == b""


# --- excludes, against GNU tar ------------------------------------------------------------------------------

TREE = ["top.png", ".DS_Store", "Thumbs.db", "a/.DS_Store", "a/b/c/f.png", "a/b/g.txt", "a/bc/h.png",
        "b/h.png", "b/b/i.png", "x.d/y/z", "sub/keep", "sub/Thumbs.db", "build/out.o", "src/build/x.o",
        "src/main.c", "empty/", "a b/c d.png", "[ab]/lit.txt"]


def tar() -> str:
    found = shutil.which("tar")
    assert found, "GNU tar is needed to check --exclude against it (apt-get install tar)"
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout
    assert "GNU tar" in version, version
    return found


@pytest.fixture(scope="module")
def exclude_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("excludes") / "tree"
    for name in TREE:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
    return root


def tar_members(root: Path, patterns: list[str]) -> set[str]:
    """What GNU tar archives of root's contents with these --exclude patterns."""
    children = sorted(os.listdir(root))
    excludes = [f"--exclude={pattern}" for pattern in patterns]
    created = subprocess.run([tar(), "-C", str(root), "-cf", "-", *excludes, "--", *children],
                             capture_output=True, check=True)
    listed = subprocess.run([tar(), "-tf", "-"], input=created.stdout, capture_output=True, check=True)
    return {line.rstrip("/") for line in os.fsdecode(listed.stdout).splitlines()}


def our_members(root: Path, patterns: list[str]) -> set[str]:
    return {entry.name for entry in scan([root], lambda message: None, patterns=ExcludePatterns(patterns))}


@pytest.mark.parametrize("patterns", [
    [], [".DS_Store"], [".DS_Store", "Thumbs.db"], ["b"], ["a/b"], ["*/b"], ["b/*.png"], ["*.png"], ["a/*"],
    ["c"], ["b/c"], ["x.d"], ["f*"], ["[ab]"], ["*b*"], ["a*g.txt"], ["build"], ["src/build"], ["sub/"],
    ["./a"], ["?"], ["a b"], ["*.o", "empty"], ["[!a]*"], ["a/b/c/f.png"], ["a/b/c/f.png/"],
])
def test_excludes_match_gnu_tar(exclude_tree, patterns):
    assert our_members(exclude_tree, patterns) == tar_members(exclude_tree, patterns)


PIECES = ["a", "b", "c", "x.d", "*", "?", "*.png", ".DS_Store", "[ab]", "[!b]", "/", "b*", "*/"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(PIECES), min_size=1, max_size=4).map("".join), min_size=1, max_size=2))
def test_random_excludes_match_gnu_tar(exclude_tree, patterns):
    assert our_members(exclude_tree, patterns) == tar_members(exclude_tree, patterns)


def test_excluded_folder_is_not_looked_into(tmp_path):
    """What is below an excluded folder is never looked at: no warning for a link leaving
    the tree in there, nothing in the archive."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "away").symlink_to("/etc/passwd")
    (tmp_path / "kept.txt").write_text("y")
    warnings = []
    assert [entry.name for entry in scan([tmp_path], warnings.append)] == ["cache", "kept.txt"]
    assert len(warnings) == 1
    warnings.clear()
    entries = scan([tmp_path], warnings.append, patterns=ExcludePatterns(["cache"]))
    assert [entry.name for entry in entries] == ["kept.txt"] and warnings == []


def test_exclude_and_exclude_from_on_the_command_line(exclude_tree, tmp_path):
    listing = tmp_path / "excludes.txt"
    listing.write_text("Thumbs.db\n\nbuild\n")  # an empty line excludes nothing
    archive = tmp_path / "t.osoa"
    result = run_cli("compress", "-q", *CODING, "--exclude", ".DS_Store", "--exclude", "*.o",
                     "--exclude-from", listing, exclude_tree, archive)
    assert result.returncode == 0, result.stderr
    with open(archive, "rb") as source:
        names = {entry.name for entry in read_table(source)[1]}
    assert names == tar_members(exclude_tree, [".DS_Store", "*.o", "Thumbs.db", "build"])
    assert "sub/keep" in names and "a/.DS_Store" not in names


def test_exclude_applies_to_files_from_names(exclude_tree, tmp_path, monkeypatch):
    """Names given by --files-from are matched as stored, as tar -T does."""
    monkeypatch.chdir(exclude_tree)
    listed = "a/b/g.txt\nb\nsub\n"
    archive = tmp_path / "t.osoa"
    result = subprocess.run([sys.executable, "-m", "osoa_zip.cli", "compress", "-q", *CODING, "--files-from", "-",
                             "--exclude", "b", archive], input=listed.encode(), capture_output=True,
                            env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    with open(archive, "rb") as source:
        names = {entry.name for entry in read_table(source)[1]}
    tar_listed = subprocess.run([tar(), "-cf", "-", "--exclude", "b", "-T", "-"], input=listed.encode(),
                                capture_output=True, check=True).stdout
    members = subprocess.run([tar(), "-tf", "-"], input=tar_listed, capture_output=True, check=True).stdout
    assert names == {line.rstrip("/") for line in members.decode().splitlines()} == {"sub", "sub/keep",
                                                                                       "sub/Thumbs.db"}


# --- levels -------------------------------------------------------------------------------------------------


def test_default_level_is_release_defaults():
    assert preset(DEFAULT_LEVEL).config() == AdaptationConfig()
    assert preset(DEFAULT_LEVEL).model is None
    assert sorted(PRESETS) == list(range(1, 10))
    assert not preset(1).config().adapt
    assert preset(9).config().steps_per_batch > AdaptationConfig().steps_per_batch
    with pytest.raises(ValueError, match="no compression level"):
        preset(0)
    with pytest.raises(ValueError, match="unknown settings"):
        type(preset(1))(10, "x", {"not_a_setting": 1})
    with pytest.raises(ValueError, match="rate_scale"):
        type(preset(1))(10, "x", {"learning_rate": 1e-3})


def test_a_level_scales_the_rate_of_the_model_it_codes_with():
    """A level names no learning rate: -7 ... -9 take a share of the chosen model's own
    (a flow's rate would be ~30x too large for a VAE); an explicit rate wins."""
    scaled = [chosen for chosen in PRESETS.values() if chosen.rate_scale != 1]
    assert scaled and all(chosen.level > DEFAULT_LEVEL for chosen in scaled)
    for chosen in scaled:
        for model in ("idf-sublattice-v6", "vae-hier-tiny-test", MODEL):
            own = adaptation_for(model).learning_rate
            assert chosen.config(model).learning_rate == pytest.approx(own * chosen.rate_scale, rel=5e-3)  # 3 digits
        assert chosen.config().learning_rate == chosen.config(DEFAULT_MODEL).learning_rate  # no model: the default
        assert chosen.config(MODEL, learning_rate=1e-3).learning_rate == 1e-3
    assert preset(9).config("idf-sublattice-v6").learning_rate == 2e-4  # recorded as meant, not 1.9999...e-4
    assert all(chosen.config(MODEL).learning_rate is None for chosen in PRESETS.values() if chosen.rate_scale == 1)


def test_help_explains_each_level_in_one_line():
    result = CliRunner().invoke(main, ["compress", "--help"], terminal_width=80)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for level, chosen in PRESETS.items():
        [at] = [i for i, line in enumerate(lines) if line.strip().startswith(f"-{level} ")]
        assert lines[at].split(None, 1)[1] == chosen.summary  # all of it on the option's line
        assert lines[at + 1].strip().startswith("-"), result.output  # and nothing wrapped below it


@pytest.fixture(scope="module")
def model_images(source_tree, tmp_path_factory) -> Path:
    """The fixture's model-path images (RGB, grey, LA, RGBA, palette, odd sizes)."""
    folder = tmp_path_factory.mktemp("level-images") / "images"
    shutil.copytree(source_tree / "images", folder)
    shutil.copytree(source_tree / "crops", folder / "crops")
    return folder


@pytest.mark.parametrize("level", sorted(PRESETS))
def test_every_level_decodes_exactly(level, model_images, tmp_path):
    """Each level's settings (small tiles and batches so the tiny model codes several batches)."""
    chosen = PRESETS[level]
    config = chosen.config(MODEL, tile_size=TILE_SIZE, batch_size=4, batch_pixels=0, gray_batch_pixels=0)
    with open(tmp_path / "a.osoa", "wb") as output:
        summary = compress([model_images], output, MODEL, config)
    assert summary.images >= 10 and len(summary.batches) > 4
    with open(tmp_path / "a.osoa", "rb") as source:
        header, entries, _ = read_archive(source)
        source.seek(0)
        decompress(source, tmp_path / "out")
    assert AdaptationConfig.from_header(header["adaptation"]) == adaptation_for(MODEL, config)
    assert any(entry.method == "model" for entry in entries)
    assert_same_tree(model_images, tmp_path / "out")


def header_of(archive: Path) -> dict:
    with open(archive, "rb") as source:
        return read_table(source)[0]["adaptation"]


def recorded(config: AdaptationConfig) -> dict:
    """The header compress writes for these settings (the learning rate resolved for the model)."""
    return adaptation_for(MODEL, config).to_header()


def test_levels_on_the_command_line(small_archive, tmp_path):
    """-1 and -9 record their settings; an explicit option overrides its level's value;
    no level is -6, and -6 writes exactly what release 1.6 wrote."""
    source = tmp_path / "note.txt"
    source.write_text("hello\n")
    archives = {}
    for name, options in {"none": [], "6": ["-6"], "1": ["-1"], "9": ["-9"], "1+adapt": ["-1", "--guard"],
                          "9+steps": ["-9", "--steps-per-batch", "1", "--give-up-after", "5"],
                          "9+rate": ["-9", "--learning-rate", "0.001"]}.items():
        archives[name] = tmp_path / f"{name}.osoa"
        result = run_cli("compress", "-q", "--model", MODEL, *options, source, archives[name])
        assert result.returncode == 0, result.stderr
    assert archives["none"].read_bytes() == archives["6"].read_bytes()
    assert header_of(archives["none"]) == recorded(AdaptationConfig())
    assert header_of(archives["1"]) == recorded(PRESETS[1].config(MODEL))
    assert header_of(archives["9"]) == recorded(PRESETS[9].config(MODEL))
    assert header_of(archives["1+adapt"]) == recorded(PRESETS[1].config(MODEL, guard=True))
    assert header_of(archives["9+steps"]) == recorded(PRESETS[9].config(MODEL, steps_per_batch=1, give_up_after=5))
    assert header_of(archives["9+rate"]) == recorded(PRESETS[9].config(MODEL, learning_rate=1e-3))
    assert header_of(archives["9"])["learning_rate"] == pytest.approx(2 / 3 * adaptation_for(MODEL).learning_rate)


def test_level_1_codes_with_the_fast_model_unless_a_model_is_given(tmp_path):
    """-1 names its own model (catalog.FAST_MODEL, a small engine-2 flow) in the header and decodes
    exactly with it; --model still wins over the level's model, and -6 keeps the default model."""
    source = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "images", source,
                    ignore=shutil.ignore_patterns("*.txt"))  # 64 x 64 RGB photos and 48 x 48 grey ones
    models = {}
    for name, options in {"1": ["-1"], "1+model": ["-1", "--model", MODEL], "6": ["-6"]}.items():
        archive = tmp_path / f"{name}.osoa"
        result = run_cli("compress", "-q", *options, source, archive)
        assert result.returncode == 0, result.stderr
        with open(archive, "rb") as stream:
            header, entries, _ = read_archive(stream)
        models[name] = header["model"]["name"], {entry.method for entry in entries}
        with open(archive, "rb") as stream:
            decompress(stream, tmp_path / f"out-{name}")
        assert_same_tree(source, tmp_path / f"out-{name}")
    assert models == {"1": (FAST_MODEL, {"model"}), "6": (DEFAULT_MODEL, {"model"}),
                      "1+model": (MODEL, {"solid"})}  # the tiny test model codes nothing smaller than PNG


# --- one entry to standard output ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extracted(source_tree, tmp_path_factory) -> tuple[Path, Path]:
    """(archive of the fixture tree, the tree decompress restored from it)."""
    folder = tmp_path_factory.mktemp("stdout")
    archive = folder / "tree.osoa"
    result = run_cli("compress", "-q", *CODING, source_tree, archive)
    assert result.returncode == 0, result.stderr
    result = run_cli("decompress", "-q", archive, folder / "restored")
    assert result.returncode == 0, result.stderr
    return archive, folder / "restored"


@pytest.mark.parametrize("name, kind", [("files/notes.txt", "file"), ("images/0000.png", "image"),
                                        ("images/palette.png", "image"), ("general/truncated.png", "file")])
def test_stdout_entry_is_the_extracted_file(extracted, name, kind):
    archive, restored = extracted
    with open(archive, "rb") as source:
        listed = {entry.name: entry for entry in read_table(source)[1]}
    assert listed[name].kind == kind
    if kind == "image":
        assert listed[name].method in ("model", "mixed", "palette")
    result = run_cli("decompress", "-q", archive, "--stdout", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (restored / name).read_bytes()


def test_stdout_entry_from_a_pipe(extracted):
    archive, restored = extracted
    result = run_cli("decompress", "-q", "-", "--stdout", "images/rgba.png", stdin=open(archive, "rb"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (restored / "images/rgba.png").read_bytes()


@pytest.mark.parametrize("name, words", [("no/such.png", ["no such entry"]), ("files", ["folder", "not a file"]),
                                         ("images/0000", ["no such entry"])])
def test_stdout_entry_that_is_not_a_file(extracted, name, words):
    archive, _ = extracted
    result = run_cli("decompress", "-q", archive, "--stdout", name)
    assert_one_line_error(result, 2, *words)
    assert result.stdout == b""


def test_stdout_entry_usage_errors(extracted, tmp_path):
    archive, _ = extracted
    assert_one_line_error(run_cli("decompress", archive, tmp_path / "d", "--stdout", "files/notes.txt"), 2)
    assert_one_line_error(run_cli("decompress", archive, "--salvage", "--stdout", "files/notes.txt"), 2)
    assert_one_line_error(run_cli("decompress", archive), 2, "DESTINATION")
    assert not (tmp_path / "d").exists()


def test_stdout_entry_of_a_damaged_archive_writes_nothing(extracted, tmp_path):
    archive, _ = extracted
    data = bytearray(archive.read_bytes())
    data[len(data) * 3 // 4] ^= 0x40
    damaged = tmp_path / "damaged.osoa"
    damaged.write_bytes(bytes(data))
    result = run_cli("decompress", "-q", damaged, "--stdout", "files/notes.txt")
    assert_one_line_error(result, 1)
    assert result.stdout == b""


def test_stdout_entry_follows_a_hard_link(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("linked bytes\n")
    os.link(source / "a.txt", source / "b.txt")
    archive = tmp_path / "l.osoa"
    assert run_cli("compress", "-q", *CODING, source, archive).returncode == 0
    result = run_cli("decompress", "-q", archive, "--stdout", "b.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"linked bytes\n"


# --- shell completion ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _osoa_zip_completion osoa-zip"),
                                           ("zsh", "#compdef osoa-zip"), ("fish", "--command osoa-zip")])
def test_completion_script(shell, marker):
    assert SCRIPT.exists(), f"{SCRIPT}: the console script (pip install -e .) is missing"
    result = subprocess.run([SCRIPT], env={**subprocess_env(), "_OSOA_ZIP_COMPLETE": f"{shell}_source"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout


def test_completion_completes():
    env = {**subprocess_env(), "_OSOA_ZIP_COMPLETE": "bash_complete", "COMP_WORDS": "osoa-zip decomp",
           "COMP_CWORD": "1"}
    result = subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain,decompress"]
    env.update(COMP_WORDS="osoa-zip compress --excl", COMP_CWORD="2")
    result = subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert set(result.stdout.split()) == {"plain,--exclude", "plain,--exclude-from"}


def test_json_header_is_unchanged_by_levels():
    """Levels add no key to the archive: the decoder needs nothing new (format unchanged)."""
    for chosen in PRESETS.values():
        assert set(json.loads(json.dumps(recorded(chosen.config())))) == set(recorded(AdaptationConfig()))
