"""Fixtures for the shmarray.dask tests: a LocalCluster of 2 worker processes, 1 thread each.

Every cluster is closed by its fixture or test; what a test leaves in /dev/shm is caught by the
suite's leak check (tests/conftest.py), which runs while a module's cluster is up: the cluster
and this process's beacon are made before the first test's snapshot, and the segments that
workers recycle are unlinked within 2 s of their last use (the check waits up to 5 s).
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # swap_user and dask_tasks: importable here and in spawned workers
    sys.path.insert(0, HERE)

distributed = pytest.importorskip("distributed", reason="needs the dask extra: "
                                  "pip install 'shmarray[dask]'")

import shmarray.dask  # noqa: E402

START_TIMEOUT = 60  # s: a LocalCluster of 2 processes starts in a few seconds here


@pytest.fixture(scope="session", autouse=True)
def own_beacon() -> str:
    """This process's beacon, published before any test's leak-check snapshot."""
    return shmarray.dask.beacon()


def local_cluster(**config: object) -> tuple[object, object]:
    """A LocalCluster (2 workers x 1 thread, processes) and its client, set up for
    shmarray.dask; ``config`` is Dask configuration (e.g. allowed-failures)."""
    import dask

    with dask.config.set(config):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=40)
        client = distributed.Client(cluster, timeout=START_TIMEOUT)
    client.wait_for_workers(2, timeout=START_TIMEOUT)
    shmarray.dask.install(client)
    return cluster, client


def close(cluster: object, client: object) -> None:
    client.close(timeout=30)  # type: ignore[attr-defined]
    cluster.close(timeout=30)  # type: ignore[attr-defined]


def ours() -> set[str]:
    return {f[len("shmarray."):] for f in os.listdir("/dev/shm") if f.startswith("shmarray.")}


def shmarray_clean(names: set[str]) -> str:
    """`shmarray clean NAME...` (the command line, in a child process): what a user runs after
    a worker was killed. Returns its output; fails on a refusal (a live owner)."""
    import subprocess

    if not names:
        return ""
    res = subprocess.run([sys.executable, "-m", "shmarray.cli", "clean", *sorted(names)],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    cluster, client = local_cluster()
    try:
        yield client
    finally:
        close(cluster, client)
