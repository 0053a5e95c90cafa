"""``python -m convgen``: the command line (see :mod:`convgen.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
