"""Await-wake latency: how long an asyncio consumer that is asleep takes to run after a paced
producer in another process publishes a frame (the ``wake`` rows of ``shmarray bench``;
``benchmarks/bench_aio.py`` runs them alone).

A producer process sends a 64-byte frame every ``interval`` seconds (1 ms: the consumer is
asleep when each frame comes); the latency of one frame is the consumer's CLOCK_MONOTONIC when
its code runs minus the frame's commit timestamp (the same clock, taken by the producer just
before it publishes). Measured in one run, one after another:

- ``shmarray.aio``: ``await ch.recv()``, woken through its doorbell FIFO;
- ``run_in_executor``: the sync ``recv()`` in the loop's default thread pool, awaited;
- ``sync recv``: the sync ``recv()`` (futex), no event loop: for reference;
- ``eventfd (bare)``: the floor of an event-loop wake: the producer writes its timestamp to an
  eventfd the consumer's loop watches with ``add_reader`` (no channel at all).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from .runner import stats

__all__ = ["METHODS", "measure"]

METHODS = ("eventfd (bare)", "shmarray.aio", "run_in_executor", "sync recv")
BASELINE = "eventfd (bare)"

_PRODUCER = r"""
import os, sys, time, numpy as np
mode, target, n, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
frame = np.zeros(8, np.int64)
if mode == "channel":
    import shmarray
    ch = shmarray.Channel.open(target, timeout=10)
else:
    fd = int(target)
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()  # go
next_t = time.monotonic() + interval
for i in range(n):
    while time.monotonic() < next_t:  # pace: sleep most of the interval, spin the rest
        left = next_t - time.monotonic()
        if left > 0.0003:
            time.sleep(left - 0.0002)
    next_t += interval
    if mode == "channel":
        ch.send(frame, tag=i, timeout=10)
    else:
        os.write(fd, (time.monotonic_ns() << 1).to_bytes(8, sys.byteorder))
if mode == "channel":
    ch.end()
else:
    time.sleep(interval)
    os.write(fd, (1).to_bytes(8, sys.byteorder))  # odd: the end (even if summed with a stamp)
"""


def _producer(mode: str, target: str, n: int, interval: float,
              pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    # cwd: a neutral directory, so that `-c` imports the installed shmarray and never a
    # source tree the caller stands in (which has no compiled parts)
    p = subprocess.Popen([sys.executable, "-c", _PRODUCER, mode, target, str(n), str(interval)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         pass_fds=pass_fds, cwd=tempfile.gettempdir())
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        _finish(p)
        raise RuntimeError(f"wake benchmark: the {mode} producer did not start (exit status "
                           f"{p.returncode}; its error is on stderr)")
    return p


def _go(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()


def _finish(p: subprocess.Popen[str]) -> None:
    """Reap the producer (killing it after 30 s) and close its pipes."""
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for f in (p.stdin, p.stdout):
            if f is not None:
                f.close()


def _channel_samples(method: str, n: int, interval: float) -> list[int]:
    import shmarray
    import shmarray.aio

    from ..._os import names as _names

    name = _names.unique("bench-wake")
    out: list[int] = []
    with shmarray.Channel.create(name, slot_bytes=64, capacity=8):
        prod = _producer("channel", name, n, interval)
        try:
            if method == "sync recv":
                rx = shmarray.Channel.open(name)
                _go(prod)
                now = time.monotonic_ns
                try:
                    while True:
                        f = rx.recv(timeout=30)
                        out.append(now() - f.timestamp_ns)
                        f.release()
                except shmarray.StreamEnded:
                    pass
                rx.close()
            else:
                asyncio.run(_async_channel(method, name, prod, out))
        finally:
            _finish(prod)
    return out


async def _async_channel(method: str, name: str, prod: subprocess.Popen[str],
                         out: list[int]) -> None:
    import shmarray
    import shmarray.aio

    now = time.monotonic_ns
    if method == "shmarray.aio":
        ach = shmarray.aio.Channel.open(name)
        _go(prod)
        try:
            while True:
                f = await ach.recv(timeout=30)
                out.append(now() - f.timestamp_ns)
                f.release()
        except shmarray.StreamEnded:
            pass
        ach.close()
        return
    rx = shmarray.Channel.open(name)
    loop = asyncio.get_running_loop()

    def take() -> int:
        f = rx.recv(timeout=30)
        ts: int = f.timestamp_ns
        f.release()
        return ts

    _go(prod)
    try:
        while True:
            ts = await loop.run_in_executor(None, take)
            out.append(now() - ts)
    except shmarray.StreamEnded:
        pass
    rx.close()


def _eventfd_samples(n: int, interval: float) -> list[int]:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    out: list[int] = []
    try:
        prod = _producer("eventfd", str(fd), n, interval, pass_fds=(fd,))
        try:
            async def consume() -> None:
                # as an awaiting coroutine sees it: the reader callback resolves a future,
                # and the time is taken when the coroutine awaiting it runs again
                loop = asyncio.get_running_loop()
                now = time.monotonic_ns
                waiter: list[asyncio.Future[int]] = []

                def readable() -> None:
                    try:
                        v = os.eventfd_read(fd)
                    except BlockingIOError:
                        return
                    if waiter and not waiter[0].done():
                        waiter[0].set_result(v)

                loop.add_reader(fd, readable)
                _go(prod)
                try:
                    while True:
                        w = loop.create_future()
                        waiter[:] = [w]
                        v = await w  # the leanest await (the producer always ends)
                        if v >> 1:
                            out.append(now() - (v >> 1))  # an eventfd sums writes: stamps
                        if v & 1:                          # are even, the end is odd
                            break
                finally:
                    loop.remove_reader(fd)
            asyncio.run(consume())
        finally:
            _finish(prod)
    finally:
        os.close(fd)
    return out


def measure(samples: int = 2000, interval: float = 0.001,
            methods: tuple[str, ...] = METHODS, rounds: int = 3) -> list[dict[str, Any]]:
    """One record per method: median and p99 wake latency (ns) over ``samples`` frames sent
    ``interval`` seconds apart, and ``vs_eventfd`` (median / the bare eventfd's median, when
    measured in the same call). The methods take turns, ``rounds`` times, so that a drift of
    the machine's state is shared by all of them. A failing method gets status "error",
    never raises."""
    got: dict[str, list[int]] = {m: [] for m in methods}
    errors: dict[str, str] = {}
    per_round = max(20, samples // rounds)
    for _ in range(rounds):
        for m in methods:
            if m in errors:
                continue
            try:
                one = (_eventfd_samples(per_round, interval) if m == BASELINE
                       else _channel_samples(m, per_round, interval))
                got[m] += one[len(one) // 20:]  # the first 5 %: the loop and caches warm up
            except Exception as exc:  # noqa: BLE001 - a record says what failed; run goes on
                errors[m] = f"{type(exc).__name__}: {exc}"
    records: list[dict[str, Any]] = []
    for m in methods:
        rec: dict[str, Any] = {"transport": m, "workload": "wake", "size": "64B", "nbytes": 64,
                               "interval_s": interval, "status": "ok", "error": None}
        if m in errors:
            rec.update(status="error", error=errors[m])
        else:
            rec.update(stats(np.asarray(got[m], dtype=np.float64)), unit="ns wake")
        records.append(rec)
    base = next((r for r in records if r["transport"] == BASELINE and r["status"] == "ok"),
                None)
    for r in records:
        r["vs_eventfd"] = (r["median"] / base["median"] if base and r["status"] == "ok"
                           and base["median"] else None)
    return records
