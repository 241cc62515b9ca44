"""The contract every decode keeps, checked for one (possibly hostile) archive.

Shared by the hypothesis and sweep tests (tests/test_fuzz.py) and the
coverage-guided harness (tests/fuzz/fuzz_reader.py).  For any input bytes,
`decompress` and `test` must end in one of:

* "ok": the archive decoded; with the original folder known, the restored
  tree is exactly the original;
* "refused": some entries were refused (RefusedEntries, one line each), the
  rest restored;
* "error": ArchiveError/ModelError with a one-line message, and nothing at
  all in DEST;

and never in another exception, a hang, a write outside DEST, a link in DEST
that leads out of it, or a staging/temporary folder left behind.  `test`
must reach the same verdict as `decompress`.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from osoa_zip.archive import ArchiveError, ModelError, RefusedEntries, decompress, test_archive
from osoa_zip.verify import tree_differences

CASE_SECONDS = 120  # a small archive decodes in well under a second; anything near this is a hang


class ContractBroken(AssertionError):
    pass


class _Timeout(BaseException):
    pass


@contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Tally:
    """What a fuzzing run saw (printed in the report and docs/SECURITY.md)."""

    cases: int = 0
    outcomes: dict = field(default_factory=dict)

    def add(self, outcome: str) -> None:
        self.cases += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def _verdict(run) -> tuple[str, str]:
    try:
        with time_limit(CASE_SECONDS):
            run()
    except _Timeout:
        raise ContractBroken(f"no verdict within {CASE_SECONDS} s (a hang)") from None
    except RefusedEntries as error:
        if not error.reasons or any(not r or "\n" in r for r in error.reasons):
            raise ContractBroken(f"refusal reasons are not one line each: {error.reasons!r}") from error
        return "refused", str(error)
    except (ArchiveError, ModelError) as error:
        message = str(error)
        if not message or "\n" in message:
            raise ContractBroken(f"error message is not one line: {message!r}") from error
        return "error", message
    except Exception as error:  # noqa: BLE001 — exactly what the contract forbids
        raise ContractBroken(f"{type(error).__name__}: {error}") from error
    return "ok", ""


def _links_stay_inside(destination: Path) -> None:
    root = destination.resolve()
    for path in destination.rglob("*"):
        if path.is_symlink():
            target = (path.parent / os.readlink(path)).resolve()
            if root != target and root not in target.parents:
                raise ContractBroken(f"restored link {path} leads out of DEST, to {target}")


def check_decode(data: bytes, workdir: Path, original: Path | None = None, expect: tuple[str, ...] = (
        "ok", "refused", "error"), subset: bool = False) -> str:
    """Decompress `data` into workdir/dest and `test` it; check the contract; return the verdict.

    With `original`, a successful decode must give exactly that tree (with `subset`,
    some of it: the archive may have lost entries, but what is restored is right)."""
    workdir.mkdir(parents=True)
    destination = workdir / "dest"
    try:
        verdict, message = _verdict(lambda: decompress(io.BytesIO(data), destination))
        leftovers = sorted(p.name for p in workdir.iterdir() if p.name != "dest")
        if leftovers:
            raise ContractBroken(f"{verdict}: left {leftovers} beside DEST (outside it, or staging)")
        if destination.exists():
            _links_stay_inside(destination)
            staging = [p.name for p in destination.iterdir() if p.name.startswith(".osoa-zip-")]
            if staging:
                raise ContractBroken(f"{verdict}: staging folder left in DEST: {staging}")
        if verdict == "error" and destination.exists() and any(destination.iterdir()):
            raise ContractBroken(f"error ({message}) but DEST holds {sorted(os.listdir(destination))}")
        if verdict == "ok" and original is not None:
            problems = [p for p in tree_differences(original, destination)
                        if not (subset and p.startswith("missing: "))]
            if problems:
                raise ContractBroken(f"decoded without error into a different tree: {problems[:5]}")
        tested, tested_message = _verdict(lambda: test_archive(io.BytesIO(data)))
        if tested != verdict:
            raise ContractBroken(f"decompress said {verdict} ({message}) but test said {tested} ({tested_message})")
        if verdict not in expect:
            raise ContractBroken(f"expected {' or '.join(expect)}, got {verdict} ({message})")
        return verdict
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
