"""A user's module written for ``shmarray.Pool``: representative calls, and nothing else.

The one-line swap test runs :func:`run` unchanged with ``shmarray.Pool``, with
``shmarray.dask.Executor`` over a LocalCluster and with ``ProcessPoolExecutor`` (which has no
``imap``/``imap_unordered``: those calls are skipped there), and requires identical results.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from typing import Any, Callable

import numpy as np


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def echo(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    return args, sorted(kwargs.items())


def fail(msg: str) -> None:
    raise ValueError(msg)


def fail_on_three(x: int) -> int:
    if x == 3:
        raise KeyError(x)
    return x


def scale(a: np.ndarray, factor: float = 2.0) -> np.ndarray:  # type: ignore[type-arg]
    return a * factor


def digest(a: Any) -> str:
    a = np.asarray(a)
    return f"{a.dtype.str}{a.shape}:" + hashlib.sha256(np.ascontiguousarray(a).tobytes()) \
        .hexdigest()[:16]


def rand(_: Any = None) -> float:
    return float(np.random.default_rng().random())


def nap(seconds: float, x: Any) -> Any:
    time.sleep(seconds)
    return x


def call_with(f: Callable[[Any], Any], x: Any) -> Any:
    return f(x)


def _wait_running(f: concurrent.futures.Future[Any], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not f.running() and not f.done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return f.running()


def run(make: Callable[[], Any]) -> dict[str, Any]:
    """Every call once, with executors from ``make()``; returns what each call gave."""
    out: dict[str, Any] = {}
    big = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    with make() as ex:
        out["map over a generator"] = list(ex.map(square, (i for i in range(20))))
        out["map, two iterables, chunksize"] = list(ex.map(add, range(10), range(10, 20),
                                                           chunksize=3))
        out["kwargs named like Dask's options"] = ex.submit(
            echo, 1, priority=5, workers="w", key="k", resources={"x": 1}, retries=2, pure=True,
            allow_other_workers=True, actor=False, fifo_timeout="1s").result(timeout=60)
        out["a callable as first argument"] = ex.submit(call_with, abs, -3).result(timeout=60)
        fs = [ex.submit(square, i) for i in range(8)]
        out["submit + as_completed"] = sorted(
            f.result() for f in concurrent.futures.as_completed(fs, timeout=60))
        try:
            ex.submit(fail, "boom").result(timeout=60)
        except ValueError as e:
            out["exception, remote traceback as __cause__"] = (
                type(e).__name__, str(e), "in fail" in str(e.__cause__))
        got: list[Any] = []
        try:
            for v in ex.map(fail_on_three, range(6)):
                got.append(v)
        except KeyError as e:
            got.append(("KeyError", e.args))
        out["map raises when the failed result is reached"] = got
        r = ex.submit(scale, big, factor=3.0).result(timeout=60)
        out["large array argument and result"] = (type(r).__name__, digest(r))
        out["map over large arrays"] = [digest(a) for a in ex.map(scale, (big + i
                                                                          for i in range(4)))]
        out["two calls of a random function differ"] = (ex.submit(rand).result(timeout=60)
                                                         != ex.submit(rand).result(timeout=60))
        if hasattr(ex, "imap"):
            out["imap"] = list(ex.imap(square, (i for i in range(10)), chunksize=4))
            out["imap_unordered"] = sorted(ex.imap_unordered(square, (i for i in range(10))))
        f = ex.submit(nap, 1.0, "slept")
        out["running() while it runs"] = _wait_running(f)
        out["cancel() of a running task"] = f.cancel()
        out["the running task's result"] = f.result(timeout=60)

    ex = make()
    fs = [ex.submit(nap, 0.05, i) for i in range(10)]
    ex.shutdown(wait=False)
    out["shutdown(wait=False) lets submitted tasks finish"] = [f.result(timeout=60) for f in fs]
    ex.shutdown(wait=True)

    ex = make()
    fs = [ex.submit(nap, 0.2, i) for i in range(40)]
    ex.shutdown(wait=True, cancel_futures=True)
    out["shutdown(cancel_futures=True) cancels what waits, finishes the rest"] = (
        any(f.cancelled() for f in fs),
        all(f.done() for f in fs),
        all(f.result() == i for i, f in enumerate(fs) if not f.cancelled()))
    try:
        ex.submit(square, 2)
    except RuntimeError:
        out["submit after shutdown"] = "RuntimeError"
    return out
