"""Compress the bundled examples, decompress them, and verify the round trip.

  python scripts/demo.py            (what `make demo` runs)
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from osoa_zip.verify import tree_differences

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        archive, restored = Path(work) / "examples.osoa", Path(work) / "restored"
        cli = [sys.executable, "-m", "osoa_zip"]
        subprocess.run(cli + ["compress", str(EXAMPLES), str(archive)], check=True)
        subprocess.run(cli + ["decompress", str(archive), str(restored)], check=True)
        original = sum(p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file())
        print(f"{EXAMPLES}: {original} bytes -> {archive.stat().st_size} bytes archive")
        problems = tree_differences(EXAMPLES, restored)
        for problem in problems:
            print(problem)
        print("round trip: " + ("FAILED" if problems else "exact"))
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
