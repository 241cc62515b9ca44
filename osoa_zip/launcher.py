"""The console script's entry point: a Ctrl-C that lands while torch is still loading, and an
exit that does not wait for torch's tear-down.

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

from . import heap
from .pause import pause_point


def _interrupted_while_loading(signum, frame) -> None:
    sys.stderr.write("osoa-zip: error: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def run() -> None:
    # numpy's OpenBLAS starts a thread per core when it loads, which spins for a while on a core
    # the worker process needs (~0.07 CPU s each); osoa-zip makes no BLAS call through numpy.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    heap.keep_freed_blocks()
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:  # a background job started with SIGINT ignored keeps ignoring it
        signal.signal(signal.SIGINT, _interrupted_while_loading)
    from .cli import main
    pause_point("loaded")  # test-only (pause.py)
    signal.signal(signal.SIGINT, previous)
    run_and_exit(main)


def run_and_exit(main) -> None:
    """Run the command line's ``main`` and end the process with its status (``_exit``)."""
    try:
        main()
    except SystemExit as leaving:
        _exit(leaving.code)
    _exit(0)


def _exit(code) -> None:
    """End the process with ``code`` as ``sys.exit`` would.  Once torch is loaded, the
    interpreter's tear-down takes ~0.4 s (torch's modules and native state) and saves nothing:
    the command's files are closed and its worker processes stopped before ``main`` returns.
    So after flushing the standard streams the process ends at once.  Without torch (`list`,
    `info`, `--help`, ...), or with a Dask client (whose own exit handlers close its
    connections), the normal exit."""
    if "torch" not in sys.modules or "distributed" in sys.modules:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or broken stream: the normal exit reports it
        sys.exit(code)
    os._exit(status)
