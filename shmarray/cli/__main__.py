"""``python -m shmarray.cli``: the ``shmarray`` command."""

import sys

from . import main

sys.exit(main())
