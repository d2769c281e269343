"""Named shared arrays across real processes."""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import os
import pickle
import time

import numpy as np
import pytest

import shmarray
from helpers import run_py, start_py, worker_write

DTYPES = [
    "?", "i1", "u1", ">i2", "<i4", "i8", "u2", "u4", "u8", "f2", "f4", ">f8", "c8", "c16",
    "M8[ns]", "m8[us]", "S7", "U5", "V3",
    np.dtype([("x", "<f4"), ("y", ">i8"), ("tag", "S4")]),
    np.dtype([("pos", "f8", (3,)), ("inner", [("a", "u1"), ("b", "i2")])], align=True),
]


def _fill(a: np.ndarray) -> np.ndarray:
    raw = np.frombuffer(np.random.default_rng(1).bytes(a.nbytes), np.uint8)
    a.view(np.uint8).reshape(-1)[:] = raw
    return a


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_cross_process(name: str, dtype: object) -> None:
    a = shmarray.create(name, shape=(4, 3), dtype=dtype)
    try:
        _fill(a.view(np.uint8) if a.dtype.itemsize else a)
        digest = a.tobytes().hex()
        out = run_py(f"""
            import shmarray, numpy as np
            b = shmarray.attach({name!r})
            assert b.tobytes().hex() == {digest!r}
            print(b.dtype.descr, b.shape)
            b.view(np.uint8)[...] = 7
        """)
        assert str(a.shape) in out.stdout
        assert a.dtype == np.dtype(dtype)
        assert (a.view(np.uint8) == 7).all()
    finally:
        a.unlink()


def test_object_dtype_refused(name: str) -> None:
    with pytest.raises(TypeError, match="Python objects"):
        shmarray.create(name, shape=(2,), dtype=object)
    with pytest.raises(TypeError):
        shmarray.create(name, shape=(2,), dtype=[("a", "i4"), ("o", "O")])


def test_fortran_order_zero_d_and_empty(name: str) -> None:
    f = shmarray.from_array(name + "f", np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    z = shmarray.create(name + "z", shape=(), dtype="i8")
    e = shmarray.create(name + "e", shape=(0, 5), dtype="f4")
    try:
        assert f.flags.f_contiguous and not f.flags.c_contiguous
        z[()] = 42
        out = run_py(f"""
            import shmarray, numpy as np
            f = shmarray.attach({name + 'f'!r}); z = shmarray.attach({name + 'z'!r})
            e = shmarray.attach({name + 'e'!r})
            assert f.flags.f_contiguous and (f == np.arange(12.0).reshape(3, 4)).all()
            assert z.shape == () and int(z) == 42
            assert e.shape == (0, 5) and e.size == 0
            print("ok")
        """)
        assert "ok" in out.stdout
    finally:
        for a in (f, z, e):
            a.unlink()


def test_large_sparse_segment(name: str) -> None:
    n = 5 * 2**30  # past 4 GiB; sparse: only the touched pages use memory
    t0 = time.perf_counter()
    a = shmarray.create(name, shape=(n,), dtype=np.uint8)
    assert time.perf_counter() - t0 < 2.0
    try:
        a[n - 1] = 9
        a[2**32 + 5] = 3
        out = run_py(f"""
            import shmarray
            b = shmarray.attach({name!r})
            print(int(b[{n - 1}]), int(b[{2**32 + 5}]), b.shape)
        """)
        assert out.stdout.split()[:2] == ["9", "3"]
    finally:
        a.unlink()


def test_attach_waits_for_create(name: str) -> None:
    child = start_py(f"""
        import shmarray, time
        print("waiting", flush=True)
        t0 = time.monotonic()
        b = shmarray.attach({name!r}, timeout=20)
        print(int(b[0]), round(time.monotonic() - t0, 2), flush=True)
    """)
    assert child.stdout is not None and child.stdout.readline().strip() == "waiting"
    time.sleep(0.8)
    a = shmarray.create(name, shape=(1,), dtype="i4")
    a[0] = 11  # the child may read 0 or 11: the segment is zero-filled until this store
    try:
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        value, waited = out.split()[-2:]
        assert value in ("0", "11") and float(waited) >= 0.5
    finally:
        a.unlink()


def test_attach_not_found_and_timeouts(name: str) -> None:
    with pytest.raises(shmarray.NotFoundError, match="shmarray ls"):
        shmarray.attach(name, timeout=0)
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError):
        shmarray.attach(name, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 3


def test_pickle_to_process_pool_is_zero_copy(name: str) -> None:
    a = shmarray.create(name, shape=(100, 1000), dtype=np.int64)
    try:
        ctx = mp.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            _, pid = ex.submit(worker_write, a[10:20]).result(timeout=60)
        assert (a[10:20] == pid).all()
        assert (a[:10] == 0).all() and (a[20:] == 0).all()
        assert len(pickle.dumps(a)) < 1000  # the name, not 800 kB of data
    finally:
        a.unlink()


def test_pickled_slice_is_same_slice(name: str) -> None:
    with shmarray.create(name, shape=(10, 10), dtype="f8") as a:
        a[...] = np.arange(100).reshape(10, 10)
        s = a[2:8:2, ::-3]
        t = pickle.loads(pickle.dumps(s))
        assert isinstance(t, shmarray.SharedArray) and t.name == name
        assert t.shape == s.shape and t.strides == s.strides and (t == s).all()
        t[0, 0] = -1
        assert a[2, 9] == -1


def test_copy_has_no_name_and_refuses_unlink(name: str) -> None:
    import copy

    with shmarray.create(name, shape=(3,), dtype="i4") as a:
        for c in (a.copy(), copy.deepcopy(a), a + 1, np.array(a)):
            assert getattr(c, "name", None) is None
            if isinstance(c, shmarray.SharedArray):
                with pytest.raises(shmarray.NotFoundError):
                    c.unlink()
        assert type(a + 1) is np.ndarray and type(a.sum()) is not shmarray.SharedArray
        assert a[1:].name == name
        assert os.path.exists(f"/dev/shm/shmarray.{name}")


def test_readonly_attach_refuses_writes(name: str) -> None:
    with shmarray.create(name, shape=(4, 4), dtype="f4") as a:
        b = shmarray.attach(name, readonly=True)
        for v in (b, b[1:], b.T, b.reshape(16), b[::2]):
            with pytest.raises(ValueError):
                v[...] = 1
        with pytest.raises(ValueError):
            b.flags.writeable = True
        with pytest.raises(ValueError):
            b.unprotect()
        a[0, 0] = 3
        assert b[0, 0] == 3


def test_protect_unprotect(name: str) -> None:
    with shmarray.create(name, shape=(8,), dtype="i4") as a:
        a.protect()
        with pytest.raises(ValueError):
            a[0] = 1
        with pytest.raises(ValueError):
            a[2:][0] = 1  # views derived after protect() inherit it
        a.unprotect()
        a[0] = 5
        assert a[0] == 5
        a.flush()


def test_exists_error_names_owner(name: str) -> None:
    with shmarray.create(name, shape=(2,), dtype="i4"):
        with pytest.raises(shmarray.ExistsError, match=rf"owner pid {os.getpid()}, alive.*attach"):
            shmarray.create(name, shape=(2,), dtype="i4")
        b = shmarray.create(name, shape=(2,), dtype="i4", exist_ok=True)
        assert b.name == name
        with pytest.raises(shmarray.ExistsError, match="shape"):
            shmarray.create(name, shape=(3,), dtype="i4", exist_ok=True)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "a.b", "-x", "x" * 101, "a\0b", "sp ace", 5])
def test_invalid_names(bad: object) -> None:
    with pytest.raises(shmarray.InvalidNameError, match="A-Za-z0-9"):
        shmarray.create(bad, shape=(1,))  # type: ignore[arg-type]


def test_unlink_twice_and_by_name(name: str) -> None:
    a = shmarray.create(name, shape=(2,))
    shmarray.unlink(name)
    with pytest.raises(shmarray.NotFoundError):
        a.unlink()
    with pytest.raises(shmarray.NotFoundError):
        shmarray.unlink(name)
    a[0] = 1.5  # the mapping outlives the name
    assert a[0] == 1.5


def test_unique_name_and_close_keeps_views(name: str) -> None:
    a = shmarray.create(shape=(1000,), dtype="u1")
    assert a.name and a.name.startswith("array-")
    v = a[10:]
    a.close()
    v[...] = 3  # still mapped: close never unmaps under a live view
    assert v.sum() == 3 * 990
    with pytest.raises(shmarray.ClosedError):
        a.flush()
    shmarray.unlink(a.name)


def test_create_attach_1gib_is_instant(name: str) -> None:
    t0 = time.perf_counter()
    a = shmarray.create(name, shape=(2**30,), dtype=np.uint8)
    b = shmarray.attach(name)
    dt = time.perf_counter() - t0
    try:
        assert dt < 1.0  # a few ms in practice: no page is touched
        assert os.stat(f"/dev/shm/shmarray.{name}").st_blocks * 512 < 2**20
    finally:
        a.unlink()
    del b


def test_reserve_allocates(name: str) -> None:
    with shmarray.create(name, shape=(2**20,), dtype=np.uint8, reserve=True):
        assert os.stat(f"/dev/shm/shmarray.{name}").st_blocks * 512 >= 2**20


def test_too_large_for_dev_shm(name: str) -> None:
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    with pytest.raises(shmarray.LimitError, match="/dev/shm"):
        shmarray.create(name, shape=(free + 2**30,), dtype=np.uint8)
    assert not os.path.exists(f"/dev/shm/shmarray.{name}")
