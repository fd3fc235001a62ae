"""``python -m quorumlock``: the command line (see :mod:`quorumlock.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
