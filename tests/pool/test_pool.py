"""shmarray.Pool across real worker processes: results equal to running fn in the parent, the
paths arrays take, exceptions with tracebacks, crashes, retries, shutdown, no leaks."""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

import numpy as np
import pytest

import pool_funcs as pf
import shmarray
from helpers import start_py, stop, wait_for
from shmarray.pool.worker import WATCHDOG


def _inputs() -> list[Any]:
    """Arrays of several dtypes, shapes and layouts, and a few things that are not arrays."""
    rng = np.random.default_rng(7)
    rec = np.zeros(4, dtype=[("x", "<i4"), ("y", ">f8", (2,)), ("name", "U3")])
    rec["x"] = [1, 2, 3, 4]
    rec["y"] = rng.random((4, 2))
    rec["name"] = ["a", "bb", "ccc", "d"]
    return [
        np.arange(12, dtype=np.int32).reshape(3, 4),
        rng.random((5, 6)).astype(">f8"),
        np.array(3.5),  # 0-d
        np.array(7, dtype=np.uint64),
        np.zeros((0, 3), dtype=np.float32),  # empty
        np.zeros(0, dtype=np.uint8),
        np.asfortranarray(rng.random((4, 3))),  # Fortran order
        np.arange(40, dtype=np.int16)[::3],  # strided
        rng.random(7) > 0.5,  # bool
        (rng.random(6) + 1j * rng.random(6)).astype(np.complex64),
        np.arange(6).astype("M8[ms]"),
        np.array(["ab", "cde"], dtype="U4"),
        rec,  # structured, with a subarray field
        np.arange(2 * 3 * 2 * 2 * 2 * 2 * 2 * 2 * 2, dtype=np.uint16).reshape(2, 3, 2, 2, 2, 2,
                                                                              2, 2, 2),  # 9-d
        np.float16(1.5),  # a numpy scalar (pickled)
        np.array([1, "a", None], dtype=object),  # object arrays are pickled
        (np.ones(3), {"k": np.arange(2)}),  # arrays nested in a structure
        12345,
        None,
    ]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _same(a: Any, b: Any) -> None:
    """Deep equality with dtype, shape and (for arrays) Fortran-ness."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_array_equal(a, b)
        if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous:
            assert b.flags.f_contiguous
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    else:
        assert a == b


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_map_submit_imap_match_the_parent(method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available here")
    xs = _inputs()
    numeric = [x for x in xs if isinstance(x, np.ndarray) and x.dtype.kind in "biufc"]
    with shmarray.Pool(2, context=method) as pool:
        for got, x in zip(pool.map(pf.identity, xs), xs):
            _same(pf.identity(x), got)
        for got, x in zip(pool.map(pf.double, numeric, chunksize=3), numeric):
            _same(pf.double(x), got)
        for got, x in zip(pool.imap(pf.double, iter(numeric)), numeric):
            _same(pf.double(x), got)
        got_u = list(pool.imap_unordered(pf.stats, numeric, chunksize=2))
        want_u = [pf.stats(x) for x in numeric]
        assert len(got_u) == len(want_u)
        for w in want_u:  # unordered: find each expected result once
            match = [g for g in got_u if g[1] == w[1] and g[2] == w[2] and g[0] == w[0]]
            assert match, w
        futs = [pool.submit(pf.stats, x) for x in numeric]
        for f, x in zip(futs, numeric):
            _same(pf.stats(x), f.result(timeout=30))


@pytest.mark.timeout(60)
def test_mixed_arguments_and_results() -> None:
    a = np.arange(6.0).reshape(2, 3)
    b = np.ones((2, 3), dtype=np.float32)
    extra = {"arrays": (np.arange(4, dtype=np.int8), np.eye(2)), "label": "x"}
    with shmarray.Pool(2, context="spawn") as pool:
        got = pool.submit(pf.combine, a, b, scale=0.5, extra=extra).result(timeout=30)
        _same(pf.combine(a, b, scale=0.5, extra=extra), got)
        # several iterables, scalars mixed with arrays
        got2 = list(pool.map(pf.combine, [a, 1.0, a], [b, 2.0, 3]))
        for g, (x, y) in zip(got2, [(a, b), (1.0, 2.0), (a, 3)]):
            _same(pf.combine(x, y), g)
        assert pool.submit(pf.sleep_then, 0, None).result(timeout=30) is None
        # one array passed twice arrives as one array
        x = np.arange(5)
        got3 = pool.submit(pf.combine, x, x).result(timeout=30)
        _same(pf.combine(x, x), got3)


@pytest.mark.timeout(60)
def test_inputs_arrive_as_private_writable_views_and_results_are_copies() -> None:
    a = np.arange(10.0)
    with shmarray.Pool(1, context="spawn") as pool:
        # the first call of a function learns whether it keeps its inputs (they are copies);
        # then a function that does not gets views of its task's slot, writable and its own
        seen = pool.submit(pf.describe_input, a).result(timeout=30)
        assert seen == {"writeable": True, "owndata": True, "type": "ndarray", "aligned": True}
        seen = pool.submit(pf.describe_input, a).result(timeout=30)
        assert seen == {"writeable": True, "owndata": False, "type": "ndarray", "aligned": True}
        assert pool.submit(pf.scribble, a).result(timeout=30) == 70.0
        np.testing.assert_array_equal(a, np.arange(10.0))  # the parent's array is untouched
        out = pool.submit(pf.identity, a).result(timeout=30)
        assert type(out) is np.ndarray and out.flags.owndata and out.flags.writeable


@pytest.mark.timeout(60)
def test_shared_array_travels_by_name(name: str) -> None:
    with shmarray.create(name, shape=(1000,), dtype=np.float64) as shared:
        shared[...] = 1
        with shmarray.Pool(1, context="spawn") as pool:
            seen = pool.submit(pf.describe_input, shared).result(timeout=30)
            assert seen["type"] == "SharedArray"
            assert pool.submit(pf.scribble, shared[10:20]).result(timeout=30) == 70.0
        assert shared[9] == 1 and (shared[10:20] == 7).all() and shared[20] == 1  # same memory


@pytest.mark.timeout(60)
def test_frames_larger_than_their_slots_go_through_one_off_segments() -> None:
    big = np.random.default_rng(1).random(100_000)  # 800 kB through 64 kB slots
    small = np.arange(10.0)
    with shmarray.Pool(2, slot_bytes=64 * 1024, context="spawn") as pool:
        outs = list(pool.map(pf.grow, [big, small, big[:1000], big.reshape(100, 1000).T]))
        _same(pf.grow(big), outs[0])
        _same(pf.grow(small), outs[1])
        _same(pf.grow(big[:1000]), outs[2])
        _same(pf.grow(big.reshape(100, 1000).T), outs[3])
        # results grow past their slot too: 3 x 20 kB float64 from a fitting input
        mid = np.arange(20_000, dtype=np.int8)
        _same(pf.grow(mid), pool.submit(pf.grow, mid).result(timeout=30))
        assert not [f for f in os.listdir("/dev/shm") if "-i" in f and pool._core.base in f]


@pytest.mark.timeout(60)
def test_auto_sized_slots_fit_rfft_of_float32() -> None:
    frames = [np.random.default_rng(i).random((64, 128), dtype=np.float32) for i in range(6)]
    with shmarray.Pool(2, context="spawn") as pool:
        for got, x in zip(pool.map(pf.rfft, frames), frames):
            _same(pf.rfft(x), got)
        assert got.dtype == np.complex64


@pytest.mark.timeout(60)
def test_imap_reads_its_input_lazily() -> None:
    pulled = []

    def source() -> Iterator[np.ndarray]:  # type: ignore[type-arg]
        for i in range(60):
            pulled.append(i)
            yield np.full(4, i)

    with shmarray.Pool(2, capacity=4, context="spawn") as pool:
        it = pool.imap(pf.double, source())
        first = next(it)
        assert (first == 0).all()
        assert len(pulled) <= 10  # a window of 2 x capacity, plus one topped up
        rest = list(it)
        assert [int(r[0]) for r in rest] == [2 * i for i in range(1, 60)]
        got = sorted(int(r[0]) for r in pool.imap_unordered(pf.double, source()))
        assert got == [2 * i for i in range(60)]


@pytest.mark.timeout(60)
def test_exception_reaches_the_caller_with_the_worker_traceback() -> None:
    with shmarray.Pool(2, context="spawn") as pool:
        fut = pool.submit(pf.fail, np.zeros(3))
        exc = fut.exception(timeout=30)
        assert isinstance(exc, ValueError) and "bad input of shape (3,)" in str(exc)
        tb = str(exc.__cause__)
        assert "pool_funcs.py" in tb and "in fail" in tb and "raise ValueError" in tb
        it = pool.map(pf.fail, [np.zeros(1)])
        with pytest.raises(ValueError, match="shape"):
            next(it)
        it2 = pool.imap(pf.double, [np.ones(2), "not an array", np.ones(2)])
        assert (next(it2) == 2).all()
        assert next(it2) == "not an arraynot an array"  # str * 2: fn decides, not the pool
        # the pool goes on working
        _same(np.arange(3) * 2, pool.submit(pf.double, np.arange(3)).result(timeout=30))
        # unpicklable things: the function (a lambda) and a result
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            pool.submit(lambda a: a, np.ones(2)).result(timeout=30)
        with pytest.raises(Exception, match="refuses"):
            pool.submit(pf.returns_unpicklable).result(timeout=30)


@pytest.mark.timeout(90)
def test_sigkill_mid_task_fails_that_task_and_replaces_the_worker(tmp_path: Any) -> None:
    path = str(tmp_path / "pid")
    xs = [np.full(1000, i, dtype=np.int64) for i in range(20)]
    with shmarray.Pool(2, context="spawn") as pool:
        doomed = pool.submit(pf.report_and_sleep, path, 60)
        others = [pool.submit(pf.double, x) for x in xs]
        victim = int(wait_for(lambda: _read(path), 30, "the task to start"))
        os.kill(victim, signal.SIGKILL)
        exc = doomed.exception(timeout=30)
        assert isinstance(exc, shmarray.PeerDiedError)
        msg = str(exc)
        assert f"pid {victim}" in msg and "task 0" in msg and "report_and_sleep" in msg
        assert "SIGKILL" in msg
        for f, x in zip(others, xs):
            _same(x * 2, f.result(timeout=30))
        # the replacement serves new work
        pids = set(pool.map(pf.pid, range(20)))
        assert victim not in pids
        assert len(pool._core.procs) == 2 and all(p.is_alive() for p in pool._core.procs)
    assert victim not in {p.pid for p in multiprocessing.active_children()}


@pytest.mark.timeout(60)
def test_a_task_taken_but_not_yet_recorded_by_a_dying_worker_still_fails(tmp_path: Any) -> None:
    """A worker killed between taking a frame and recording it in the table: the parent finds
    the task by elimination (taken from the ring, no result, held by no live worker)."""
    from shmarray.pool import worker as pool_worker

    path = str(tmp_path / "pid")
    with shmarray.Pool(1, context="spawn") as pool:
        doomed = pool.submit(pf.report_and_sleep, path, 60)
        victim = int(wait_for(lambda: _read(path), 30, "the task to start"))
        core = pool._core
        # white box: make the table say what it says inside that window (idle, nothing held)
        core.tab[0, pool_worker.STATE] = pool_worker.IDLE
        core.tab[0, pool_worker.JOB] = 0
        os.kill(victim, signal.SIGKILL)
        exc = doomed.exception(timeout=30)
        assert isinstance(exc, shmarray.PeerDiedError)
        assert f"pid {victim}" in str(exc) and "task 0" in str(exc)
        assert pool.submit(pf.double, 21).result(timeout=30) == 42


@pytest.mark.timeout(90)
def test_retries_resend_a_task_whose_worker_died(tmp_path: Any) -> None:
    marker = str(tmp_path / "died")
    x = np.arange(50_000.0)  # through a one-off segment: the retry reuses it
    with shmarray.Pool(2, retries=1, slot_bytes=64 * 1024, context="spawn") as pool:
        _same(x, pool.submit(pf.die_once, marker, x).result(timeout=30))
        assert os.path.exists(marker)
        exc = pool.submit(pf.die, 1).exception(timeout=30)
        assert isinstance(exc, shmarray.PeerDiedError) and "tried 2 times" in str(exc)
        _same(x * 2, pool.submit(pf.double, x).result(timeout=30))


@pytest.mark.timeout(60)
def test_no_leak_after_an_exception_in_the_with_body() -> None:
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="body"):
        with shmarray.Pool(2, context="spawn") as pool:
            futs = [pool.submit(pf.sleep_then, 0.3, i) for i in range(40)]
            assert futs[0].result(timeout=30) == 0
            raise RuntimeError("body")
    assert time.monotonic() - t0 < 40 * 0.3 / 2  # the tasks not started were cancelled
    assert any(f.cancelled() for f in futs)
    assert all(f.done() for f in futs)
    assert not [f for f in os.listdir("/dev/shm") if pool._core.base in f]


@pytest.mark.timeout(60)
def test_shutdown_semantics() -> None:
    pool = shmarray.Pool(1, context="spawn")
    futs = [pool.submit(pf.sleep_then, 0.2, i) for i in range(10)]
    assert futs[0].result(timeout=30) == 0
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futs) and any(f.cancelled() for f in futs)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(pf.double, 1)
    pool.shutdown()  # idempotent
    assert not [f for f in os.listdir("/dev/shm") if pool._core.base in f]

    pool2 = shmarray.Pool(2, context="spawn")
    futs = [pool2.submit(pf.double, np.full(3, i)) for i in range(10)]
    pool2.shutdown(wait=False)  # returns at once; the work still completes
    assert [int(f.result(timeout=30)[0]) for f in futs] == [2 * i for i in range(10)]
    assert pool2._core.finished.wait(30)

    shmarray.Pool(2).shutdown()  # never started: nothing to do
    assert isinstance(pool, concurrent.futures.Executor)


@pytest.mark.timeout(60)
def test_terminate_stops_running_tasks_now(tmp_path: Any) -> None:
    path = str(tmp_path / "pid")
    pool = shmarray.Pool(1, context="spawn")
    running = pool.submit(pf.report_and_sleep, path, 60)
    queued = [pool.submit(pf.sleep_then, 60) for _ in range(12)]  # more than the ring holds
    wait_for(lambda: _read(path), 30, "the task to start")
    t0 = time.monotonic()
    pool.terminate()
    assert time.monotonic() - t0 < 10
    assert isinstance(running.exception(timeout=1), shmarray.PeerDiedError)
    assert all(f.done() for f in queued) and any(f.cancelled() for f in queued)
    assert not [f for f in os.listdir("/dev/shm") if pool._core.base in f]
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(pf.double, 1)


@pytest.mark.timeout(60)
def test_a_pool_dropped_without_shutdown_finishes_and_cleans_up() -> None:
    pool = shmarray.Pool(1, context="spawn")
    fut = pool.submit(pf.double, np.arange(3))
    core = pool._core
    del pool
    gc.collect()
    _same(np.arange(3) * 2, fut.result(timeout=30))
    assert core.finished.wait(30)
    assert not [f for f in os.listdir("/dev/shm") if core.base in f]


@pytest.mark.timeout(60)
def test_segments_removed_under_the_pool_break_it_instead_of_hanging() -> None:
    with shmarray.Pool(2, context="spawn") as pool:
        assert pool.submit(pf.double, 1).result(timeout=30) == 2
        core = pool._core
        shmarray.unlink(core.table.name)  # what a stray `shmarray clean --force` would do
        wait_for(lambda: core.broken is not None, 20, "the pool to notice")
        with pytest.raises(BrokenProcessPool, match="removed by another process"):
            pool.submit(pf.double, 1)


@pytest.mark.timeout(60)
def test_map_timeout_and_as_completed() -> None:
    with shmarray.Pool(2, context="spawn") as pool:
        it = pool.map(pf.sleep_then, [1.5, 0.0], timeout=0.3)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(it)
        futs = [pool.submit(pf.sleep_then, 0.05 * i, i) for i in range(6)]
        done = {f.result() for f in concurrent.futures.as_completed(futs, timeout=30)}
        assert done == set(range(6))


@pytest.mark.timeout(60)
def test_initializer() -> None:
    with shmarray.Pool(2, initializer=pf.init, initargs=(42,), context="spawn") as pool:
        assert set(pool.map(pf.init_value, range(8))) == {42}


@pytest.mark.timeout(60)
def test_initializer_failure_breaks_the_pool() -> None:
    with shmarray.Pool(2, initializer=pf.init_fail, context="spawn") as pool:
        fut = pool.submit(pf.double, 1)
        exc = fut.exception(timeout=30)
        assert isinstance(exc, BrokenProcessPool) and "initializer says no" in str(exc)
        with pytest.raises(BrokenProcessPool):
            pool.submit(pf.double, 1)


PARENT = """
import sys, time, numpy as np, shmarray
sys.path.insert(0, sys.argv[1])
import pool_funcs
pool = shmarray.Pool(2, context="spawn")
print(list(pool.map(pool_funcs.double, [np.ones(3)] * 4))[0][0], flush=True)
print(pool._core.base, *[p.pid for p in pool._core.procs], flush=True)
fut = pool.submit(pool_funcs.sleep_then, 60)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_workers_exit_when_the_parent_dies() -> None:
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = start_py(PARENT, tests)  # (pool_funcs lives in tests/)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "2.0"
        base, *pids = child.stdout.readline().split()
        child.kill()
        child.wait(10)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(lambda: all(gone(int(p)) for p in pids), 10, "the workers to exit")
    finally:
        stop(child)
    # the parent was SIGKILLed: its segments stay (as designed) until cleaned
    for suffix in ("t", "r", "w"):
        shmarray.unlink(f"{base}-{suffix}")


def test_a_worker_out_of_descriptors_is_not_taken_for_orphaned() -> None:
    # the watchdog cannot open anything while the task holds every descriptor: unknown is not
    # dead, the task completes and the worker lives on (issue 11, B9)
    with shmarray.Pool(1) as pool:
        first = pool.submit(pf.without_descriptors, 4 * WATCHDOG).result(timeout=30)
        assert pool.submit(pf.pid).result(timeout=30) == first
