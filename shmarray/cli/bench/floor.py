"""The floor: what this machine can do, measured in the same run as the transports.

- one-way cache-line hand-off between two processes: the C probe (csrc/probe.c) forks a child
  and the two bounce one shared 64-bit word; round trip / 2. No transport can beat it.
- single-core copy bandwidth at each frame size: C ``memcpy`` (the probe) and numpy
  ``np.copyto`` into a preallocated buffer. A transport that copies each frame once runs at
  best at memcpy speed; a zero-copy one can beat it.
"""

from __future__ import annotations

import mmap
import time
from typing import Any

import numpy as np

from .runner import stats

#: CPU-time budget of each floor measurement (s), full run / --quick.
_BUDGET = {False: 0.25, True: 0.05}


def _probe() -> tuple[Any, Any] | None:
    """(ffi, lib) of the compiled probe, or None when this build lacks it."""
    try:
        from ..._os.native import ffi, lib
    except ImportError:  # pragma: no cover - only without a build
        return None
    if not hasattr(lib, "shm_probe_pingpong"):
        return None
    return ffi, lib


def probe_available() -> bool:
    return _probe() is not None


def cacheline_pingpong(quick: bool = False, timeout: float = 10.0) -> dict[str, Any]:
    """One-way cross-process hand-off of one cache line (ns): C probe, two processes."""
    p = _probe()
    if p is None:
        return {"status": "unavailable", "error": "the C probe is not in this build of shmarray"}
    ffi, lib = p
    nbatches, batch = (20, 500) if quick else (60, 2000)
    m = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED | MAP_ANONYMOUS: the forked child shares it
    out = np.zeros(nbatches, dtype=np.uint64)
    try:
        buf = ffi.from_buffer(m)
        rc = lib.shm_probe_pingpong(buf, nbatches, batch, int(timeout * 1e9), -1, -1,
                                    ffi.cast("uint64_t *", out.ctypes.data))
        del buf
    finally:
        m.close()
    if rc != lib.SHM_PROBE_OK:
        return {"status": "error", "error": f"C probe ping-pong failed (status {rc})"}
    one_way = out[1:].astype(np.float64) / batch / 2  # the first batch warms up
    s = stats(one_way)
    s.update(status="ok", unit="ns", samples=len(one_way), batch=batch,
             method="C probe: fork, two processes spin on one shared word (batch means)")
    return s


def _reps_inner(nbytes: int, budget: float) -> tuple[int, int]:
    # aim for ~10 GB/s: pick `inner` so a sample is >= ~20 us, and enough samples for the budget
    per_copy = max(nbytes / 10e9, 5e-9)
    inner = max(1, int(20e-6 / per_copy))
    reps = int(min(200, max(5, budget / (per_copy * inner))))
    return reps, inner


def _page_aligned(n: int) -> np.ndarray:  # type: ignore[type-arg]
    raw = np.empty(n + mmap.PAGESIZE, dtype=np.uint8)
    skip = -raw.ctypes.data % mmap.PAGESIZE
    return raw[skip:skip + n]


def memcpy_bandwidth(sizes: list[int], quick: bool = False) -> dict[int, dict[str, Any]]:
    """Single-core copy bandwidth (GB/s) per size: C memcpy and numpy copyto (medians)."""
    p = _probe()
    budget = _BUDGET[quick]
    out: dict[int, dict[str, Any]] = {}
    for n in sorted(set(sizes)):
        # Both buffers page-aligned: with source and destination at different offsets within
        # a page (4K aliasing) some CPUs copy 10-20x slower, which is no floor of anything.
        src = _page_aligned(n)
        src[...] = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
        dst = _page_aligned(n)
        dst[...] = 1  # fault the pages in: page faults are not copy bandwidth
        reps, inner = _reps_inner(n, budget)
        rec: dict[str, Any] = {"nbytes": n}
        if p is not None:
            ffi, lib = p
            ns = np.zeros(reps + 1, dtype=np.uint64)
            rc = lib.shm_probe_memcpy(ffi.from_buffer(dst), ffi.from_buffer(src), n, inner,
                                      reps + 1, ffi.cast("uint64_t *", ns.ctypes.data))
            if rc == lib.SHM_PROBE_OK:
                gbps = n * inner / np.maximum(ns[1:].astype(np.float64), 1.0)
                rec["c_memcpy_gbps"] = float(np.median(gbps))
        # numpy: one call per copy, as a Python producer would do it
        np_inner = max(1, min(inner, 1000))
        samples = []
        copyto = np.copyto
        deadline = time.perf_counter() + budget
        for i in range(reps + 1):
            t0 = time.perf_counter_ns()
            for _ in range(np_inner):
                copyto(dst, src)
            dt = time.perf_counter_ns() - t0
            if i:
                samples.append(n * np_inner / max(dt, 1))
            if time.perf_counter() > deadline and len(samples) >= 3:
                break
        rec["numpy_copyto_gbps"] = float(np.median(samples))
        out[n] = rec
    return out


def measure(sizes: list[int], quick: bool = False) -> dict[str, Any]:
    """Both floors, as one JSON-able dict."""
    return {"cacheline_one_way": cacheline_pingpong(quick),
            "memcpy": {str(k): v for k, v in memcpy_bandwidth(sizes, quick).items()},
            "probe": probe_available()}
