"""Test-only: hold the process at a named point, so that a test can signal it there.

Tests of what a kill or a Ctrl-C leaves behind must land their signal while the
work is under way; a fixed delay or an input "large enough" lands it after the
process has finished on a fast machine, and before it started on a loaded one.
With ``OSOA_ZIP_TEST_PAUSE_AT=<point>`` in the environment the process writes
one line, ``osoa-zip: test pause at <point>``, to standard error the first time
it reaches that point and then sleeps (for ``PAUSE_SECONDS``, then goes on), so
the test knows the moment has come and the signal cannot arrive too late.

Points (each reached in the main thread, so that SIGINT interrupts the sleep):

    loaded            the command line's modules (torch too) are imported; SIGINT still ends
                      the process at once, as while they load (launcher.py)
    compress-batch    compress has written a batch of coded images into its temporary archive
    decompress-entry  decompress has restored an entry into its staging folder

Without the variable (as users run it) a point costs one dictionary look-up.
Not a user setting: it is not documented as one and may change with the tests.
"""
from __future__ import annotations

import os
import sys
import time

VARIABLE = "OSOA_ZIP_TEST_PAUSE_AT"
PAUSE_SECONDS = 600.0  # longer than any test waits; a forgotten variable still lets the process finish

_paused: set[str] = set()


def pause_point(name: str) -> None:
    """Pause here if the environment names this point (once per process)."""
    if os.environ.get(VARIABLE) != name or name in _paused:
        return
    _paused.add(name)
    sys.stderr.write(f"osoa-zip: test pause at {name}\n")
    sys.stderr.flush()
    time.sleep(PAUSE_SECONDS)
