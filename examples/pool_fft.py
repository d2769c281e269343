"""FFTs of many 1080p frames on a process pool: shmarray.Pool against multiprocessing.Pool.

    python examples/pool_fft.py                      # 100 frames, one worker per CPU
    python examples/pool_fft.py --frames 300 --processes 4 --start-method forkserver

Each frame is a 1080 x 1920 float32 image (8.3 MB); each worker returns its 2-D real FFT
(complex64, 1080 x 961: a little larger than the frame). Both pools stream the frames with
``imap`` and the same function; the script prints both wall times (workers started and warm
before timing) and checks that both give the same spectra.

With multiprocessing.Pool every frame is pickled, pushed through a pipe and unpickled, and so
is every spectrum on its way back. With shmarray.Pool a frame is written once into a shared
ring slot and the worker computes on a view of that slot; the spectrum is written once into a
result slot and copied out once in the parent.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import time
from typing import Any, Iterator

import numpy as np

import shmarray

H, W = 1080, 1920


def spectrum(frame: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    """The work: a 2-D real FFT of one frame (runs in a worker)."""
    return np.fft.rfft2(frame)


@functools.lru_cache(maxsize=1)
def _images(distinct: int = 8) -> list[np.ndarray]:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return [(np.sin(xx / (20 + 7 * k)) * np.cos(yy / (30 + 5 * k))
             + 0.1 * rng.standard_normal((H, W), dtype=np.float32)).astype(np.float32)
            for k in range(distinct)]


def frames(n: int) -> Iterator[np.ndarray]:  # type: ignore[type-arg]
    """``n`` frames cycling through a few synthetic images (a stand-in for a camera)."""
    images = _images()
    for i in range(n):
        yield images[i % len(images)]


def run(pool_imap: Any, n: int) -> tuple[float, list[np.ndarray]]:  # type: ignore[type-arg]
    """Stream ``n`` frames through ``pool_imap``; keep a few results to compare."""
    kept = []
    t0 = time.perf_counter()
    for i, spec in enumerate(pool_imap(spectrum, frames(n))):
        if i < 3:
            kept.append(spec)
    return time.perf_counter() - t0, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--start-method", default=None, help="spawn, forkserver or fork")
    args = ap.parse_args()
    ctx = multiprocessing.get_context(args.start_method)
    n, procs = args.frames, args.processes
    print(f"{n} frames of {H}x{W} float32 ({H * W * 4 / 1e6:.1f} MB) -> rfft2 (complex64), "
          f"{procs} workers, start method {ctx.get_start_method()}")

    with shmarray.Pool(procs, context=ctx) as pool:
        list(pool.imap(spectrum, frames(2 * procs)))  # start and warm up the workers
        t_shm, kept_shm = run(pool.imap, n)
    print(f"shmarray.Pool.imap          {t_shm:7.2f} s  {n / t_shm:6.1f} frames/s")

    with ctx.Pool(procs) as mpool:
        list(mpool.imap(spectrum, frames(2 * procs)))
        t_mp, kept_mp = run(mpool.imap, n)
    print(f"multiprocessing.Pool.imap   {t_mp:7.2f} s  {n / t_mp:6.1f} frames/s")

    for a, b in zip(kept_shm, kept_mp):
        np.testing.assert_array_equal(a, b)
    print(f"same spectra; shmarray.Pool is {t_mp / t_shm:.1f}x as fast")


if __name__ == "__main__":
    main()
