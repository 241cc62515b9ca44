"""Fuzzing the reader: random bytes, bit flips, truncations, and re-framed chunk edits.

Every case must end in a correct decode, refused entries (the rest restored)
or a one-line ArchiveError with nothing left behind (tests/fuzzing.py has the
contract).  Damage to the bytes (flips, cuts, garbage) must always be an
archive-level error: every byte is covered by a CRC or the END digest.  Chunk
edits re-framed with valid CRCs and END digest (tests/crafting.py) get past
the framing and test the decoder's own logic.

The default suite samples; `-m slow` sweeps every byte and every offset.
The coverage-guided harness is tests/fuzz/fuzz_reader.py.
"""
from __future__ import annotations

import io
import itertools

import pytest
from click.testing import CliRunner
from crafting import Crafted, build_source, chunk_spans, frame
from fuzzing import Tally, check_decode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osoa_zip.adapt.config import AdaptationConfig
from osoa_zip.archive import compress
from osoa_zip.cli import main

TALLY = Tally()
HYPOTHESIS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                            HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\n[fuzz] {TALLY.cases} cases: {TALLY.outcomes}")


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return build_source(tmp_path_factory.mktemp("fuzz") / "src")


@pytest.fixture(scope="module")
def archive(original) -> bytes:
    """A ~2 KB archive with every entry kind (its files in a solid block) and two adapted image batches."""
    output = io.BytesIO()
    compress([original], output, model="idf-tiny-test", adaptation=AdaptationConfig(tile_size=16, batch_size=4,
                                                                                    batch_pixels=0), triage=False)
    return output.getvalue()


class Cases:
    """Numbered work folders below one tmp_path, and the tally."""

    def __init__(self, tmp_path, original):
        self.tmp_path, self.original, self.counter = tmp_path, original, itertools.count()

    def check(self, data: bytes, expect=("ok", "refused", "error"), original=True, subset=False) -> str:
        verdict = check_decode(data, self.tmp_path / f"case{next(self.counter)}",
                               self.original if original else None, expect, subset)
        TALLY.add(verdict)
        return verdict


@pytest.fixture
def cases(tmp_path, original):
    return Cases(tmp_path, original)


def test_the_archive_itself_decodes(archive, cases):
    assert cases.check(archive) == "ok"


# -- damaged bytes: always an archive-level error ---------------------------------

def _flip(data: bytes, position: int, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    return bytes(damaged)


def _bit_flip_sweep(archive, cases, step):
    for position in range(0, len(archive), step):
        cases.check(_flip(archive, position, position % 8), expect=("error",))


def _truncation_sweep(archive, cases, step):
    for cut in list(range(0, len(archive), step)) + [len(archive) - 1]:
        cases.check(archive[:cut], expect=("error",))


def test_bit_flips_sampled(archive, cases):
    _bit_flip_sweep(archive, cases, step=41)


def test_truncations_sampled(archive, cases):
    _truncation_sweep(archive, cases, step=53)


@pytest.mark.slow
def test_bit_flip_at_every_byte(archive, cases):
    _bit_flip_sweep(archive, cases, step=1)


@pytest.mark.slow
def test_truncation_at_every_offset(archive, cases):
    _truncation_sweep(archive, cases, step=1)


@settings(HYPOTHESIS, max_examples=60)
@given(data=st.binary(max_size=400))
def test_random_bytes(data, cases):
    cases.check(data, expect=("error",))


@settings(HYPOTHESIS, max_examples=40)
@given(tail=st.binary(max_size=600))
def test_random_bytes_after_a_valid_preamble(archive, tail, cases):
    cases.check(archive[:12] + tail, expect=("error",))


@settings(HYPOTHESIS, max_examples=40)
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(0, 10 ** 6))
def test_random_byte_edits(archive, edits, cut, cases):
    damaged = bytearray(archive)
    for position, mask in edits:
        damaged[position % len(damaged)] ^= mask
    if cut is not None:
        damaged = damaged[:cut % len(damaged)]
    cases.check(bytes(damaged), expect=("ok",) if damaged == archive else ("error",))  # edits may cancel out


# -- chunk edits with valid CRCs and END digest: the decoder's own logic ----------

def test_every_pair_of_chunks_swapped(archive, cases):
    """All (i, j) swaps of whole chunks; the rest of the archive as written."""
    chunks = Crafted.parse(archive).chunks
    for i, j in itertools.combinations(range(len(chunks)), 2):
        swapped = list(chunks)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        cases.check(frame(swapped), subset=True)


def test_every_chunk_duplicated_and_dropped(archive, cases):
    chunks = Crafted.parse(archive).chunks
    for i in range(len(chunks)):
        cases.check(frame(chunks[:i + 1] + chunks[i:]))
        cases.check(frame(chunks[:i] + chunks[i + 1:]), subset=True)  # an entry may simply be absent


def test_every_chunk_moved_to_every_place(archive, cases):
    chunks = Crafted.parse(archive).chunks
    for i in range(len(chunks)):
        rest = chunks[:i] + chunks[i + 1:]
        for j in range(len(rest) + 1):
            if j != i:
                cases.check(frame(rest[:j] + [chunks[i]] + rest[j:]), subset=True)


def test_whole_entries_duplicated(archive, cases):
    """An entry with its DATA chunks copied: a duplicate name, refused; everything else restored."""
    crafted = Crafted.parse(archive)
    for name in ("b.bin", "docs", "docs/a.txt", "docs/link-to-a", "hard-b.bin"):
        assert cases.check(crafted.copy().duplicate(name).build()) == "refused", name


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats()
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(HYPOTHESIS, max_examples=120)
@given(which=st.integers(0, 100), key=st.sampled_from(
    ["path", "mode", "mtime_ns", "size", "chunks", "target", "height", "width", "image_mode", "format",
     "png_before", "png_after", "sha256", "path_b64", "engine", "adaptation", "model", "batches", "offset", "codec",
     "files"]),
    value=JSON_VALUES)
def test_entry_fields_replaced(archive, which, key, value, cases):
    """Any JSON value in any field of any entry (or the header): a verdict, never a crash."""
    crafted = Crafted.parse(archive)
    indexes = [i for i, tag in enumerate(crafted.tags) if tag in (b"HEAD", b"FILE", b"DIRE", b"LINK", b"HARD",
                                                                    b"IMGS", b"BLCK", b"STAT")]
    index = indexes[which % len(indexes)]
    entry = crafted.value(index)
    if crafted.tags[index] == b"BLCK" and which % 2:  # a field of one of the block's files
        entry_list = entry["files"]
        target = entry_list[which % len(entry_list)]
    else:
        target = entry[which % len(entry)] if isinstance(entry, list) else entry
    target[key] = value
    crafted.set_value(index, entry)
    cases.check(crafted.build(), original=False)


@settings(HYPOTHESIS, max_examples=80)
@given(which=st.integers(0, 100), payload=st.binary(max_size=300))
def test_chunk_payload_replaced(archive, which, payload, cases):
    """Any bytes as the payload of any chunk (correctly framed): a verdict, never a crash."""
    crafted = Crafted.parse(archive)
    index = which % len(crafted.chunks)
    crafted.chunks[index] = (crafted.chunks[index][0], payload)
    cases.check(crafted.build(), original=False)


@settings(HYPOTHESIS, max_examples=40)
@given(which=st.integers(0, 100), value=JSON_VALUES)
def test_entry_replaced_by_any_json(archive, which, value, cases):
    crafted = Crafted.parse(archive)
    indexes = [i for i, tag in enumerate(crafted.tags) if tag in (b"FILE", b"DIRE", b"LINK", b"HARD", b"IMGS",
                                                                    b"BLCK")]
    crafted.set_value(indexes[which % len(indexes)], value)
    cases.check(crafted.build(), original=False)


# -- the command line on damaged archives: exit 1, one line per problem, no traceback

@pytest.mark.parametrize("damage", ["flip-head", "flip-batch", "cut", "swap", "duplicate-entry"])
def test_cli_verdicts(archive, tmp_path, damage):
    spans = chunk_spans(archive)
    crafted = Crafted.parse(archive)
    if damage == "flip-head":
        data = _flip(archive, spans[0][0] + 20, 3)
    elif damage == "flip-batch":
        data = _flip(archive, spans[crafted.index(b"BATC")][0] + 14, 0)
    elif damage == "cut":
        data = archive[:len(archive) * 2 // 3]
    elif damage == "swap":
        first = crafted.index(b"BATC")
        crafted.chunks[first], crafted.chunks[first + 1] = crafted.chunks[first + 1], crafted.chunks[first]
        data = crafted.build()
    else:
        data = crafted.duplicate("docs/link-to-a").build()  # one entry (a.txt is in a solid block with others)
    path = tmp_path / "damaged.osoa"
    path.write_bytes(data)
    for command in (["decompress", str(path), str(tmp_path / "out")], ["test", str(path)]):
        result = CliRunner().invoke(main, command)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
            result.exception
        assert result.exit_code == 1, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert lines and all(line.startswith("osoa-zip: error: ") for line in lines), result.stderr
        assert "Traceback" not in result.stderr
        if damage == "duplicate-entry":
            assert len(lines) == 1 and "'docs/link-to-a'" in lines[0]
        TALLY.add("cli")
    if damage == "duplicate-entry":
        assert (tmp_path / "out" / "img0.png").exists()
    else:
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.osoa"] + (
        ["out"] if damage == "duplicate-entry" else [])


def test_json_helper_round_trips(archive):
    """Sanity check of the crafting helper: re-framing changes nothing."""
    crafted = Crafted.parse(archive)
    assert crafted.build() == archive
    assert crafted.value(0)["model"]["name"] == "idf-tiny-test"
