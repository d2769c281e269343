"""Functions for tests/test_pool.py: importable by spawned pool workers (tests/ is on sys.path
through pytest's ``pythonpath``, and spawned children inherit sys.path)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np


def double(a: Any) -> Any:
    return a * 2


def identity(a: Any) -> Any:
    return a


def combine(a: Any, b: Any, *, scale: float = 1.0, extra: Any = None) -> Any:
    """Mixed arguments: two arrays (or scalars), a keyword scalar and a nested structure."""
    out = {"sum": (np.asarray(a) + np.asarray(b)) * scale, "first": a}
    if extra is not None:
        out["extra"] = (extra["arrays"][0] + 1, extra["arrays"][1], extra["label"])
    return out


def stats(a: Any) -> tuple[float, tuple[int, ...], str, Any]:
    """Results that are not arrays: a float, a tuple, a string; and a tuple of arrays."""
    return float(np.abs(a).sum()), a.shape, a.dtype.str, (a.ravel()[:2],
                                                                              a.T)


def grow(a: Any) -> Any:
    """A result larger than its input (results can outgrow inputs)."""
    return np.concatenate([a.ravel(), a.ravel(), a.ravel()]).astype(np.float64)


def rfft(a: Any) -> Any:
    return np.fft.rfft(a)


def describe_input(a: Any) -> dict[str, Any]:
    """How an array argument arrived in the worker."""
    return {"writeable": bool(a.flags.writeable), "owndata": bool(a.flags.owndata),
            "type": type(a).__name__, "aligned": bool(a.flags.aligned)}


def scribble(a: Any) -> float:
    """Write into the argument in place (private to the worker, as with pickled copies)."""
    a[...] = 7
    return float(a.sum())


def fail(a: Any) -> None:
    raise ValueError(f"bad input of shape {np.shape(a)}")


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def report_and_sleep(path: str, seconds: float) -> int:
    """Write this worker's pid to ``path``, then sleep (a task to kill mid-flight)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, path)
    time.sleep(seconds)
    return os.getpid()


def die_once(marker: str, value: Any) -> Any:
    """SIGKILL this worker the first time (``marker`` does not exist yet), succeed after."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def die(value: Any) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)
    return value


def pid(_: Any = None) -> int:
    return os.getpid()


_INIT: list[Any] = []


def init(value: Any) -> None:
    _INIT.append(value)


def init_value(_: Any = None) -> Any:
    return _INIT[0] if _INIT else None


def init_fail() -> None:
    raise RuntimeError("initializer says no")


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def returns_unpicklable(_: Any = None) -> Any:
    return Unpicklable()


_KEPT: list = []


def keep_input(a):
    """Keeps its input (a cache): returns the first element of every input kept so far."""
    _KEPT.append(a)
    return [int(x[0]) for x in _KEPT]


def input_kind(a):
    """How the input arrived: ("view", writable) over a task slot, or ("copy", writable)."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    a[0] = -1  # it is the function's own, as an unpickled copy is
    return ("copy" if isinstance(base, np.ndarray) else "view", bool(a.flags.writeable))


def without_descriptors(seconds: float) -> int:
    """Holds every free file descriptor (EMFILE for any open) for ``seconds``; returns our pid."""
    import time

    held = []
    try:
        while True:
            try:
                held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        time.sleep(seconds)
    finally:
        for fd in held:
            os.close(fd)
    return os.getpid()
