"""``shmarray top``: a live view of every channel on this machine, refreshed once a second.

For each channel: mode, fill of the ring, frames/s and MB/s committed, drops, waiters, end of
stream; under it each participant (producer, consumers, subscribers): pid, liveness, frames/s
and MB/s, waits/s, lag and losses. Everything comes from counters in the segments (relaxed
per-participant counts the core keeps anyway: csrc/chan.h), read through read-only mappings:
watching never registers, writes or slows anything.

    shmarray top               # live; q (or Ctrl-C) quits; rich draws it when installed
    shmarray top --once        # one table after one interval, for scripts
    shmarray top --json        # JSON lines, one per interval (with --once: one object)

The screen is drawn with ``rich`` when it is installed (``pip install 'shmarray[top]'``);
without it, a plain table is reprinted each interval.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from typing import Any, Iterator

from .._os import names as _names
from ..channel import describe as _describe

__all__ = ["add_parser", "sample", "rates"]


def sample() -> dict[str, dict[str, Any]]:
    """Every ready channel's snapshot (see channel.describe.read), by name, with the time
    (``t``, time.monotonic()) it was read at."""
    out: dict[str, dict[str, Any]] = {}
    for fn in sorted(os.listdir(_names.SHM_DIR)):
        name = _names.from_segment_file(fn)
        if name is None:
            continue
        snap = _describe.read(name)
        if snap is not None:
            snap["t"] = time.monotonic()
            out[name] = snap
    return out


def rates(prev: dict[str, dict[str, Any]], cur: dict[str, dict[str, Any]]
          ) -> list[dict[str, Any]]:
    """One row per channel of ``cur``, with rates over the interval since ``prev`` (per
    second; None for a channel or participant not seen before): the channel's committed
    frames/s and MB/s, and each participant's frames/s, MB/s and waits/s (sleeps: a waits/s
    near frames/s means the participant sleeps for every frame). ``lag`` (frames behind the
    producer) is meaningful for broadcast subscribers."""
    rows = []
    for name, c in cur.items():
        p = prev.get(name)
        same = p is not None and p["nonce"] == c["nonce"]
        dt = c["t"] - p["t"] if same and p is not None else 0.0
        # one registration: the entry, its pid and when it joined (a process that closes and
        # opens again re-takes its entry with counters from zero)
        ppeers = ({(r["index"], r["pid"], r["joined_ns"]): r for r in p["peers"]}
                  if same and p else {})
        peers = []
        for r in c["peers"]:
            q = ppeers.get((r["index"], r["pid"], r["joined_ns"]))
            row = dict(r)
            if q is not None and dt > 0:
                row["frames_per_s"] = (r["frames"] - q["frames"]) / dt
                row["mb_per_s"] = (r["bytes"] - q["bytes"]) / dt / 1e6
                row["waits_per_s"] = (r["waits"] - q["waits"]) / dt
            else:
                row["frames_per_s"] = row["mb_per_s"] = row["waits_per_s"] = None
            peers.append(row)
        produced = [x for x in peers if x["role"] == "producer" and x["mb_per_s"] is not None]
        # (a producer new since the last sample has no rate yet: the channel's MB/s counts
        # the others)
        ch = {k: v for k, v in c.items() if k not in ("peers", "t")}
        ch["peers"] = peers
        ch["frames_per_s"] = ((c["committed"] - p["committed"]) / dt
                              if same and p is not None and dt > 0 else None)
        ch["mb_per_s"] = sum(x["mb_per_s"] for x in produced) if produced else None
        rows.append(ch)
    return rows


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.3g} M{unit}"
    if x >= 1e3:
        return f"{x / 1e3:.3g} k{unit}"
    return f"{x:.3g}{unit}" if x else f"0{unit}"


def _lines(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The table as cells: a channel row, then one row per participant (indented)."""
    out = [["CHANNEL / PARTICIPANT", "MODE", "PID", "STATE", "FRAMES/S", "MB/S", "FILL",
            "WAITS/S", "LAG", "DROPPED/LOST", "END"]]
    for ch in rows:
        mode = ch["mode"] if ch["mode"] != "broadcast" else f"bcast {ch['policy']}"
        out.append([ch["name"], mode, str(ch["owner_pid"]), "", _num(ch["frames_per_s"]),
                    _num(ch["mb_per_s"]), f"{ch['fill']}/{ch['capacity']}", "", "",
                    str(ch["dropped"]), "ended" if ch["ended"] else ""])
        for r in ch["peers"]:
            state = ("alive" if r["alive"] else "dead") if r["state"] in ("active", "joining") \
                else r["state"]
            who = "subscriber" if ch["mode"] == "broadcast" and r["role"] == "consumer" \
                else r["role"]
            lost = (f"{r.get('dropped', 0)}/{r.get('lost', 0)}" if r["role"] == "consumer"
                    else "")
            out.append([f"  {who} #{r['index']}", "", str(r["pid"]), state,
                        _num(r["frames_per_s"]), _num(r["mb_per_s"]), "",
                        _num(r["waits_per_s"]),
                        str(r["lag"]) if ch["mode"] == "broadcast" and "lag" in r else "",
                        lost, ""])
    return out


def render_plain(rows: list[dict[str, Any]]) -> str:
    """The table as aligned text (no terminal codes)."""
    if not rows:
        return "no shmarray channels in /dev/shm"
    cells = _lines(rows)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    right = {4, 5, 6, 7, 8, 9}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in cells)


def _render_rich(rows: list[dict[str, Any]], interval: float) -> Any:
    from rich.table import Table

    cells = _lines(rows)
    table = Table(title=f"shmarray top: {len(rows)} channel(s), every {interval:g} s; q quits",
                  title_justify="left", expand=False)
    for i, head in enumerate(cells[0]):
        table.add_column(head, justify="right" if i in {4, 5, 6, 7, 8, 9} else "left",
                         no_wrap=True)
    for r in cells[1:]:
        style = "bold" if not r[0].startswith("  ") else ("red" if r[3] == "dead" else None)
        table.add_row(*r, style=style)
    return table


def _ticks(interval: float) -> Iterator[list[dict[str, Any]]]:
    """Rows with rates, one list per interval, forever."""
    prev = sample()
    while True:
        time.sleep(interval)
        cur = sample()
        yield rates(prev, cur)
        prev = cur


class _Keys:
    """'q' from a terminal (cbreak mode, restored on exit); nothing when stdin is not one."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
        self.saved: Any = None

    def __enter__(self) -> _Keys:
        if self.fd >= 0:
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def quit(self) -> bool:
        if self.fd < 0:
            return False
        while select.select([self.fd], [], [], 0)[0]:
            if os.read(self.fd, 1) in (b"q", b"Q"):
                return True
        return False


def main(args: argparse.Namespace) -> int:
    interval = args.interval
    if not 0.05 <= interval <= 3600:
        print("shmarray top: --interval must be 0.05..3600 seconds", file=sys.stderr)
        return 2
    ticks = _ticks(interval)
    if args.once:
        rows = next(ticks)
        print(json.dumps({"channels": rows}) if args.json else render_plain(rows))
        return 0
    try:
        if args.json:
            for rows in ticks:
                print(json.dumps({"channels": rows}), flush=True)
        try:
            import rich.live
        except ImportError:
            has_rich = False
        else:
            has_rich = True
        with _Keys() as keys:
            if has_rich:
                with rich.live.Live(_render_rich([], interval), auto_refresh=False) as live:
                    for rows in ticks:
                        live.update(_render_rich(rows, interval), refresh=True)
                        if keys.quit():
                            break
            else:
                for rows in ticks:
                    # the plain fallback: clear the screen and reprint
                    sys.stdout.write("\x1b[H\x1b[2J" + render_plain(rows)
                                     + "\n\n(q quits; pip install rich for a nicer screen)\n")
                    sys.stdout.flush()
                    if keys.quit():
                        break
    except KeyboardInterrupt:
        pass
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("top", help="live view of every channel: rates, fill, drops, peers",
                       description="A live view of every shmarray channel on this machine, "
                                   "refreshed every --interval seconds: frames/s and MB/s per "
                                   "participant, fill, drops, waits, liveness. q quits.")
    p.add_argument("--once", action="store_true",
                   help="print one table (rates over one interval) and exit")
    p.add_argument("--json", action="store_true",
                   help="JSON instead of a table: one object per interval")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes, and the window of every rate (default 1)")
    p.set_defaults(func=main)
