"""The console script's entry point: a Ctrl-C that lands while torch is still loading.

pip's generated `osoa-zip` script imports its entry module before calling it, so
the entry module must be light: heavy imports (click, torch) happen inside
``run``.  An interrupt during them must end with one line, not a traceback, and
a KeyboardInterrupt raised there is not enough: inside torch's C extension
imports it can come out as another exception (seen: ``TypeError: expected a
message argument`` from torch._C._distributed_c10d).  So until the imports are
done, SIGINT ends the process at once; nothing has been written yet.
"""
import os
import signal
import sys

from .pause import pause_point


def _interrupted_while_loading(signum, frame) -> None:
    sys.stderr.write("osoa-zip: error: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def run() -> None:
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:  # a background job started with SIGINT ignored keeps ignoring it
        signal.signal(signal.SIGINT, _interrupted_while_loading)
    from .cli import main
    pause_point("loaded")  # test-only (pause.py)
    signal.signal(signal.SIGINT, previous)
    main()
