"""``python -m shmarray.bridge send|recv ...``: the same as ``shmarray bridge send|recv ...``."""

import sys

from .cli import run_cli

sys.exit(run_cli())
