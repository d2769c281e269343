"""Soak test: stream frames for a while, SIGKILL consumers at random moments, restart them, and
check that nothing was corrupted, delivered twice, or left behind.

    python benchmarks/soak.py                 # 60 s over one-to-one, work-queue, broadcast
    python benchmarks/soak.py --seconds 600 --modes work-queue --kill-every 0.2

This process owns each channel and produces: frames of random dtype and shape whose tag is
``(index << 32) | crc32(bytes)``. Consumers (or broadcast subscribers) are separate processes
started with ``-c``; each checks every frame's crc (and, for a subscriber, that its indices are
consecutive), then reports the index through a pipe (one atomic 8-byte write) BEFORE it releases
the frame. A random consumer is SIGKILLed every ``--kill-every`` seconds on average (anywhere:
inside recv, holding a lease, asleep in a wait) and a new one is started.

At the end of each mode:
- integrity errors: torn or corrupt frames, indices delivered twice (one-to-one, work queue),
  gaps in a subscriber's stream (broadcast, policy block) -- must be 0;
- frames not delivered must be accounted for as dropped by recovery (a dead holder's frames);
- leaks: once the owner unlinked the channel, no segment, semaphore or control queue of the
  run exists (checked without `shmarray clean`, which would hide a leak) -- must be 0.
Exit status 0 when every mode passes.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import posix_ipc

import shmarray

DTYPES = ["u1", "<i2", "<f4", ">f8", "<c8", "|b1", "<u4"]
SLOT_BYTES = 4096

CONSUMER = r"""
import os, signal, sys, zlib, numpy as np, shmarray
name, broadcast, out = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
ch = shmarray.Channel.open(name, timeout=10)
rx = ch.subscribe() if broadcast else ch
os.write(out, (2**64 - 1).to_bytes(8, "little"))  # "joined"
last = None
while True:
    try:
        f = rx.recv(timeout=30)
    except shmarray.StreamEnded:
        break
    with f as v:
        tag = int(f.tag)
        idx = tag >> 32
        if zlib.crc32(np.ascontiguousarray(v).view(np.uint8).tobytes()) != tag & 0xFFFFFFFF:
            idx |= 1 << 62  # corrupt
        elif broadcast and last is not None and idx != last + 1:
            idx |= 1 << 61  # a gap (or a repeat) in this subscriber's stream
        last = tag >> 32
        os.write(out, idx.to_bytes(8, "little"))  # reported before the release
rx.close()
"""


@dataclass
class Result:
    mode: str
    seconds: float = 0.0
    sent: int = 0
    delivered: int = 0  # distinct indices (broadcast: frame deliveries, summed)
    duplicates: int = 0
    corrupt: int = 0
    gaps: int = 0
    dropped: int = 0
    kills: int = 0
    restarts: int = 0
    leaks: list[str] = field(default_factory=list)
    unaccounted: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def integrity_errors(self) -> int:
        return self.duplicates + self.corrupt + self.gaps + self.unaccounted

    def ok(self) -> bool:
        return not self.integrity_errors and not self.leaks and not self.problems


class Consumer:
    """One consumer process and the thread that collects its reports."""

    def __init__(self, name: str, broadcast: bool) -> None:
        r, w = os.pipe()
        self.p = subprocess.Popen([sys.executable, "-c", CONSUMER, name, "1" if broadcast else "0",
                                   str(w)], pass_fds=(w,), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, cwd="/")
        os.close(w)
        self.reports: list[int] = []
        self.joined = threading.Event()
        self._r = r
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._r, "rb", buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    break
                buf += chunk
                n = len(buf) // 8
                for (v,) in struct.iter_unpack("<Q", buf[:n * 8]):
                    if v == 2**64 - 1:
                        self.joined.set()
                    else:
                        self.reports.append(v)
                buf = buf[n * 8:]
        self.joined.set()

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait(10)
        err = self.p.stderr.read().decode(errors="replace") if self.p.stderr else ""
        if self.p.stderr:
            self.p.stderr.close()
        self._t.join(10)
        return rc, err


def frame(rng: random.Random, idx: int) -> tuple[np.ndarray, int]:
    dt = np.dtype(DTYPES[idx % len(DTYPES)])
    n = rng.randrange(0, SLOT_BYTES // dt.itemsize + 1)
    shape: tuple[int, ...] = (n,) if idx % 3 else (1, n)
    data = np.frombuffer(rng.randbytes(n * dt.itemsize), dt).reshape(shape)
    return data, (idx << 32) | zlib.crc32(data.view(np.uint8).tobytes())


def ours(name: str) -> list[str]:
    return sorted(f for f in os.listdir("/dev/shm")
                  if f == f"shmarray.{name}" or f.startswith(f"sem.shmarray.{name}."))


def soak(mode: str, seconds: float, kill_every: float, consumers: int, seed: int) -> Result:
    res = Result(mode)
    rng = random.Random(seed)
    name = f"soak-{mode}-{os.getpid()}-{seed}"
    broadcast = mode == "broadcast"
    kw: dict[str, Any] = {"max_subscribers": consumers + 2} if broadcast else {}
    ch = shmarray.Channel.create(name, slot_bytes=SLOT_BYTES, capacity=16, mode=mode, **kw)
    objects = [ch._seg.control_name]
    n_live = 1 if mode == "one-to-one" else consumers
    live = [Consumer(name, broadcast) for _ in range(n_live)]
    if broadcast:
        for c in live:
            c.joined.wait(20)
    done: list[Consumer] = []
    t0 = time.monotonic()
    next_kill = t0 + rng.expovariate(1 / kill_every)
    idx = 0
    pending: tuple[np.ndarray, int] | None = None
    try:
        while time.monotonic() - t0 < seconds:
            if pending is None:
                pending = frame(rng, idx)
            try:
                ch.send(pending[0], tag=pending[1], timeout=0.05)
                idx += 1
                pending = None
            except (shmarray.WaitTimeoutError, shmarray.PeerDiedError):
                pass  # a consumer died or is being replaced: retry the same frame
            now = time.monotonic()
            if now >= next_kill:
                victim = live.pop(rng.randrange(len(live)))
                victim.kill()
                done.append(victim)
                res.kills += 1
                c = Consumer(name, broadcast)
                if broadcast:
                    c.joined.wait(20)  # joins at the newest frame: checked from there on
                live.append(c)
                res.restarts += 1
                next_kill = now + rng.expovariate(1 / kill_every)
        ch.end()
        res.sent = idx
        for c in live:
            rc, err = c.finish(60)
            if rc != 0:
                res.problems.append(f"a consumer exited {rc}: {err[-500:]}")
        for c in done:
            c.finish(10)
        res.dropped = int(ch.stats().get("dropped", 0))
    finally:
        for c in live + done:
            if c.p.poll() is None:
                c.kill()
                c.finish(10)
        ch.close()
        try:
            ch.unlink()
        except shmarray.NotFoundError:
            pass
    res.seconds = time.monotonic() - t0
    reports = [v for c in live + done for v in c.reports]
    res.corrupt = sum(1 for v in reports if v & (1 << 62))
    res.gaps = sum(1 for v in reports if v & (1 << 61))
    if broadcast:
        res.delivered = len(reports)
    else:
        seen: set[int] = set()
        for v in reports:
            i = v & 0xFFFFFFFF
            if i in seen:
                res.duplicates += 1
            seen.add(i)
        res.delivered = len(seen)
        # every frame not delivered was dropped by recovery (held or being taken by the dead)
        res.unaccounted = max(0, res.sent - res.delivered - res.dropped)
    # leaks: nothing of the run is left once the owner unlinked it (segment, semaphores,
    # queue) -- checked without `shmarray clean`, which would hide a leak
    res.leaks = ours(name)
    for o in objects:
        try:
            (posix_ipc.MessageQueue if o.endswith(".ctl") else posix_ipc.Semaphore)(o).close()
            res.leaks.append(o)
        except posix_ipc.ExistentialError:
            pass
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="total run time (default 60)")
    ap.add_argument("--modes", default="one-to-one,work-queue,broadcast",
                    help="comma-separated channel modes (time is split between them)")
    ap.add_argument("--kill-every", type=float, default=0.5,
                    help="mean seconds between consumer SIGKILLs (default 0.5)")
    ap.add_argument("--consumers", type=int, default=3,
                    help="consumers (work queue) / subscribers (broadcast) at a time")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    modes = [m for m in args.modes.split(",") if m]
    print(f"soak: {args.seconds:g} s over {', '.join(modes)}; a consumer SIGKILLed every "
          f"{args.kill_every:g} s on average; seed {seed}", flush=True)
    results = []
    for i, mode in enumerate(modes):
        if mode == "broadcast":
            try:
                shmarray.Channel.create(None, slot_bytes=64, capacity=2, mode="broadcast").unlink()
            except Exception as exc:  # not available in this build
                print(f"{mode:>11}: skipped ({type(exc).__name__}: {exc})")
                continue
        r = soak(mode, args.seconds / len(modes), args.kill_every, args.consumers, seed + i)
        results.append(r)
        rate = r.sent / r.seconds if r.seconds else 0.0
        delivered = (f"{r.delivered:,} deliveries" if mode == "broadcast"
                     else f"{r.delivered:,} delivered, {r.dropped:,} dropped with dead holders")
        print(f"{mode:>11}: {r.sent:,} frames sent ({rate:,.0f}/s), {delivered}; "
              f"{r.kills} kills survived ({r.restarts} restarts); integrity errors "
              f"{r.integrity_errors} (dup {r.duplicates}, corrupt {r.corrupt}, gaps {r.gaps}, "
              f"unaccounted {r.unaccounted}); leaks {len(r.leaks)}"
              + (f" {r.leaks}" if r.leaks else "")
              + ("".join(f"\n             problem: {p}" for p in r.problems)), flush=True)
    total = sum(r.sent for r in results)
    errors = sum(r.integrity_errors for r in results)
    leaks = sum(len(r.leaks) for r in results)
    kills = sum(r.kills for r in results)
    ok = all(r.ok() for r in results)
    print(f"total: {total:,} frames, {kills} kills survived, integrity errors {errors}, "
          f"leaks {leaks}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
