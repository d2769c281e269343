"""``shmarray demo``: a cross-process round trip through a named shared array.

A producer process creates a shared array and fills it; a second process attaches it by name
(zero copy), verifies every element, writes its answer into a second shared array, and the
parent checks that answer. Prints what happened and how long each step took.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

import numpy as np


def _producer(name: str, n: int, ready: Any, done: Any) -> None:
    import shmarray

    t0 = time.perf_counter()
    with shmarray.create(name, shape=(n,), dtype=np.float64) as a:
        t1 = time.perf_counter()
        a[:] = np.arange(n, dtype=np.float64)
        t2 = time.perf_counter()
        ready.put((t1 - t0, t2 - t1))
        done.get(timeout=60)  # keep the segment until the consumer has checked it


def _consumer(name: str, result_name: str, n: int, out: Any) -> None:
    import shmarray

    t0 = time.perf_counter()
    a = shmarray.attach(name, readonly=True, timeout=30)
    t1 = time.perf_counter()
    ok = bool(np.array_equal(a, np.arange(n, dtype=np.float64)))
    total = float(a.sum())
    t2 = time.perf_counter()
    r = shmarray.attach(result_name, timeout=30)
    r[0], r[1] = total, float(ok)
    out.put((t1 - t0, t2 - t1, a.__array_interface__["data"][0] != 0))


def run(size_mb: float = 256.0) -> int:
    import shmarray

    n = max(1, int(size_mb * 1024 * 1024 // 8))
    name = shmarray._names.unique("demo")
    ctx = mp.get_context("spawn")
    ready, done, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    print(f"shmarray demo: {n * 8 / 2**20:.0f} MiB float64 array '{name}' between two processes")
    with shmarray.create(name + "-result", shape=(2,), dtype=np.float64) as result:
        prod = ctx.Process(target=_producer, args=(name, n, ready, done))
        prod.start()
        try:
            t_create, t_fill = ready.get(timeout=60)
            print(f"  producer pid {prod.pid}: create {t_create * 1e3:.2f} ms, "
                  f"fill {t_fill * 1e3:.1f} ms ({n * 8 / t_fill / 1e9:.2f} GB/s)")
            cons = ctx.Process(target=_consumer, args=(name, name + "-result", n, out))
            cons.start()
            t_attach, t_verify, _ = out.get(timeout=120)
            cons.join(30)
            print(f"  consumer pid {cons.pid}: attach {t_attach * 1e3:.2f} ms (zero copy), "
                  f"verify {t_verify * 1e3:.1f} ms ({n * 8 / t_verify / 1e9:.2f} GB/s)")
        finally:
            done.put(True)
            prod.join(30)
        expected = n * (n - 1) / 2
        ok = bool(result[1]) and result[0] == expected
        print(f"  consumer's sum {result[0]:.6g} (expected {expected:.6g}): "
              f"{'OK' if ok else 'MISMATCH'}")
    from . import _registry

    left = [e.name for e in _registry.scan() if e.name.startswith(name)]
    print(f"  after exit: {'nothing left in /dev/shm' if not left else 'LEFT: ' + str(left)}")
    return 0 if ok and not left and prod.exitcode == 0 else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a cross-process demo")
    p.add_argument("--size-mb", type=float, default=256.0, help="array size (default 256 MiB)")
    p.set_defaults(func=lambda a: run(a.size_mb))
