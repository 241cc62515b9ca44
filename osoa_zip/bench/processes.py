"""Run one codec job as its own process and measure it the way a user would feel it.

Wall-clock seconds from start to exit (interpreter start-up and imports
included) and the job's peak resident set size from the kernel's accounting
(os.wait4).  Linux carries a process's peak RSS across fork and exec, so a
job forked straight from the benchmark (torch loaded, hundreds of MB) would
report at least the benchmark's own size.  Each job is therefore started by
a small stdlib-only launcher (``LAUNCHER``) that spawns it, waits for it and
writes its seconds and peak RSS to a file: the job inherits only the
launcher's few MB.  For a shell pipeline (tar | xz) Linux reports the largest
of the shell and the children it reaped.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import BenchError

# Runs as `python -I -c LAUNCHER REPORT ARGV...`: spawn ARGV, wait, write JSON to REPORT.
LAUNCHER = """
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
scale = 1 << 20 if sys.platform == "darwin" else 1 << 10  # ru_maxrss: bytes on macOS, KiB on Linux
with open(report, "w") as handle:
    json.dump({"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / scale}, handle)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


class JobFailed(BenchError):
    """A measured child process exited with an error."""


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float   # MiB
    stdout: bytes


def run_measured(argv: list[str], env: dict | None = None) -> Measured:
    """Run argv to completion; raise JobFailed (with the last line of its stderr) if it fails."""
    with tempfile.TemporaryDirectory(prefix="osoa-bench-job-") as work:
        report = Path(work) / "report.json"
        job = subprocess.run([sys.executable, "-I", "-c", LAUNCHER, str(report), *argv], stdin=subprocess.DEVNULL,
                             capture_output=True, env=env)
        if job.returncode != 0 or not report.is_file():
            message = job.stderr.decode("utf-8", "replace").strip().splitlines()
            raise JobFailed(f"{' '.join(argv[:5])} ... exited with {job.returncode}: "
                            f"{message[-1] if message else 'no message'}")
        measured = json.loads(report.read_text())
        return Measured(measured["seconds"], measured["peak_rss_mb"], job.stdout)


def osoa_zip_command(*arguments: str) -> list[str]:
    """The osoa-zip command line of this interpreter (the installed package, whatever PATH holds)."""
    return [sys.executable, "-m", "osoa_zip", *arguments]
