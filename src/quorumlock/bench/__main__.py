"""``python -m quorumlock.bench``: the same as ``quorumlock bench``."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
