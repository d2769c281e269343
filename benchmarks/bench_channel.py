"""Per-call costs of a channel in one process (uncontended: the ring never waits).

A regression in any of them shows here before it shows in ``shmarray bench``. Producer and
consumer are two handles of one channel in the same process, so nothing sleeps or spins.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shmarray import Channel

SIZES = {"64B": (64,), "64KiB": (65536,), "1080p": (1080, 1920, 3)}


@pytest.fixture(params=list(SIZES), ids=list(SIZES))
def pair(request: pytest.FixtureRequest, name: str) -> Iterator[tuple[Any, Any, Any]]:
    shape = SIZES[request.param]
    nbytes = int(np.prod(shape))
    with Channel.create(name, slot_bytes=nbytes, capacity=8) as ch:
        rx = Channel.open(name, timeout=5)
        src = np.ones(shape, dtype=np.uint8)
        try:
            yield ch, rx, src
        finally:
            rx.close()


@pytest.mark.benchmark(group="channel: send + recv + release")
def test_send_recv(benchmark: Any, pair: tuple[Any, Any, Any]) -> None:
    ch, rx, src = pair
    send, recv = ch.send, rx.recv

    def step() -> None:
        send(src)
        recv().release()

    benchmark(step)


@pytest.mark.benchmark(group="channel: loan + commit + recv + release")
def test_loan_commit_recv(benchmark: Any, pair: tuple[Any, Any, Any]) -> None:
    ch, rx, src = pair
    loan, recv, shape = ch.loan, rx.recv, src.shape

    def step() -> None:
        with loan(shape, np.uint8) as out:
            out[0] = 1
        recv().release()

    benchmark(step)


@pytest.mark.benchmark(group="channel: recv_copy")
def test_send_recv_copy(benchmark: Any, pair: tuple[Any, Any, Any]) -> None:
    ch, rx, src = pair
    send, recv_copy = ch.send, rx.recv_copy

    def step() -> None:
        send(src)
        recv_copy()

    benchmark(step)


@pytest.mark.benchmark(group="channel: single calls")
def test_send_only(benchmark: Any, name: str) -> None:
    """send() alone: each round sends one frame into an empty ring (drained in setup)."""
    with Channel.create(name, slot_bytes=64, capacity=8) as ch:
        rx = Channel.open(name, timeout=5)
        src = np.ones(64, dtype=np.uint8)
        ch.send(src)
        rx.recv().release()  # register both sides before timing

        def drain() -> None:
            f = rx.try_recv()
            while f is not None:
                f.release()
                f = rx.try_recv()

        benchmark.pedantic(ch.send, args=(src,), setup=drain, rounds=5000, iterations=1)
        drain()
        rx.close()


@pytest.mark.benchmark(group="channel: single calls")
def test_recv_release_only(benchmark: Any, name: str) -> None:
    """recv() + release() alone: each round finds one frame (sent in setup)."""
    with Channel.create(name, slot_bytes=64, capacity=8) as ch:
        rx = Channel.open(name, timeout=5)
        src = np.ones(64, dtype=np.uint8)

        def one() -> None:
            rx.recv().release()

        benchmark.pedantic(one, setup=lambda: ch.send(src), rounds=5000, iterations=1)
        rx.close()


@pytest.mark.benchmark(group="channel: single calls")
def test_try_recv_empty(benchmark: Any, name: str) -> None:
    """A poll of an empty ring (what a non-blocking consumer pays when there is nothing)."""
    with Channel.create(name, slot_bytes=64, capacity=8) as ch:
        rx = Channel.open(name, timeout=5)
        ch.send(np.ones(64, dtype=np.uint8))
        rx.recv().release()
        assert rx.try_recv() is None
        benchmark(rx.try_recv)
        rx.close()


@pytest.mark.benchmark(group="channel: create / open / close")
def test_create_unlink(benchmark: Any, name: str) -> None:
    """Channel.create + unlink of a 1080p x 8 ring (segment, semaphores, control queue)."""
    counter = iter(range(10**9))

    def step() -> None:
        ch = Channel.create(f"{name}-{next(counter)}", slot_bytes=1080 * 1920 * 3, capacity=8)
        ch.close()
        ch.unlink()

    benchmark.pedantic(step, rounds=30, iterations=1)


@pytest.mark.benchmark(group="channel: create / open / close")
def test_open_close(benchmark: Any, name: str) -> None:
    with Channel.create(name, slot_bytes=1080 * 1920 * 3, capacity=8):
        def step() -> None:
            Channel.open(name, timeout=5).close()

        benchmark.pedantic(step, rounds=100, iterations=1)
