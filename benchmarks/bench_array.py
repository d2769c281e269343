"""Per-call costs of named shared arrays: create / attach of 1 GiB, views, pickling."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

import shmarray

GIB = 1 << 30


@pytest.mark.benchmark(group="array: 1 GiB")
def test_create_unlink_1gib(benchmark: Any, name: str) -> None:
    """create() of a 1 GiB float32 array (pages are not reserved: should stay instant)."""
    counter = iter(range(10**9))

    def step() -> None:
        a = shmarray.create(f"{name}-{next(counter)}", shape=(GIB // 4,), dtype=np.float32)
        a.unlink()
        a.close()

    benchmark.pedantic(step, rounds=30, iterations=1)


@pytest.mark.benchmark(group="array: 1 GiB")
def test_attach_close_1gib(benchmark: Any, name: str) -> None:
    with shmarray.create(name, shape=(GIB // 4,), dtype=np.float32):
        def step() -> None:
            shmarray.attach(name, timeout=5).close()

        benchmark.pedantic(step, rounds=50, iterations=1)


@pytest.fixture
def arr(name: str) -> Any:
    with shmarray.create(name, shape=(1000, 1000), dtype=np.float32) as a:
        yield a


@pytest.mark.benchmark(group="array: views")
def test_view_slice(benchmark: Any, arr: Any) -> None:
    """A slice of a SharedArray (an ndarray subclass: __array_finalize__ runs)."""
    benchmark(arr.__getitem__, slice(10, 20))


@pytest.mark.benchmark(group="array: views")
def test_view_plain_ndarray(benchmark: Any, arr: Any) -> None:
    """The same slice of a plain ndarray: the baseline for the subclass's overhead."""
    plain = np.asarray(arr)
    benchmark(plain.__getitem__, slice(10, 20))


@pytest.mark.benchmark(group="array: views")
def test_view_frombuffer(benchmark: Any, arr: Any) -> None:
    """np.frombuffer(...).reshape: the per-message view a channel must not build."""
    buf = memoryview(np.asarray(arr)).cast("B")

    def step() -> Any:
        return np.frombuffer(buf, dtype=np.float32, count=1000).reshape(10, 100)

    benchmark(step)


@pytest.mark.benchmark(group="array: pickle")
def test_pickle_slice(benchmark: Any, arr: Any) -> None:
    """pickle.dumps of a slice: carries name, offset and strides, not the data."""
    part = arr[10:20]
    data = benchmark(pickle.dumps, part)
    assert len(data) < 1000


@pytest.mark.benchmark(group="array: pickle")
def test_unpickle_slice(benchmark: Any, arr: Any) -> None:
    """pickle.loads of a slice: attaches the segment by name."""
    data = pickle.dumps(arr[10:20])

    def step() -> None:
        pickle.loads(data).close()

    benchmark.pedantic(step, rounds=200, iterations=1)
