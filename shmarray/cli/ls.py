"""``shmarray ls`` and ``shmarray clean``: the objects in /dev/shm, their owners' liveness, and
removing what dead owners left behind."""

from __future__ import annotations

import argparse

from .._os import registry as _registry
from ..channel import describe as _describe  # noqa: F401  (the channel detail in `ls`)


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_ls(args: argparse.Namespace) -> int:
    entries = _registry.scan()
    if not entries:
        print("no shmarray objects in /dev/shm")
        return 0
    rows = [("NAME", "KIND", "SIZE", "OWNER", "STATE", "AGE", "DETAIL")]
    for e in entries:
        detail = e.detail
        if e.problem:
            detail = (detail + "; " if detail else "") + e.problem
        rows.append((e.name, e.kind, _fmt_size(e.size), str(e.owner_pid or "-"), e.state,
                     e.age(), detail))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6])
    dead = sum(1 for e in entries if e.alive is False)
    if dead:
        print(f"\n{dead} object(s) with a dead owner: 'shmarray clean' removes them")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    problems = _registry.clean(args.names or None, force=args.force, dry_run=args.dry_run)
    return 1 if problems else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ls", help="list every shmarray object with its owner's liveness")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("clean", help="remove objects whose owner died (or the NAMEs given)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed")
    p.add_argument("--force", action="store_true", help="also remove a live owner's NAMEs")
    p.set_defaults(func=cmd_clean)
