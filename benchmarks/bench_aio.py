"""Await-wake latency of an asyncio consumer, side by side with the ways to wait without
shmarray.aio and with the floor of an event-loop wake (shmarray/cli/bench/wake.py has the
method; ``shmarray bench`` prints the same rows as its "Await-wake" table).

    python benchmarks/bench_aio.py                  # 3000 frames per method, 12 s
    python benchmarks/bench_aio.py --samples 600 --json out.json

A producer process sends a 64-byte frame every --interval seconds (1 ms: the consumer is
asleep when each frame comes); each figure is the consumer's CLOCK_MONOTONIC when its code
runs minus the frame's commit timestamp. The methods take turns frame by frame, so that they
share every drift of the machine. The issue's target: shmarray.aio's median <= 25 us and
<= 1.2x the bare eventfd's. Run on an idle machine; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import sys

from shmarray.cli.bench import wake
from shmarray.cli.bench.runner import fmt_ns


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=3000, help="frames per method, in all")
    ap.add_argument("--interval", type=float, default=0.001, help="seconds between frames")
    ap.add_argument("--json", metavar="PATH", help="write the records as JSON")
    args = ap.parse_args()
    recs = wake.measure(args.samples, args.interval)
    print(f"await-wake, 1 frame per {args.interval * 1e3:g} ms, {args.samples} frames per "
          "method, the methods taking turns")
    print(f"{'consumer':18} {'median':>10} {'p99':>10} {'vs eventfd':>11}")
    for r in recs:
        if r["status"] != "ok":
            print(f"{r['transport']:18} {r['status']}: {r['error']}")
            continue
        print(f"{r['transport']:18} {fmt_ns(r['median']):>10} {fmt_ns(r['p99']):>10} "
              f"{r['vs_eventfd']:>10.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)
    return 1 if any(r["status"] != "ok" for r in recs) else 0


if __name__ == "__main__":
    sys.exit(main())
