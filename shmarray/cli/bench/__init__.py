"""``shmarray bench``: every way of moving numpy arrays between processes, side by side.

One methodology over every transport it finds (shmarray channels, multiprocessing's Queue,
Pipe and shared_memory, and, when installed, faster-fifo, pyzmq and iceoryx2): latency by
ping-pong, throughput by streaming, fan-out to N subscribers, each in freshly spawned
processes, next to the floor of the machine measured in the same run (a C probe). Prints a
table; ``--json`` and ``--plot`` write the records and a PNG.

    shmarray bench --quick                  # under 30 s
    shmarray bench --only shmarray --only mp.Queue --json out.json

Modules: transports (one class per transport), runner (processes, timing, statistics),
floor (the C probe and memcpy), wake (await-wake latency of asyncio consumers), report
(table, JSON, plot, progress).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from . import floor as _floor
from . import report, runner
from . import transports as _transports
from . import wake as _wake

__all__ = ["add_parser", "main", "run"]

ERROR_STATUSES = ("error", "timeout", "corrupt", "lost")


def run(plan: runner.Plan, *, progress: report.Progress | None = None,
        command: str = "shmarray bench") -> dict[str, Any]:
    """Measure the floor and every item of ``plan``; returns {machine, floor, records,
    elapsed_s, command, table}. Spawns processes; never raises for a failing transport (its
    records say "error" or "timeout")."""
    t0 = time.monotonic()
    mach = report.machine()
    if progress is not None:
        progress.update(0, 1, "floor: C probe and memcpy")
    sizes: set[int] = set()
    for cls in plan.transports:
        for group in plan.items(cls.name, cls.fanout):
            sizes.update(item.nbytes for item in group if item.workload != "latency")
    floor = _floor.measure(sorted(sizes), quick=plan.quick)
    records = runner.run(plan, progress=progress)
    if "wake" in plan.workloads and any(plan.selected(m, "wake") for m in _wake.METHODS):
        if progress is not None:
            progress.note("await-wake latency: asyncio consumers, 1 frame per ms")
        records += _wake.measure(samples=400 if plan.quick else 3000)
    report.annotate(records, floor)
    elapsed = time.monotonic() - t0
    text = report.table(records, floor, mach, command, elapsed)
    return {"machine": mach, "floor": floor, "records": records, "elapsed_s": elapsed,
            "command": command, "table": text}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="compare shmarray with other transports on this machine",
        description="Run latency, throughput and fan-out benchmarks over every transport "
                    "available (shmarray, multiprocessing, and faster-fifo, pyzmq, iceoryx2 "
                    "when installed: pip install 'shmarray[bench]') and print a table with "
                    "the machine's floor and ratios against multiprocessing.Queue.")
    p.add_argument("--quick", action="store_true",
                   help="short runs and fewer sizes: under 30 s in all")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only transport/workload pairs containing TEXT, e.g. 'shmarray', "
                        "'latency', 'iceoryx2-spin/throughput' (repeatable: any of them)")
    p.add_argument("--sizes", metavar="LIST",
                   help="comma-separated frame sizes for every workload: byte counts "
                        "(4096, 4KiB, 2MiB) or labels (64B, 64KiB, 1MiB, 1080p, 4K)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="seconds per measurement (default 1.5, latency at most 1; "
                        "--quick 0.15)")
    p.add_argument("--json", metavar="PATH", help="write every record to PATH as JSON")
    p.add_argument("--plot", metavar="PATH",
                   help="write a PNG of throughput vs frame size and latency (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--list", action="store_true",
                   help="list the transports and whether each can run here, then exit")
    p.set_defaults(func=main)


def _plan(args: argparse.Namespace) -> runner.Plan:
    sizes = None
    if args.sizes:
        sizes = [runner.parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.duration is not None and not 0 < args.duration <= 60:
        raise ValueError("--duration must be in (0, 60] seconds")
    return runner.Plan(quick=args.quick, duration=args.duration, sizes=sizes, only=args.only)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (for the table's header)."""
    parts = ["shmarray", "bench"]
    if args.quick:
        parts.append("--quick")
    for o in args.only:
        parts += ["--only", o]
    for flag, value in (("--sizes", args.sizes), ("--duration", args.duration),
                        ("--json", args.json), ("--plot", args.plot)):
        if value is not None:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def main(args: argparse.Namespace) -> int:
    """The ``bench`` subcommand; returns the exit code (1 when a measurement failed)."""
    if args.list:
        for cls in _transports.ALL:
            why = cls.unavailable()
            state = "available" if why is None else f"unavailable: {why}"
            print(f"{cls.name:24} {state}")
        return 0
    try:
        plan = _plan(args)
    except ValueError as exc:
        print(f"shmarray bench: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("shmarray bench: --plot needs matplotlib, which is not installed: "
                  "pip install 'shmarray[bench]' (or pip install matplotlib)", file=sys.stderr)
            return 2
    command = _command(args)
    from ..._os.segment import cleanup_on_sigterm

    cleanup_on_sigterm()  # a SIGTERM unlinks this run's channels and stops its children
    progress = report.Progress(enabled=not args.no_progress)
    out = run(plan, progress=progress, command=command.strip())
    print(out["table"])
    if args.json:
        report.write_json(args.json, out["records"], out["floor"], out["machine"],
                          out["command"], out["elapsed_s"])
        print(f"\nrecords written to {args.json}")
    if args.plot:
        try:
            report.plot(args.plot, out["records"], out["floor"], out["machine"])
            print(f"plot written to {args.plot}")
        except report.PlotUnavailable as exc:
            print(f"shmarray bench: {exc}", file=sys.stderr)
            return 2
    return 1 if any(r["status"] in ERROR_STATUSES for r in out["records"]) else 0
