import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while torch is still loading: no traceback either
    sys.stderr.write("osoa-zip: error: interrupted\n")
    sys.exit(130)

main()
