"""Broadcast fan-out of 1080p frames across processes: shmarray vs multiprocessing.Queue.

    python benchmarks/bench_broadcast.py                 # every case, about a minute
    python benchmarks/bench_broadcast.py --frames 300 --subscribers 1 2 4 --fps 60

Two measurements, each for 1, 2 and 4 subscriber processes that touch every byte of every
frame (a sum over the frame viewed as uint64):

- throughput: the producer sends frames as fast as the slowest subscriber allows; frames/s
  (first send to the last subscriber's last frame) and the producer's cost per frame (its
  CPU time, all threads, and its wall time per send);
- latency at a paced rate (60 frames/s): capture (the producer's CLOCK_MONOTONIC stamp: the
  frame's commit timestamp for shmarray, a stamp taken just before put() for the queue) to
  receipt, median and p99 over every frame of every subscriber.

shmarray: one broadcast channel, policy "block" (lossless, like the queues), capacity 8; the
producer copies each frame into a slot with send(), subscribers read it in place (recv(),
zero copy). multiprocessing.Queue: one queue per subscriber; the producer put()s the same
array into each (each put pickles it and its feeder thread writes it into a pipe).

Run on an idle machine; the figures are only comparable within one run. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from typing import Any

import numpy as np

SHAPE = (1080, 1920, 3)
NBYTES = int(np.prod(SHAPE))


def touch(a: np.ndarray) -> int:  # type: ignore[type-arg]
    """Read every byte of the frame."""
    return int(a.reshape(-1).view(np.uint64).sum(dtype=np.uint64))


# ---------------------------------------------------------------------------------------------
# subscriber processes


def shm_subscriber(name: str, ready: Any, out: Any) -> None:
    import shmarray

    ch = shmarray.Channel.open(name, timeout=30)
    sub = ch.subscribe()
    ready.wait(60)
    lat, n, cpu0 = [], 0, time.process_time()
    while True:
        try:
            frame = sub.recv(timeout=60)
        except shmarray.StreamEnded:
            break
        lat.append(time.monotonic_ns() - frame.timestamp_ns)
        with frame as view:
            touch(view)
        n += 1
    out.put({"n": n, "end": time.monotonic(), "lat": lat, "cpu": time.process_time() - cpu0,
             "lost": sub.stats()["lost"]})
    sub.close()
    ch.close()


def queue_subscriber(q: Any, ready: Any, out: Any) -> None:
    ready.wait(60)
    lat, n, cpu0 = [], 0, time.process_time()
    while True:
        item = q.get(timeout=60)
        if item is None:
            break
        stamp, arr = item
        lat.append(time.monotonic_ns() - stamp)
        touch(arr)
        n += 1
    out.put({"n": n, "end": time.monotonic(), "lat": lat, "cpu": time.process_time() - cpu0,
             "lost": 0})


# ---------------------------------------------------------------------------------------------
# one case


def run_case(transport: str, nsubs: int, frames: int, fps: float | None) -> dict[str, Any]:
    import shmarray

    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(nsubs + 1)
    out = ctx.Queue()
    src = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    procs: list[Any] = []
    ch = None
    queues: list[Any] = []
    try:
        if transport == "shmarray":
            ch = shmarray.Channel.create(None, slot_bytes=NBYTES, capacity=8, mode="broadcast",
                                         max_subscribers=nsubs, policy="block")
            procs = [ctx.Process(target=shm_subscriber, args=(ch.name, ready, out))
                     for _ in range(nsubs)]
        else:
            queues = [ctx.Queue(maxsize=8) for _ in range(nsubs)]
            procs = [ctx.Process(target=queue_subscriber, args=(q, ready, out)) for q in queues]
        for p in procs:
            p.start()
        ready.wait(60)  # every subscriber is in before the first frame
        period = 1.0 / fps if fps else 0.0
        send_wall = 0.0
        t0 = time.monotonic()
        cpu0 = time.process_time()
        for i in range(frames):
            if period:
                delay = t0 + i * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            src[0, 0, 0] = i & 255
            s = time.perf_counter()
            if ch is not None:
                ch.send(src, timeout=60)
            else:
                stamp = time.monotonic_ns()
                for q in queues:
                    q.put((stamp, src), timeout=60)
            send_wall += time.perf_counter() - s
        if ch is not None:
            ch.end()
        else:
            for q in queues:
                q.put(None, timeout=60)
        results = [out.get(timeout=300) for _ in procs]
        cpu = time.process_time() - cpu0  # includes the queues' feeder threads
        for p in procs:
            p.join(60)
        end = max(r["end"] for r in results)
        lat = np.concatenate([np.asarray(r["lat"], np.float64) for r in results]) / 1e6
        assert all(r["n"] + r["lost"] == frames for r in results), results
        return {
            "transport": transport, "subscribers": nsubs, "frames": frames, "fps_target": fps,
            "frames_per_s": frames / (end - t0),
            "producer_cpu_ms_per_frame": 1e3 * cpu / frames,
            "producer_send_ms_per_frame": 1e3 * send_wall / frames,
            "subscriber_cpu_ms_per_frame": 1e3 * float(np.mean([r["cpu"] / max(1, r["n"])
                                                                 for r in results])),
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
        }
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
        if ch is not None:
            ch.close()
            ch.unlink()


def floor_ms() -> dict[str, float]:
    """One 1080p memcpy and one touch() in this process: the physical floor per frame."""
    a = np.ones(SHAPE, np.uint8)
    b = np.empty_like(a)
    best_copy = best_touch = 1e9
    for _ in range(20):
        t = time.perf_counter()
        np.copyto(b, a)
        best_copy = min(best_copy, time.perf_counter() - t)
        t = time.perf_counter()
        touch(b)
        best_touch = min(best_touch, time.perf_counter() - t)
    return {"memcpy_ms": best_copy * 1e3, "touch_ms": best_touch * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=200, help="frames per throughput case")
    ap.add_argument("--latency-frames", type=int, default=300, help="frames per latency case")
    ap.add_argument("--fps", type=float, default=60.0, help="paced rate of the latency cases")
    ap.add_argument("--subscribers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--transports", nargs="+", default=["shmarray", "mp.Queue"])
    ap.add_argument("--json", help="also write the records to this file")
    args = ap.parse_args(argv)
    fl = floor_ms()
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}; 1080p RGB = {NBYTES:,} B; floor in one process: memcpy "
          f"{fl['memcpy_ms']:.2f} ms, touch {fl['touch_ms']:.2f} ms")
    records = []
    print("\n## throughput (as fast as the slowest subscriber allows)")
    print(f"{'transport':10s} {'subs':>4s} {'frames/s':>9s} {'prod CPU ms/f':>14s} "
          f"{'prod send ms/f':>15s} {'sub CPU ms/f':>13s}")
    for k in args.subscribers:
        for tr in args.transports:
            r = run_case(tr, k, args.frames, None)
            records.append(r)
            print(f"{tr:10s} {k:4d} {r['frames_per_s']:9.1f} "
                  f"{r['producer_cpu_ms_per_frame']:14.2f} {r['producer_send_ms_per_frame']:15.2f}"
                  f" {r['subscriber_cpu_ms_per_frame']:13.2f}", flush=True)
    print(f"\n## latency at {args.fps:g} frames/s (capture -> receipt)")
    print(f"{'transport':10s} {'subs':>4s} {'p50 ms':>8s} {'p99 ms':>8s} {'prod CPU ms/f':>14s}")
    for k in args.subscribers:
        for tr in args.transports:
            r = run_case(tr, k, args.latency_frames, args.fps)
            records.append(r)
            print(f"{tr:10s} {k:4d} {r['latency_ms_p50']:8.2f} {r['latency_ms_p99']:8.2f} "
                  f"{r['producer_cpu_ms_per_frame']:14.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"floor": fl, "records": records, "argv": sys.argv}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
