"""shmarray.Pool against multiprocessing.Pool and ProcessPoolExecutor on the same inputs.

    python benchmarks/bench_pool.py                  # 200 arrays of 8 MB, 2 workers
    python benchmarks/bench_pool.py --n 50 --repeat 1 --processes 4 --start-method forkserver

For each function -- a light one (``np.mean``: the cost is almost all transfer) and a heavier
one (``np.fft.rfft``: real work, and an 8 MB result back) -- it times ``list(pool.map(fn,
arrays))`` on warm pools (workers started and a first map done before timing), and prints the
wall time of each pool (best and median of ``--repeat`` runs), its ratio to shmarray.Pool, and
two floors measured in the same run: the function run serially in this process (no transfer
at all), and one memcpy of every input (what writing each array once into shared memory
costs). A SharedArray row shows inputs that already live in shared memory (passed by name,
nothing copied).

Caveats: wall times on a shared machine are noisy (other jobs steal cores: compare ratios of the
same run); the inputs are distinct arrays (``base + i``), so caches do not flatter anyone.
Under pytest (``pytest benchmarks --benchmark-only``) a small variant runs as a
pytest-benchmark group.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

import numpy as np

import shmarray

FUNCS: dict[str, Callable[..., Any]] = {"light (np.mean)": np.mean,
                                        "heavy (np.fft.rfft)": np.fft.rfft}


def make_inputs(n: int, mb: float) -> list[np.ndarray]:  # type: ignore[type-arg]
    base = np.random.default_rng(0).random(int(mb * 2**20) // 8)
    return [base + i for i in range(n)]


def _time(run: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        out.append(time.perf_counter() - t0)
    return out


def bench(n: int, mb: float, processes: int, repeat: int, method: str | None,
          only: list[str]) -> list[tuple[str, str, list[float]]]:
    ctx = multiprocessing.get_context(method)
    arrays = make_inputs(n, mb)
    warm = arrays[:2 * processes]
    rows: list[tuple[str, str, list[float]]] = []
    for label, fn in FUNCS.items():
        rows.append((label, "serial, in process (no transfer)",
                     _time(lambda fn=fn: [fn(a) for a in arrays], 1)))
        dst = np.empty_like(arrays[0])
        rows.append((label, "floor: one memcpy per input",
                     _time(lambda dst=dst: [np.copyto(dst, a) for a in arrays], repeat)))
        if "shmarray" in only:
            with shmarray.Pool(processes, context=ctx) as pool:
                list(pool.map(fn, warm))  # starts the workers, sizes the slots
                rows.append((label, "shmarray.Pool.map",
                             _time(lambda fn=fn: list(pool.map(fn, arrays)), repeat)))
                shared = [shmarray.from_array(None, a) for a in arrays[:min(n, 50)]]
                try:
                    reps = (shared * (n // len(shared) + 1))[:n]
                    list(pool.map(fn, shared[:2 * processes]))
                    rows.append((label, "shmarray.Pool.map, SharedArray inputs",
                                 _time(lambda fn=fn, reps=reps: list(pool.map(fn, reps)),
                                       repeat)))
                finally:
                    for s in shared:
                        s.unlink()
                    del shared, reps
        if "mp" in only:
            with ctx.Pool(processes) as mpool:
                mpool.map(fn, warm)
                rows.append((label, "multiprocessing.Pool.map",
                             _time(lambda fn=fn: mpool.map(fn, arrays), repeat)))
        if "ppe" in only:
            with ProcessPoolExecutor(processes, mp_context=ctx) as ex:
                list(ex.map(fn, warm))
                rows.append((label, "ProcessPoolExecutor.map",
                             _time(lambda fn=fn: list(ex.map(fn, arrays)), repeat)))
    return rows


def report(rows: list[tuple[str, str, list[float]]], args: argparse.Namespace) -> None:
    print(f"# shmarray.Pool benchmark: {args.n} arrays of {args.mb:g} MB, {args.processes} "
          f"workers, start method {args.start_method or multiprocessing.get_start_method()}")
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}, {platform.platform()}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"# best and median of {args.repeat} runs (serial: 1 run); ratio: median / "
          "shmarray.Pool.map's median")
    ref: dict[str, float] = {}
    for label, what, times in rows:
        if what == "shmarray.Pool.map":
            ref[label] = statistics.median(times)
    last = None
    for label, what, times in rows:
        if label != last:
            print(f"\n{label}")
            last = label
        med = statistics.median(times)
        ratio = f"{med / ref[label]:6.1f}x" if label in ref else ""
        print(f"  {what:40s} best {min(times):7.3f} s  median {med:7.3f} s  {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="number of arrays (200)")
    ap.add_argument("--mb", type=float, default=8.0, help="size of each array in MB (8)")
    ap.add_argument("--processes", type=int, default=2, help="workers per pool (2)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per pool (3)")
    ap.add_argument("--start-method", default=None,
                    help="spawn, forkserver or fork (default: multiprocessing's)")
    ap.add_argument("--only", default="shmarray,mp,ppe",
                    help="comma-separated pools to run: shmarray, mp, ppe")
    args = ap.parse_args()
    rows = bench(args.n, args.mb, args.processes, args.repeat, args.start_method,
                 args.only.split(","))
    report(rows, args)


# pytest-benchmark: a small variant, so a regression shows in `pytest benchmarks`
def test_pool_map_mean_8mb(benchmark: Any) -> None:
    import pytest

    if not hasattr(benchmark, "pedantic"):
        pytest.skip("pytest-benchmark is not installed")
    arrays = make_inputs(20, 8)
    with shmarray.Pool(2, context="spawn") as pool:
        list(pool.map(np.mean, arrays[:4]))
        benchmark.group = "pool: map np.mean over 20 x 8 MB"
        benchmark.pedantic(lambda: list(pool.map(np.mean, arrays)), rounds=3, iterations=1)


if __name__ == "__main__":
    main()
