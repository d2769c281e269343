"""shmarray on Dask: the executor swap, and worker-to-worker fetches by TCP vs by reference.

    python benchmarks/bench_dask.py                 # both tables, 2 local workers, ~2 min
    python benchmarks/bench_dask.py --only swap --tasks 32 --repeat 5
    python benchmarks/bench_dask.py --only fetch --sizes 8,64,256

Table 1, executor swap: ``list(ex.map(double, arrays))`` over ``--tasks`` distinct arrays of
``--mb`` MiB (``double = a * 2``: 8 MiB in, 8 MiB out), on warm executors, all in one run:
``shmarray.Pool(2)``, ``ProcessPoolExecutor(2)``, Dask's ``client.get_executor(pure=False)``
(a list, not a generator: it refuses generators), the same with a client made with
``direct_to_workers=True``, and ``shmarray.dask.Executor(client)``. The cluster is a
LocalCluster of 2 worker processes with 1 thread each. Median and best ms/task of
``--repeat`` runs, and each one's ratio to shmarray.Pool.

Table 2, fetch: worker A produces an array of 8 / 64 / 256 MiB (a plain ndarray, or a
SharedArray produced in shared memory whose lifetime is handed to its references), then a task
pinned to worker B reads it. Reported: the fetch as Dask measures it on B (its
``transfer_incoming_log`` duration: request, transfer, deserialization), the consumer task
end to end (submit to result, scheduling included), and production + fetch end to end.
Medians of ``--repeat``.

Caveats: the machine is shared and small (2 vCPU here: the client, the scheduler and both
workers compete for them), so compare ratios within one run; fresh tmpfs pages are expensive
on this VM (a first touch costs ~3.5 us a page), which the production column includes.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

import numpy as np

import shmarray


def double(a: Any) -> Any:
    return a * 2


def make_plain(n: int) -> Any:
    out = np.empty(n, np.float64)
    out[:] = 1.0
    return out


def make_shared(n: int) -> Any:
    out = shmarray.create(None, shape=(n,), dtype=np.float64).unlink_when_unreferenced()
    out[:] = 1.0
    return out


def first(a: Any) -> float:
    return float(a[0] + a[-1])


def _median_best(xs: list[float]) -> tuple[float, float]:
    return statistics.median(xs), min(xs)


# ---------------------------------------------------------------------------------------------


def bench_swap(client: Any, direct_client: Any, tasks: int, mb: float,
               repeat: int) -> list[tuple[str, list[float]]]:
    from shmarray.dask import Executor

    base = np.random.default_rng(0).random(int(mb * 2**20) // 8)
    arrays = [base + i for i in range(tasks)]
    expect = [float(a[0] * 2) for a in arrays]
    makers: list[tuple[str, Callable[[], Any]]] = [
        ("shmarray.Pool(2)", lambda: shmarray.Pool(2)),
        ("ProcessPoolExecutor(2)", lambda: ProcessPoolExecutor(2)),
        ("Dask client.get_executor(pure=False)", lambda: client.get_executor(pure=False)),
        ("  same, direct_to_workers=True", lambda: direct_client.get_executor(pure=False)),
        ("shmarray.dask.Executor(client)", lambda: Executor(client)),
    ]
    rows = []
    for label, make in makers:
        ex = make()
        try:
            list(ex.map(double, arrays[:4]))  # warm: workers started, code imported
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                outs = list(ex.map(double, arrays))
                times.append((time.perf_counter() - t0) / tasks * 1e3)
                assert [float(o[0]) for o in outs] == expect, label
                del outs
                gc.collect()
        finally:
            ex.shutdown(wait=True)
        rows.append((label, times))
        print(f"  {label}: {statistics.median(times):.1f} ms/task", file=sys.stderr)
    return rows


def bench_fetch(client: Any, sizes_mib: list[int],
                repeat: int) -> list[tuple[int, str, list[float], list[float], list[float]]]:
    import distributed

    a, b = sorted(client.scheduler_info()["workers"])

    def last_transfer(key: str) -> float:
        def read(dask_worker: Any) -> float:
            for entry in reversed(dask_worker.transfer_incoming_log):
                if key in entry["keys"]:
                    return float(entry["duration"])
            return float("nan")

        return float(client.run(read, workers=[b])[b])

    rows = []
    for mib in sizes_mib:
        n = mib * 2**20 // 8
        for label, make in (("TCP (plain ndarray)", make_plain),
                            ("by reference (SharedArray)", make_shared)):
            fetch, consume, total = [], [], []
            for i in range(repeat + 1):
                t0 = time.perf_counter()
                fa = client.submit(make, n, workers=[a], pure=False)
                distributed.wait(fa, timeout=300)  # produced on A; nothing comes here
                t1 = time.perf_counter()
                fb = client.submit(first, fa, workers=[b], pure=False)
                assert fb.result(timeout=300) == 2.0
                t2 = time.perf_counter()
                if i:  # the first round warms both workers
                    fetch.append(last_transfer(fa.key) * 1e3)
                    consume.append((t2 - t1) * 1e3)
                    total.append((t2 - t0) * 1e3)
                del fa, fb
                gc.collect()
                time.sleep(0.2)  # let the workers release (and unlink) the array
            rows.append((mib, label, fetch, consume, total))
            print(f"  {mib} MiB {label}: fetch {statistics.median(fetch):.1f} ms",
                  file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------


def report_swap(rows: list[tuple[str, list[float]]], args: argparse.Namespace) -> None:
    ref = statistics.median(rows[0][1])
    print(f"\nexecutor swap: {args.tasks} tasks of {args.mb:g} MiB in / {args.mb:g} MiB out, "
          f"fn = a * 2, 2 workers x 1 thread, medians of {args.repeat}")
    print("| executor | ms/task (median) | best | vs shmarray.Pool |\n|---|---|---|---|")
    for label, times in rows:
        med, best = _median_best(times)
        print(f"| {label.strip()} | {med:.1f} | {best:.1f} | {med / ref:.1f}x |")


def report_fetch(rows: list[tuple[int, str, list[float], list[float], list[float]]],
                 args: argparse.Namespace) -> None:
    print(f"\nworker B reads an array produced on worker A (medians of {args.repeat})")
    print("| size | path | fetch on B (Dask's log) | consumer task, submit to result | "
          "produce + fetch + consume |\n|---|---|---|---|---|")
    by: dict[tuple[int, str], tuple[float, float, float]] = {}
    for mib, label, fetch, consume, total in rows:
        m = (statistics.median(fetch), statistics.median(consume), statistics.median(total))
        by[(mib, label)] = m
        print(f"| {mib} MiB | {label} | {m[0]:.1f} ms | {m[1]:.1f} ms | {m[2]:.1f} ms |")
    for mib in sorted({r[0] for r in rows}):
        tcp = by.get((mib, "TCP (plain ndarray)"))
        ref = by.get((mib, "by reference (SharedArray)"))
        if tcp and ref:
            print(f"| {mib} MiB | ratio TCP / reference | {tcp[0] / ref[0]:.1f}x | "
                  f"{tcp[1] / ref[1]:.1f}x | {tcp[2] / ref[2]:.1f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="swap,fetch", help="comma-separated: swap, fetch")
    ap.add_argument("--tasks", type=int, default=32, help="tasks per map in the swap table")
    ap.add_argument("--mb", type=float, default=8.0, help="MiB per task input (8)")
    ap.add_argument("--sizes", default="8,64,256", help="MiB fetched from A by B (8,64,256)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (3)")
    args = ap.parse_args()
    only = args.only.split(",")

    import dask
    import distributed

    import shmarray.dask

    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python "
          f"{platform.python_version()}, numpy {np.__version__}, dask {dask.__version__}, "
          f"distributed {distributed.__version__}", file=sys.stderr)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as client, \
            distributed.Client(cluster, direct_to_workers=True) as direct:
        shmarray.dask.install(client)
        if "swap" in only:
            report_swap(bench_swap(client, direct, args.tasks, args.mb, args.repeat), args)
        if "fetch" in only:
            sizes = [int(s) for s in args.sizes.split(",") if s]
            report_fetch(bench_fetch(client, sizes, args.repeat), args)


if __name__ == "__main__":
    main()
