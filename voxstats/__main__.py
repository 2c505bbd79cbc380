"""``python -m voxstats``: the ``voxstats`` command."""

import sys

from voxstats.cli import main

if __name__ == "__main__":
    sys.exit(main())
