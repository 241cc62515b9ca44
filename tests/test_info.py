"""`osoa-zip info`: a readable summary for people, `--json` one object for scripts (issue #17)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_golden import GOLDEN

from osoa_zip.cli import main
from osoa_zip.table import read_archive

ARCHIVES = sorted(path.name for path in GOLDEN.glob("format-1.*.osoa"))


@pytest.mark.parametrize("name", ARCHIVES)
def test_info_json_is_the_stored_header_plus_totals(name):
    path = GOLDEN / name
    result = CliRunner().invoke(main, ["info", "--json", str(path)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)  # the whole output is one JSON object
    header, entries, batches = read_archive(path.open("rb"))
    assert {key: info[key] for key in header} == header
    assert set(info) == set(header) | {"format", "totals"}
    assert name.startswith(f"format-{info['format']}-")
    assert info["engine"]["version"] == header["engine"]["version"]  # issue #15 reads engine.version
    totals = info["totals"]
    assert totals["entries"] == len(entries) and totals["batches"]["count"] == len(batches)
    assert totals["images"] == sum(entry.kind == "image" for entry in entries)
    assert totals["file_bytes"] == sum(entry.size for entry in entries if entry.kind == "file")


@pytest.mark.parametrize("name", ARCHIVES[:1] + ARCHIVES[-1:])
def test_info_for_people(name):
    result = CliRunner().invoke(main, ["info", str(GOLDEN / name)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    creator = read_archive((GOLDEN / name).open("rb"))[0]["creator"]
    assert lines[0].endswith(f"osoa-zip archive, format {name.split('-')[1]}, written by {creator}")
    labels = [line.split(":")[0] for line in lines[1:] if not line.startswith(" ")]
    assert labels[:3] == ["model", "engine", "entries"] and labels[-1] == "adaptation"
    assert not result.output.lstrip().startswith("{")  # not JSON
