"""``python -m voxstats``: the ``voxstats`` command."""

import sys

from voxstats.cli import main

sys.exit(main())
