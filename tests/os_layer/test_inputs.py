"""Opening by name fails fast, a scribbled header is named, and bad input gets a clear
ShmArrayError with nothing left behind (shared arrays and the segment layer)."""

from __future__ import annotations

import mmap
import os
import pickle
import time

import numpy as np
import pytest

import shmarray
from helpers import run_py


def test_a_missing_name_fails_at_once(name: str) -> None:
    for opener in (shmarray.attach, shmarray.Channel.open):
        t0 = time.monotonic()
        with pytest.raises(shmarray.NotFoundError, match="timeout=") as e:
            opener(f"{name}_typo")
        assert time.monotonic() - t0 < 0.5
        assert isinstance(e.value, FileNotFoundError)
    t0 = time.monotonic()
    with pytest.raises(shmarray.NotFoundError, match="waited 0.2 s"):
        shmarray.attach(f"{name}_typo", timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2


@pytest.mark.parametrize("kind", ["array", "channel"])
@pytest.mark.parametrize("word", [2, 0x100, 0xFFFFFFFF])
def test_a_scribbled_ready_word_is_corrupt_not_a_wait(name: str, kind: str, word: int) -> None:
    made = (shmarray.create(name, shape=(4,)) if kind == "array"
            else shmarray.Channel.create(name, slot_bytes=64, capacity=2))
    try:
        fd = os.open(f"/dev/shm/shmarray.{name}", os.O_RDWR)
        with mmap.mmap(fd, 4096) as mm:
            mm[20:24] = word.to_bytes(4, "little")  # csrc/seg.h: the ready word
            os.close(fd)
            for zero_magic in (False, True):  # a complete header, or one being created
                if zero_magic:
                    mm[0:8] = bytes(8)
                t0 = time.monotonic()
                opener = shmarray.attach if kind == "array" else shmarray.Channel.open
                with pytest.raises(shmarray.CorruptSegmentError, match="'ready'"):
                    opener(name, timeout=5)
                assert time.monotonic() - t0 < 1
            mm[0:8] = b"SHMARRAY"
            mm[20:24] = (1).to_bytes(4, "little")
    finally:
        made.close() if kind == "channel" else None
        shmarray.unlink(name)


@pytest.mark.parametrize("shape,dtype", [((2**62,), np.float64), ((2**40, 2**40), np.uint8),
                                         ((2**64,), np.uint8)])
def test_sizes_beyond_64_bits_are_refused_by_name(name: str, shape: tuple[int, ...],
                                                  dtype: type) -> None:
    with pytest.raises(shmarray.InvalidArgumentError, match=f"shared array '{name}'.*bytes") as e:
        shmarray.create(name, shape=shape, dtype=dtype)
    assert isinstance(e.value, ValueError)
    assert not os.path.exists(f"/dev/shm/shmarray.{name}")


@pytest.mark.parametrize("shape,why", [((3, -1), "negative dimension"),
                                       ((1,) * 65, "65 dimensions; the limit")])
def test_impossible_shapes_are_refused_by_name(name: str, shape: tuple[int, ...],
                                               why: str) -> None:
    with pytest.raises(shmarray.InvalidArgumentError, match=f"shared array '{name}': {why}"):
        shmarray.create(name, shape=shape, dtype=np.uint8)
    assert not os.path.exists(f"/dev/shm/shmarray.{name}")


STRUCTURED = [
    np.dtype([(("Temperature", "temp"), "<f4"), ("n", "<i2")]),             # titles
    np.dtype([("a", "u1"), ("b", "<f8")], align=True),                     # alignment
    np.dtype({"names": ["x", "y"], "formats": ["<i4", "<f2"], "offsets": [8, 0],
              "itemsize": 24}),                                            # offsets, padding
    np.dtype([("p", [("q", "<i2", (2,)), (("T", "r"), "S3")]), ("u", "<U2")]),  # nested
]


@pytest.mark.parametrize("dt", STRUCTURED, ids=range(len(STRUCTURED)))
def test_structured_dtypes_round_trip_exactly(name: str, dt: np.dtype) -> None:
    with shmarray.create(name, shape=(3,), dtype=dt) as a:
        again = shmarray.create(name, shape=(3,), dtype=dt, exist_ok=True)  # the creator's own
        assert again.dtype == dt
        res = run_py(f"""
            import pickle, shmarray
            dt = pickle.loads(bytes.fromhex({pickle.dumps(dt).hex()!r}))
            b = shmarray.attach({name!r})
            print(b.dtype == dt, repr(b.dtype) == repr(dt), b.dtype.itemsize,
                  b.dtype.isalignedstruct)
        """)
        assert res.stdout.split() == ["True", "True", str(dt.itemsize),
                                      str(dt.isalignedstruct)], res.stdout
        if "temp" in (dt.names or ()):
            b = shmarray.attach(name)
            b["Temperature"][:] = 1.5  # a title lookup works across an attach
            assert (a["temp"] == 1.5).all()
            del b


def test_protect_on_one_unpickled_array_never_crashes_another(name: str) -> None:
    # Each unpickled array maps the segment for itself: protect() on one changes what that
    # one allows, never what an independent one does (a write through it used to SIGSEGV).
    res = run_py(f"""
        import pickle, shmarray
        a = shmarray.create({name!r}, shape=(8,))
        x = pickle.loads(pickle.dumps(a[:4]))
        y = pickle.loads(pickle.dumps(a[4:]))
        x.protect()
        y[:] = 7.0
        print(float(a[5]), x.flags.writeable, y.flags.writeable)
        a.unlink()
    """)
    assert res.stdout.split() == ["7.0", "False", "True"]


def test_pickled_arrays_still_share_the_memory(name: str) -> None:
    with shmarray.create(name, shape=(6,)) as a:
        x = pickle.loads(pickle.dumps(a[1:3]))
        x[:] = 5.0
        assert list(a[:4]) == [0.0, 5.0, 5.0, 0.0]
