"""shmarray.dask.Executor: Pool's semantics on a Dask LocalCluster (real worker processes)."""

from __future__ import annotations

import concurrent.futures
import itertools
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import dask_tasks
import numpy as np
import pytest
import swap_user
from conftest import close, local_cluster, ours, shmarray_clean
from helpers import wait_for

import shmarray
from shmarray._os import registry as _registry  # owners' liveness, as `shmarray ls` sees it
from shmarray.dask import Executor


def test_one_line_swap(client: Any) -> None:
    """The same user module runs unchanged on Pool, on the Dask Executor and (where it can)
    on ProcessPoolExecutor, with identical results."""
    on_pool = swap_user.run(lambda: shmarray.Pool(2))
    on_dask = swap_user.run(lambda: Executor(client))
    on_ppe = swap_user.run(lambda: ProcessPoolExecutor(2))
    assert on_dask == on_pool
    assert {k: v for k, v in on_pool.items() if k in on_ppe} == on_ppe
    assert set(on_pool) - set(on_ppe) == {"imap", "imap_unordered"}
    # what Dask's own executor gets wrong, right here
    assert on_dask["kwargs named like Dask's options"][1][0] == ("actor", False)
    assert on_dask["two calls of a random function differ"] is True
    assert on_dask["shutdown(wait=False) lets submitted tasks finish"] == list(range(10))
    assert on_dask["shutdown(cancel_futures=True) cancels what waits, finishes the rest"] == (
        True, True, True)
    assert on_dask["exception, remote traceback as __cause__"] == ("ValueError", "boom", True)
    assert on_dask["running() while it runs"] is True
    assert on_dask["cancel() of a running task"] is False


def test_chunksize_batches_calls(client: Any) -> None:
    with Executor(client) as ex:
        got = list(ex.map(dask_tasks.which_task, range(20), chunksize=6))
    assert [x for x, _ in got] == list(range(20))
    keys = [k for _, k in got]
    assert len(set(keys)) == 4  # 6 + 6 + 6 + 2
    assert keys[:6] == [keys[0]] * 6 and keys[18:] == [keys[18]] * 2


def test_map_is_lazy_and_bounded(client: Any) -> None:
    """map over an endless generator: at most a window of tasks ahead."""
    taken = itertools.count()

    def endless() -> Any:
        for i in itertools.count():
            next(taken)
            yield i

    with Executor(client, max_in_flight=4, window=6) as ex:
        it = ex.map(dask_tasks.nap, itertools.repeat(0.0), endless())
        assert [next(it) for _ in range(10)] == list(range(10))
        it.close()
    assert next(taken) <= 10 + 6 + 1


def test_map_timeout(client: Any) -> None:
    with Executor(client) as ex:
        it = ex.map(dask_tasks.nap, [0.0, 2.5, 0.0], timeout=1.0)
        assert next(it) is None
        t0 = time.monotonic()
        with pytest.raises(concurrent.futures.TimeoutError):
            next(it)
        assert time.monotonic() - t0 < 2.0
        ex.shutdown(wait=True, cancel_futures=True)


def test_cancel_while_waiting_here(client: Any) -> None:
    """Tasks beyond max_in_flight wait in the executor, where cancel() still works."""
    with Executor(client, max_in_flight=2) as ex:
        fs = [ex.submit(dask_tasks.nap, 0.3, i) for i in range(6)]
        assert fs[-1].cancel() is True
        assert fs[-1].cancelled()
        assert [f.result(timeout=60) for f in fs[:-1]] == list(range(5))


def test_large_argument_skips_the_graph(client: Any) -> None:
    """Dask puts a large argument in the task graph (through the scheduler, with a warning);
    the Executor sends it straight to a worker, through shared memory when it can."""
    big = np.ones(64 << 20 >> 3)  # 64 MiB
    with pytest.warns(UserWarning, match="large graph"):
        assert client.submit(np.sum, big, pure=False).result(timeout=60) == big.size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Executor(client) as ex:
            assert ex.submit(np.sum, big).result(timeout=60) == big.size


def test_worker_death_is_peer_died_naming_the_task() -> None:
    """A task that kills its worker: PeerDiedError naming it (the cluster's own reruns set to
    0, as Pool's retries=0), while tasks on the other worker finish; retries=1 sends it once
    more."""
    before = ours()
    cluster, client = local_cluster(**{"distributed.scheduler.allowed-failures": 0})
    try:
        a, b = sorted(client.scheduler_info()["workers"])
        with Executor(client, workers=[a]) as on_a, Executor(client, workers=[b]) as on_b:
            others = [on_b.submit(dask_tasks.nap, 0.2, i) for i in range(4)]
            killer = on_a.submit(dask_tasks.die, np.ones(1 << 16))  # its input goes with it
            with pytest.raises(shmarray.PeerDiedError, match=r"task 0 \(dask_tasks.die\)"):
                killer.result(timeout=90)
            assert [f.result(timeout=90) for f in others] == list(range(4))
        client.wait_for_workers(2, timeout=60)
        with Executor(client, retries=1) as ex:
            with pytest.raises(shmarray.PeerDiedError, match="sent 2 times") as info:
                ex.submit(dask_tasks.die).result(timeout=90)
            assert info.value.__cause__ is not None
            client.wait_for_workers(1, timeout=60)
            assert ex.submit(dask_tasks.nap, 0.0, "alive").result(timeout=90) == "alive"
    finally:
        close(cluster, client)
    # the dead workers' beacons stay, as anything a killed process owned: `shmarray clean`;
    # this process's recycled segments go 2 s after their last use
    dead = {n for n in ours() - before
            if _registry.inspect(n).alive is False}
    assert dead and all(n.startswith("dkb-") for n in dead), dead
    shmarray_clean(dead)
    wait_for(lambda: not (ours() - before), timeout=10, what="every segment to go")


def test_rejects_misuse(client: Any) -> None:
    with pytest.raises(TypeError):
        Executor(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Executor(client, retries=-1)
    with Executor(client) as ex:
        with pytest.raises(ValueError):
            ex.map(abs, [1], chunksize=0)
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)
