"""The console script's entry point: a Ctrl-C that lands while torch is still loading.

pip's generated `osoa-zip` script imports its entry module before calling it, so
the entry module must be light: the command line's imports (click, numpy,
Pillow) happen inside ``run``.  An interrupt during them must end with one
line, not a traceback, so until they are done SIGINT ends the process at once;
nothing has been written yet.  torch is imported later, only when a command
loads a model (torch_loading.py, which guards that import its own way: by then
there may be output to clean up).
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
