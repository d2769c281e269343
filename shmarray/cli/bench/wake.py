"""Await-wake latency: how long an asyncio consumer that is asleep takes to run after a paced
producer in another process publishes a frame (the ``wake`` rows of ``shmarray bench``;
``benchmarks/bench_aio.py`` runs them alone).

One producer process sends a 64-byte frame every ``interval`` seconds (1 ms: the consumer is
asleep when each frame comes), through each method in turn, frame by frame, each round in a
random order (seeded: the consumer draws the same; each method then comes after each other
about equally often), and one consumer process, in one event loop, waits for each frame the
way it was sent. Every method therefore sees the same machine at the same moments: a drift
of the VM's state (which moves the medians of runs minutes apart by 20 %) is shared instead of
landing on one method. The latency of one
frame is the consumer's CLOCK_MONOTONIC when its code runs again minus the frame's commit
timestamp (the same clock, taken by the producer just before it publishes); every method's
wait is awaited directly in the measuring loop, so each resumes through the same frames.
The methods:

- ``shmarray.aio``: ``await ch.recv()``, woken through its doorbell FIFO;
- ``run_in_executor``: the sync ``recv()`` in the loop's default thread pool, awaited;
- ``sync recv``: the sync ``recv()`` (futex), blocking the loop: for reference;
- ``eventfd (bare)``: the floor of an event-loop wake: the producer writes its timestamp to an
  eventfd the consumer's loop watches with ``add_reader``, and the coroutine awaiting the
  future that callback resolves takes the time (no channel at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any, Callable, NamedTuple

import numpy as np

from .runner import stats

__all__ = ["METHODS", "BASELINE", "measure"]

METHODS = ("eventfd (bare)", "shmarray.aio", "run_in_executor", "sync recv")
BASELINE = "eventfd (bare)"

#: the seed of the turns' order, which producer and consumer draw alike (_orders)
SEED = 1729

# argv: n (frames per method), interval, then one target per method: "fd:<eventfd>" or the
# name of a channel. stdin: "go" starts it, "done" (or EOF) lets it exit.
_PRODUCER = r"""
import os, random, sys, time, numpy as np
n, interval, targets = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
frame = np.zeros(8, np.int64)
outs = []
for t in targets:
    if t.startswith("fd:"):
        fd = int(t[3:])
        outs.append(lambda i, fd=fd: os.write(fd, time.monotonic_ns().to_bytes(8, sys.byteorder)))
    else:
        import shmarray
        ch = shmarray.Channel.open(t, timeout=10)
        outs.append(lambda i, ch=ch: ch.send(frame, tag=i, timeout=10))
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()  # go
next_t = time.monotonic() + interval
rng, order, i = random.Random(SEED), list(range(len(outs))), 0
for _ in range(n):
    rng.shuffle(order)  # each round in its own order (the consumer draws the same)
    for j in order:
        while time.monotonic() < next_t:  # pace: sleep most of the interval, spin the rest
            left = next_t - time.monotonic()
            if left > 0.0003:
                time.sleep(left - 0.0002)
        next_t = max(next_t + interval, time.monotonic() + interval / 2)  # late: no burst
        outs[j](i)
        i += 1
sys.stdin.readline()  # done (or the consumer is gone)
""".replace("SEED", str(SEED))


def _producer(targets: list[str], n: int, interval: float,
              pass_fds: tuple[int, ...]) -> subprocess.Popen[str]:
    # cwd: a neutral directory, so that `-c` imports the installed shmarray and never a
    # source tree the caller stands in (which has no compiled parts)
    p = subprocess.Popen([sys.executable, "-c", _PRODUCER, str(n), str(interval), *targets],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         pass_fds=pass_fds, cwd=tempfile.gettempdir())
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        _finish(p)
        raise RuntimeError(f"wake benchmark: the producer did not start (exit status "
                           f"{p.returncode}; its error is on stderr)")
    return p


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


class Way(NamedTuple):
    """How the consumer waits for one method's frame. The wait itself is awaited (or, not
    ``awaited``, called) directly in the measuring loop, and the clock read right after it, so
    that every method resumes through the same frames; ``latency(result, t)`` then works out
    the figure (ns) off the measured path."""

    start: Callable[[], Any]
    latency: Callable[[Any, int], int]
    awaited: bool = True


class _Eventfd:
    """The floor: an eventfd the producer writes its stamp to, watched with add_reader; the
    wait is a future the reader callback resolves, the leanest await there is."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        stack.callback(os.close, self.fd)
        self.loop = asyncio.get_running_loop()
        self.waiter: asyncio.Future[int] | None = None
        self.early: list[int] = []  # read before their wait began (the consumer ran late)
        self.loop.add_reader(self.fd, self._readable)
        stack.callback(self.loop.remove_reader, self.fd)

    def _readable(self) -> None:
        try:
            v = os.eventfd_read(self.fd)
        except BlockingIOError:
            return
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(v)
        else:
            self.early.append(v)

    def fail(self, exc: BaseException) -> None:
        """End a wait that no stamp will end (the producer is gone)."""
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    def start(self) -> asyncio.Future[int]:
        w = self.waiter = self.loop.create_future()
        if self.early:
            w.set_result(self.early.pop(0))
        return w

    def latency(self, v: int, t: int) -> int:
        # an eventfd adds up the writes it holds: k stamps read at once (a consumer more
        # than k - 1 turns late) are told apart by size, and each counts at their mean
        k = max(1, round(v / t))
        if k > 1:
            v //= k
            self.early[:0] = [v] * (k - 1)  # before any read after them
        return t - v


def _frame_latency(f: Any, t: int) -> int:
    ts: int = f.timestamp_ns
    f.release()
    return t - ts


def _channel(method: str, stack: contextlib.ExitStack) -> tuple[str, Way]:
    import shmarray
    import shmarray.aio

    from ..._os import names as _names

    name = _names.unique("bench-wake")
    ch = stack.enter_context(shmarray.Channel.create(name, slot_bytes=64, capacity=8))
    stack.callback(ch.unlink)
    if method == "shmarray.aio":
        ach = shmarray.aio.Channel.open(name)
        stack.callback(ach.close)
        return name, Way(partial(ach.recv, timeout=30), _frame_latency)
    rx = shmarray.Channel.open(name)
    stack.callback(rx.close)
    recv = partial(rx.recv, timeout=30)
    if method == "sync recv":  # blocks the loop: the reference without one
        return name, Way(recv, _frame_latency, awaited=False)

    def stamp() -> int:
        f = rx.recv(timeout=30)
        ts: int = f.timestamp_ns
        f.release()
        return ts

    loop = asyncio.get_running_loop()
    return name, Way(partial(loop.run_in_executor, None, stamp), lambda ts, t: t - ts)


async def _run(methods: tuple[str, ...], n: int, interval: float,
               got: dict[str, list[int]], errors: dict[str, str]) -> None:
    with contextlib.ExitStack() as stack:
        floor: _Eventfd | None = None
        targets: list[str] = []
        ways: list[tuple[str, Way]] = []
        for m in methods:
            try:
                if m == BASELINE:
                    floor = _Eventfd(stack)
                    target, way = f"fd:{floor.fd}", Way(floor.start, floor.latency)
                else:
                    target, way = _channel(m, stack)
            except Exception as exc:  # noqa: BLE001 - a record says what failed; run goes on
                errors[m] = f"{type(exc).__name__}: {exc}"
                continue
            targets.append(target)
            ways.append((m, way))
            got[m] = []
        if not ways:
            return
        try:
            prod = _producer(targets, n, interval, () if floor is None else (floor.fd,))
        except Exception as exc:  # noqa: BLE001 - every record says so; the caller goes on
            for m, _way in ways:
                errors[m] = f"{type(exc).__name__}: {exc}"
            return
        stack.callback(_finish, prod)
        if floor is not None:  # the producer's end (its stdout closing) ends a pending wait
            loop = asyncio.get_running_loop()
            assert prod.stdout is not None
            out = prod.stdout.fileno()
            loop.add_reader(out, lambda: floor.fail(RuntimeError(
                "the wake benchmark's producer ended before its last stamp")))
            stack.callback(loop.remove_reader, out)
        now = time.monotonic_ns
        try:
            assert prod.stdin is not None
            prod.stdin.write("go\n")
            prod.stdin.flush()
            rng, order = random.Random(SEED), list(range(len(ways)))
            for _ in range(n):
                rng.shuffle(order)  # the producer's order, drawn alike
                for j in order:
                    m, (start, latency, awaited) = ways[j]
                    x = (await start()) if awaited else start()
                    t = now()
                    got[m].append(latency(x, t))
            prod.stdin.write("done\n")
            prod.stdin.flush()
        except Exception as exc:  # noqa: BLE001
            for m, _way in ways:
                errors.setdefault(m, f"{type(exc).__name__}: {exc}")
            prod.kill()


def measure(samples: int = 2000, interval: float = 0.001,
            methods: tuple[str, ...] = METHODS) -> list[dict[str, Any]]:
    """One record per method: median and p99 wake latency (ns) over ``samples`` frames each,
    ``interval`` seconds apart, the methods taking turns frame by frame (module docstring),
    and ``vs_eventfd`` (median / the bare eventfd's median, when it is measured too). The
    first 5 % of each method's frames (the loop and caches warming up) are left out. A
    failing method gets status "error"; never raises."""
    got: dict[str, list[int]] = {}
    errors: dict[str, str] = {}
    asyncio.run(_run(methods, samples, interval, got, errors))
    records: list[dict[str, Any]] = []
    for m in methods:
        rec: dict[str, Any] = {"transport": m, "workload": "wake", "size": "64B", "nbytes": 64,
                               "interval_s": interval, "status": "ok", "error": None}
        if m in errors:
            rec.update(status="error", error=errors[m])
        else:
            one = got[m]
            rec.update(stats(np.asarray(one[len(one) // 20:], dtype=np.float64)),
                       unit="ns wake")
        records.append(rec)
    base = next((r for r in records if r["transport"] == BASELINE and r["status"] == "ok"),
                None)
    for r in records:
        r["vs_eventfd"] = (r["median"] / base["median"] if base and r["status"] == "ok"
                           and base["median"] else None)
    return records
