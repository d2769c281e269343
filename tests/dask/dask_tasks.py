"""Task functions for the shmarray.dask tests (importable by the workers)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

import shmarray


def pid() -> int:
    return os.getpid()


def describe(a: Any) -> tuple[str, str | None, bool, float]:
    """What a task received: its type, its segment's name, writable, a checksum."""
    return type(a).__name__, getattr(a, "name", None), bool(a.flags.writeable), float(a.sum())


def mark(a: Any, value: float) -> tuple[str, str | None]:
    """Write ``value`` into the array a task received (by reference: the caller sees it)."""
    a[0] = value
    return type(a).__name__, getattr(a, "name", None)


def produce(n: int, value: float) -> shmarray.SharedArray:
    """A result produced in shared memory on a worker, its lifetime handed to its references."""
    out = shmarray.create(None, shape=(n,), dtype=np.float64).unlink_when_unreferenced()
    out[:] = value
    return out


def consume(a: Any) -> tuple[str, str | None, float]:
    return type(a).__name__, getattr(a, "name", None), float(a[:16].sum())


def die(_: Any = None) -> None:
    os._exit(7)


def nap(seconds: float, x: Any = None) -> Any:
    time.sleep(seconds)
    return x


def which_task(x: Any) -> tuple[Any, str]:
    from distributed import get_worker

    return x, str(get_worker().get_current_task())


def segments() -> list[str]:
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith("shmarray."))
