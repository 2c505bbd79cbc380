"""``python -m qsm``: the ``qsm`` command line."""

import sys

from qsm.cli import main

sys.exit(main())
