"""Latency against its floors, beside `shmarray bench`: `python benchmarks/latency_floors.py`.

Prints, from one run on this machine:
- the Python spin floor: two processes busy-waiting on one shared int64 (one way = RTT / 2);
- one-way 64 B through ``send`` + ``with recv()`` with the default (adaptive) spin;
- one-way 64 B with both sides sleeping (``spin_us=0``) beside a bare posix_ipc semaphore
  ping-pong (the sleeping floor);
- 64 B frames/s through the batch path (``send_many`` 256 / ``recv_many(256)``).
Every loop is bounded in count; children are spawned and joined with a timeout.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np
import posix_ipc

import shmarray

N = 5000


def _spin_echo(name: str, n: int) -> None:
    w = shmarray.attach(name).view(np.ndarray)
    for i in range(1, n + 1):
        while w[0] != 2 * i - 1:
            pass
        w[0] = 2 * i


def _chan_echo(a: str, b: str, n: int, spin_us: float | None) -> None:
    rx = shmarray.Channel.open(a, timeout=10, spin_us=spin_us)
    tx = shmarray.Channel.open(b, timeout=10, spin_us=spin_us)
    for _ in range(n):
        with rx.recv(timeout=10) as v:
            tx.send(v)
    rx.close()
    tx.close()


def _sem_echo(a: str, b: str, n: int) -> None:
    sa, sb = posix_ipc.Semaphore(a), posix_ipc.Semaphore(b)
    for _ in range(n):
        sa.acquire(10)
        sb.release()


def _sink(name: str) -> None:
    rx = shmarray.Channel.open(name, timeout=10)
    while True:
        try:
            batch = rx.recv_many(256, timeout=30)
        except shmarray.StreamEnded:
            break
        batch.release()
    rx.close()


def _one_way(lat: list[int]) -> str:
    a = np.array(lat[N // 10:]) / 2e3
    return f"median {np.median(a):6.2f} us  p99 {np.percentile(a, 99):7.2f} us"


def spin_floor(ctx: Any) -> str:
    with shmarray.create(shape=(1,), dtype=np.int64) as shared:
        assert shared.name is not None
        w = shared.view(np.ndarray)
        p = ctx.Process(target=_spin_echo, args=(shared.name, N))
        p.start()
        time.sleep(0.5)
        lat = []
        for i in range(1, N + 1):
            t0 = time.perf_counter_ns()
            w[0] = 2 * i - 1
            while w[0] != 2 * i:
                pass
            lat.append(time.perf_counter_ns() - t0)
        p.join(30)
    return _one_way(lat)


def channel_pingpong(ctx: Any, spin_us: float | None) -> str:
    with shmarray.Channel.create(slot_bytes=64, capacity=8) as a, \
            shmarray.Channel.create(slot_bytes=64, capacity=8) as b:
        p = ctx.Process(target=_chan_echo, args=(a.name, b.name, N, spin_us))
        p.start()
        tx = shmarray.Channel.open(a.name, spin_us=spin_us)
        rx = shmarray.Channel.open(b.name, spin_us=spin_us)
        msg = np.zeros(8)
        lat = []
        for _ in range(N):
            t0 = time.perf_counter_ns()
            tx.send(msg)
            with rx.recv(timeout=10):
                pass
            lat.append(time.perf_counter_ns() - t0)
        p.join(30)
        tx.close()
        rx.close()
    return _one_way(lat)


def semaphore_pingpong(ctx: Any) -> str:
    names = [f"/shmarray-bench-floor.{i}.{time.monotonic_ns()}" for i in (0, 1)]
    sa = posix_ipc.Semaphore(names[0], posix_ipc.O_CREX)
    sb = posix_ipc.Semaphore(names[1], posix_ipc.O_CREX)
    try:
        p = ctx.Process(target=_sem_echo, args=(names[0], names[1], N))
        p.start()
        time.sleep(0.5)
        lat = []
        for _ in range(N):
            t0 = time.perf_counter_ns()
            sa.release()
            sb.acquire(10)
            lat.append(time.perf_counter_ns() - t0)
        p.join(30)
    finally:
        sa.unlink()
        sb.unlink()
    return _one_way(lat)


def batch_throughput(ctx: Any, n: int = 2_000_000) -> str:
    with shmarray.Channel.create(slot_bytes=64, capacity=1024) as ch:
        p = ctx.Process(target=_sink, args=(ch.name,))
        p.start()
        block = np.zeros((256, 8), np.float64)
        ch.send(block[0])
        time.sleep(0.5)
        t0 = time.perf_counter()
        for _ in range(n // 256):
            ch.send_many(block, timeout=30)
        ch.end()
        p.join(60)
        dt = time.perf_counter() - t0
    return f"{n / dt / 1e6:.2f} M frames/s"


def main() -> None:
    ctx = mp.get_context("spawn")
    print("Python spin floor (shared int64), one way:   ", spin_floor(ctx))
    print("send + with recv(), default spin, one way:    ", channel_pingpong(ctx, None))
    print("send + with recv(), both sleeping, one way:   ", channel_pingpong(ctx, 0))
    print("bare posix_ipc semaphore ping-pong, one way:  ", semaphore_pingpong(ctx))
    print("64 B frames, send_many(256) / recv_many(256): ", batch_throughput(ctx))


if __name__ == "__main__":
    main()
