"""The bridge against plain pyzmq and a raw TCP socket: 1080p RGB frames over loopback.

    python benchmarks/bench_bridge.py                 # 3 rounds of 300 frames, about a minute
    python benchmarks/bench_bridge.py --quick         # one round of 100 frames
    python benchmarks/bench_bridge.py --repeats 5 --json out.json
    pytest benchmarks/bench_bridge.py --benchmark-only  # the header's per-message cost

Side by side in one run (shmarray/bridge/bench.py has the method): ``raw-tcp`` (sendall /
recv_into: the floor), ``pyzmq`` (PUSH send(copy=False) / PULL recv(copy=False) + one copy),
``bridge`` (a channel producer, ``Sender``, ``Receiver``, a channel consumer: four processes).
Throughput in frames/s at the receiving end, median of the rounds (interleaved), and the
latency of a stream paced at 60 frames/s, capture to receipt. The issue's targets: bridge >= 90 %
of pyzmq's throughput, paced p50 <= 5 ms. The same figures come from
``shmarray.bridge.bench.run()`` (a ``shmarray bench`` workload).

Run on an idle machine: the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from shmarray.bridge import bench, wire


def test_header_pack(benchmark: Any) -> None:
    """Packing a frame header (every frame the Sender sends)."""
    shape = (1080, 1920, 3)
    benchmark(wire.pack_frame, 1, 2, 3, 4, time.time_ns(), time.monotonic_ns(), 5, b"|u1",
              shape, int(np.prod(shape)))


def test_header_decode(benchmark: Any) -> None:
    """Validating and decoding a frame header (every message the Receiver gets)."""
    shape = (1080, 1920, 3)
    raw = wire.pack_frame(1, 2, 3, 4, 5, 6, 7, b"|u1", shape, int(np.prod(shape)))
    h = benchmark(wire.decode, raw)
    assert isinstance(h, wire.Header)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300, help="frames per throughput round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (median reported)")
    ap.add_argument("--fps", type=float, default=60.0, help="rate of the paced latency run")
    ap.add_argument("--latency-frames", type=int, default=180,
                    help="frames in the paced latency run")
    ap.add_argument("--size", default="1920x1080", help="frame size WxH (RGB, uint8)")
    ap.add_argument("--quick", action="store_true", help="100 frames, one round")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    fig = bench.run(frames=args.frames, repeats=args.repeats, shape=(h, w, 3), fps=args.fps,
                    latency_frames=args.latency_frames, quick=args.quick,
                    progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    fig["command"] = "python benchmarks/bench_bridge.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print(bench.table(fig))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(fig, f, indent=1)
        print(f"figures written to {args.json}")
    bad = any(r["bad"] or r["dropped"] for r in fig["throughput"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
