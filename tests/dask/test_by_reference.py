"""SharedArrays through Dask: by name to peers proven to share /dev/shm, bytes otherwise."""

from __future__ import annotations

import gc
import hashlib
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
from typing import Any

import dask_tasks
import numpy as np
import pytest
from conftest import HERE, close, local_cluster, ours, shmarray_clean
from helpers import wait_for

import shmarray
from shmarray._os import registry as _registry  # owners' liveness, as `shmarray ls` sees it
import shmarray.dask
from shmarray.dask import Executor


def _worker_named(client: Any, name: str) -> str:
    for addr, info in client.scheduler_info()["workers"].items():
        if info.get("name") == name:
            return str(addr)
    raise AssertionError(f"no worker named {name!r}")


def test_argument_maps_the_same_segment(client: Any) -> None:
    """A SharedArray argument reaches a same-/dev/shm worker by name: no copy, the worker's
    array maps the caller's segment (its write shows here)."""
    with shmarray.create(None, shape=(1 << 20,), dtype=np.float64) as a, Executor(client) as ex:
        a[:] = 1.0
        kind, name = ex.submit(dask_tasks.mark, a, 42.0).result(timeout=60)
        assert (kind, name) == ("SharedArray", a.name)
        assert a[0] == 42.0
        kind, name, writable, total = ex.submit(dask_tasks.describe, a[1:]).result(timeout=60)
        assert (kind, name, writable, total) == ("SharedArray", a.name, True, float(a.size - 1))


def test_worker_to_worker_and_to_client_by_name(client: Any) -> None:
    """A result produced in shared memory on worker A reaches worker B and the client by
    name (the same segment), and is unlinked once Dask releases it."""
    a, b = sorted(client.scheduler_info()["workers"])
    fa = client.submit(dask_tasks.produce, 1 << 20, 3.0, workers=[a], pure=False)
    got = client.submit(dask_tasks.consume, fa, workers=[b], pure=False).result(timeout=60)
    here = fa.result(timeout=60)
    assert type(here) is shmarray.SharedArray and here.name is not None
    assert got == ("SharedArray", here.name, 48.0)
    assert here.name in ours()
    name = here.name
    del here, fa
    gc.collect()
    wait_for(lambda: name not in ours(), timeout=10, what="the released result's unlink")


def test_name_gone_falls_back_to_bytes(client: Any) -> None:
    """A SharedArray whose segment was unlinked (owner gone) travels as bytes, not a name
    the worker could not open."""
    a = shmarray.create(None, shape=(1 << 18,), dtype=np.float32)
    a[:] = 2.0
    b = shmarray.attach(a.name)
    a.unlink()
    with Executor(client) as ex:
        kind, name, _, total = ex.submit(dask_tasks.describe, b).result(timeout=60)
    assert (kind, name, total) == ("ndarray", None, 2.0 * b.size)


def test_proof_needs_the_beacon_and_its_token() -> None:
    """Same-/dev/shm is proven only by opening the peer's beacon by name and finding the
    token it announced; anything else is 'no'."""
    mine = shmarray.dask._beacon.local()
    assert shmarray.dask.shares_shm_with({shmarray.dask._beacon.FIELD: mine})
    layout = struct.Struct("<8s16s16sIIQQ")
    token = secrets.token_bytes(16)
    name = "dkb-" + secrets.token_hex(12)
    with shmarray.create(name, shape=(layout.size,), dtype=np.uint8) as fake:
        fake[:] = np.frombuffer(layout.pack(b"SHMDKB1\0", token, bytes.fromhex(mine["boot"]),
                                            os.getuid(), os.getpid(), mine["dev"], mine["ino"]),
                                np.uint8)
        entry = {**mine, "name": name, "proof": hashlib.sha256(token).hexdigest()}
        wrong = {**entry, "proof": hashlib.sha256(b"x" * 16).hexdigest()}
        absent = {**entry, "name": "dkb-" + secrets.token_hex(12)}
        other_uid = {**entry, "uid": os.getuid() + 1}
        for e, verdict in ((entry, True), (wrong, False), (absent, False), (other_uid, False)):
            assert shmarray.dask.shares_shm_with({shmarray.dask._beacon.FIELD: e}) is verdict
    for junk in (None, {}, {shmarray.dask._beacon.FIELD: {"name": "../etc", "proof": "x"}},
                 {shmarray.dask._beacon.FIELD: "dkb-"}):
        assert shmarray.dask.shares_shm_with(junk) is False  # type: ignore[arg-type]


def _can_unshare() -> str | None:
    """None when this process may start a worker in its own mount namespace, else why not."""
    if os.geteuid() != 0:
        return "needs root: the isolated worker is started with `unshare -m` and a tmpfs mount"
    if shutil.which("unshare") is None:
        return "needs unshare(1) (util-linux)"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /dev/shm"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot make a mount namespace here: {probe.stderr.decode(errors='replace')}"
    return None


def test_isolated_worker_gets_bytes_and_never_hangs(client: Any) -> None:
    """A worker in its own mount namespace with a private /dev/shm (the container case) is
    never proven: every array reaches it, and leaves it, as bytes, in bounded time."""
    why = _can_unshare()
    if why is not None:
        pytest.skip(why)
    addr = client.scheduler.address
    code = ("mount -t tmpfs -o size=256m,mode=1777 tmpfs /dev/shm && exec "
            f"{sys.executable} -m distributed.cli.dask_worker {addr} --nthreads 1 --no-nanny "
            "--name isolated --preload shmarray.dask --no-dashboard")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", code],
                            cwd="/", env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        client.wait_for_workers(3, timeout=60)
        iso = _worker_named(client, "isolated")
        normal = sorted(w for w in client.scheduler_info()["workers"] if w != iso)[0]
        seen = client.run(dask_tasks.segments, workers=[iso])[iso]
        assert not ({f"shmarray.{n}" for n in ours()} & set(seen))  # its own /dev/shm
        with shmarray.create(None, shape=(1 << 20,), dtype=np.float64) as a, \
                Executor(client, workers=[iso]) as ex:
            a[:] = 1.0
            t0 = time.monotonic()
            assert ex.submit(dask_tasks.describe, a).result(timeout=60) == (
                "ndarray", None, True, float(a.size))
            big = np.arange(1 << 20, dtype=np.float64)
            assert np.array_equal(ex.submit(np.multiply, big, 2).result(timeout=60), big * 2)
            made = ex.submit(dask_tasks.produce, 1 << 20, 5.0).result(timeout=60)
            assert type(made) is np.ndarray and float(made.sum()) == 5.0 * (1 << 20)
            assert time.monotonic() - t0 < 60
        on_iso = client.submit(dask_tasks.produce, 1 << 18, 7.0, workers=[iso], pure=False)
        on_normal = client.submit(dask_tasks.produce, 1 << 18, 9.0, workers=[normal],
                                  pure=False)
        assert client.submit(dask_tasks.consume, on_iso, workers=[normal],
                             pure=False).result(timeout=60) == ("ndarray", None, 7.0 * 16)
        assert client.submit(dask_tasks.consume, on_normal, workers=[iso],
                             pure=False).result(timeout=60) == ("ndarray", None, 9.0 * 16)
        del on_iso, on_normal
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=30,
             what="the isolated worker to leave")


def test_killed_worker_leaves_nothing_after_clean() -> None:
    """A worker SIGKILLed while it holds a reference to the client's segment and a result of
    its own in shared memory: the client's segment is untouched, and `shmarray clean` removes
    what the dead worker owned; nothing is left once the cluster is closed."""
    before = ours()
    cluster, client = local_cluster()
    try:
        a, b = sorted(client.scheduler_info()["workers"])
        pid = client.run(os.getpid, workers=[a])[a]
        shared = shmarray.create(None, shape=(1 << 20,), dtype=np.float64)
        shared[:] = 1.0
        held = client.scatter(shared, workers=[a], direct=True)  # A maps the client's segment
        made = client.submit(dask_tasks.produce, 1 << 20, 2.0, workers=[a], pure=False)
        made.result(timeout=60)
        owned_by_a = {n for n in ours() - before if n != shared.name
                      and not n.startswith("dkb-")}
        assert owned_by_a, "A's result should be in shared memory"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: a not in client.scheduler_info()["workers"], timeout=30,
                 what="the scheduler to see the worker die")
        dead = {n for n in ours() - before
                if _registry.inspect(n).alive is False}
        assert owned_by_a <= dead and shared.name not in dead
        assert "removed" in shmarray_clean(dead)
        assert not dead & ours()
        assert float(shared.sum()) == shared.size  # the owner's data is untouched
        del held, made
        shared.unlink()
    finally:
        close(cluster, client)
    wait_for(lambda: not (ours() - before), timeout=10, what="every segment to go")


def test_unlink_when_unreferenced() -> None:
    """The ownership mode: the segment goes when the owner's last array over it goes; views
    count; attached mappings keep their data; only the creator may hand its lifetime over."""
    a = shmarray.create(None, shape=(1000,), dtype=np.int64).unlink_when_unreferenced()
    name = a.name
    assert name is not None
    a[:] = 7
    view = a[10:20]
    other = shmarray.attach(name)
    with pytest.raises(shmarray.AccessDeniedError):
        other.unlink_when_unreferenced()
    with pytest.raises(shmarray.NotFoundError):
        (a + 1).view(shmarray.SharedArray).unlink_when_unreferenced()
    del a
    gc.collect()
    assert name in ours()  # a view still uses it
    del view
    gc.collect()
    assert name not in ours()
    assert int(other.sum()) == 7000  # the attached mapping outlives the name
