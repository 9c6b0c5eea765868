"""``python -m featcirc``: the command line."""

import sys

from featcirc.cli import main

sys.exit(main())
