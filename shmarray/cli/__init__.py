"""The ``shmarray`` command: one module per command family (ls and clean, demo, bench, top), and
the integrations' commands (bridge).

A new command is a module here with an ``add_parser(subparsers)`` (or ``add_parsers``) that
sets ``func``; ``main`` wires it in. Integrations (bridge, ...) live in their own packages and
expose the same hook.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shmarray", description="Zero-copy shared-memory numpy arrays and channels (Linux).")
    sub = parser.add_subparsers(dest="command", required=True)
    from .. import bridge
    from . import bench, demo, ls, top

    ls.add_parsers(sub)
    demo.add_parser(sub)
    bench.add_parser(sub)
    top.add_parser(sub)
    bridge.add_parser(sub)  # (imports no zmq until it runs)
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
