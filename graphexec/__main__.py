"""``python -m graphexec``: the command line (see :mod:`graphexec.cli`)."""

import sys

from graphexec.cli import main

sys.exit(main())
