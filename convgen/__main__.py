"""``python -m convgen``: the command line (see :mod:`convgen.cli.main`)."""

import sys

from convgen.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
