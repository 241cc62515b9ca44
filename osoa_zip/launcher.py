"""The console script's entry point: catches a Ctrl-C that lands while torch is still loading.

pip's generated `osoa-zip` script imports its entry module before calling it, so
the entry module must be light: heavy imports (click, torch) happen inside
``run``, where an early interrupt still ends with one line, not a traceback.
"""
import sys


def run() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("osoa-zip: error: interrupted\n")
        sys.exit(130)
    main()
