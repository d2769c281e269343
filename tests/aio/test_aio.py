"""shmarray.aio across real processes: awaits woken by doorbells, cancellation that leaves
nothing behind, peer death, end of stream, and cleanup of the doorbell FIFOs."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from typing import Any

import numpy as np
import pytest

import shmarray
import shmarray.aio
from helpers import doorbells as _doorbells
from helpers import run_async as _run
from helpers import ASYNC_WAITER, run_py, start_py, stop, wait_for


def _producer(name: str, n: int, pause_every: int = 0, end: bool = True) -> subprocess.Popen[str]:
    """A process sending frames 0..n-1 (int64[16] filled with i, tag i), pausing 2 ms every
    ``pause_every`` frames so that the consumer goes to sleep on its doorbell."""
    return start_py(f"""
        import time, numpy as np, shmarray
        ch = shmarray.Channel.open({name!r}, timeout=10)
        print("ready", flush=True)
        for i in range({n}):
            ch.send(np.full(16, i, np.int64), tag=i, timeout=30)
            if {pause_every} and i % {pause_every} == 0:
                time.sleep(0.002)
        if {end}:
            ch.end()
        print("done", flush=True)
    """)


def test_an_async_consumer_receives_10000_frames_intact_and_in_order(name: str) -> None:
    n = 10_000
    with shmarray.Channel.create(name, slot_bytes=128, capacity=16):
        prod = _producer(name, n, pause_every=97)

        async def consume() -> tuple[int, int]:
            ach = shmarray.aio.Channel.open(name)
            got = bad = 0
            async for view in ach:
                if not (view == got).all():
                    bad += 1
                got += 1
            ach.close()
            assert _doorbells(name) == []  # the FIFO went with the handle
            return got, bad

        try:
            got, bad = _run(consume)
        finally:
            out, err = stop(prod)
        assert (got, bad) == (n, 0), err


def test_recv_frames_tags_and_with_blocks(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=128, capacity=4):
        prod = _producer(name, 50, pause_every=5)

        async def consume() -> list[int]:
            tags = []
            async with shmarray.aio.Channel.open(name) as ach:
                while True:
                    try:
                        frame = await ach.recv(timeout=10)
                    except shmarray.StreamEnded:
                        break
                    with frame as view:
                        assert view[0] == frame.tag and not view.flags.writeable
                    tags.append(frame.tag)
            return tags

        try:
            assert _run(consume) == list(range(50))
        finally:
            stop(prod)


def test_two_channels_awaited_concurrently_in_one_loop(name: str) -> None:
    names = [f"{name}_a", f"{name}_b"]
    chans = [shmarray.Channel.create(n, slot_bytes=128, capacity=8) for n in names]
    prods = [_producer(n, 2000, pause_every=50) for n in names]
    try:
        async def drain(n: str) -> int:
            count = 0
            with shmarray.aio.Channel.open(n) as ach:
                async for view in ach:
                    assert view[0] == count
                    count += 1
            return count

        async def both() -> list[int]:
            return list(await asyncio.gather(*(drain(n) for n in names)))

        assert _run(both) == [2000, 2000]
    finally:
        for p in prods:
            stop(p)
        for c in chans:
            c.close()
            c.unlink()


def test_cancelled_awaits_leave_nothing_armed_leased_or_stolen(name: str) -> None:
    # A work queue with an async and a sync consumer: the async one's awaits are cancelled at
    # random points while frames trickle in. Every frame must reach exactly one consumer, the
    # sync consumer keeps receiving, and nothing is left held or armed.
    n = 600
    with shmarray.Channel.create(name, slot_bytes=128, capacity=8, mode="work-queue") as tx:
        sync_rx = start_py(f"""
            import shmarray
            ch = shmarray.Channel.open({name!r}, timeout=10)
            print("ready", flush=True)
            got = []
            try:
                while True:
                    with ch.recv(timeout=30) as v:
                        got.append(int(v[0]))
            except shmarray.StreamEnded:
                pass
            print(",".join(map(str, got)), flush=True)
        """)
        assert sync_rx.stdout is not None and sync_rx.stdout.readline().strip() == "ready"
        rng = random.Random(5)

        async def churn() -> list[int]:
            got: list[int] = []
            ach = shmarray.aio.Channel.open(name)

            async def take_one() -> None:
                with await ach.recv(timeout=30) as v:
                    got.append(int(v[0]))

            async def produce() -> None:
                for i in range(n):
                    tx.send(np.full(16, i, np.int64), tag=i, timeout=30)
                    # a gap after every frame: the async consumer is often parked, so that
                    # many of its awaits are cancelled while waiting, however fast it wakes
                    await asyncio.sleep(rng.uniform(0, 0.002))
                tx.end()

            feeder = asyncio.ensure_future(produce())
            cancelled = 0
            ended = False
            while not ended:
                t = asyncio.ensure_future(take_one())
                await asyncio.sleep(rng.uniform(0, 0.003))
                if not t.done():
                    t.cancel()
                    cancelled += 1
                try:
                    await t
                except asyncio.CancelledError:
                    pass
                except shmarray.StreamEnded:
                    ended = True
            await feeder
            me = ach._sync._h.self_info()
            assert me.held == 0, "a cancelled await left a frame leased"
            assert int(ach._sync._h.participant(me.index).doorbell) == 0, "left armed"
            ach.close()
            assert cancelled > 20, cancelled
            return got

        try:
            mine = _run(churn)
            assert sync_rx.wait(30) == 0
        finally:
            out, err = stop(sync_rx)
        theirs = [int(x) for x in out.strip().split(",") if x]
        assert len(theirs) > 0, "the sync consumer was starved"
        assert sorted(mine + theirs) == list(range(n)), err


def test_a_producer_killed_during_an_await_raises_peer_died(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=128, capacity=8):
        prod = start_py(f"""
            import time, numpy as np, shmarray
            ch = shmarray.Channel.open({name!r}, timeout=10)
            ch.send(np.zeros(16, np.int64))
            print("sent", flush=True)
            time.sleep(60)
        """)
        try:
            assert prod.stdout is not None and prod.stdout.readline().strip() == "sent"

            async def consume() -> None:
                ach = shmarray.aio.Channel.open(name)
                try:
                    with await ach.recv(timeout=10):
                        pass
                    loop = asyncio.get_running_loop()
                    loop.call_later(0.3, prod.send_signal, signal.SIGKILL)
                    with pytest.raises(shmarray.PeerDiedError):
                        await ach.recv(timeout=20)
                finally:
                    ach.close()

            _run(consume)
        finally:
            stop(prod)


def test_timeouts_raise_the_sync_exceptions(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=128, capacity=2) as ch:
        async def waits() -> None:
            ach = shmarray.aio.Channel.open(name)
            try:
                with pytest.raises(shmarray.WouldBlockError):
                    await ach.recv(timeout=0)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                with pytest.raises(shmarray.WaitTimeoutError):
                    await ach.recv(timeout=0.25)
                assert 0.2 < loop.time() - t0 < 2
            finally:
                ach.close()
            # a producer awaiting space: the ring is full and nobody reads
            prod = shmarray.aio.Channel.open(name)
            try:
                await prod.send(np.zeros(4))
                await prod.send(np.zeros(4))
                with pytest.raises(shmarray.WaitTimeoutError):
                    await prod.send(np.zeros(4), timeout=0.2)
            finally:
                prod.close()
        _run(waits)
        assert ch.stats()["committed"] == 2, ch.stats()


def test_an_awaiting_producer_is_woken_when_space_frees(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=128, capacity=4):
        rx = start_py(f"""
            import time, shmarray
            ch = shmarray.Channel.open({name!r}, timeout=10)
            n = 0
            try:
                while True:
                    with ch.recv(timeout=30) as v:
                        assert v[0] == n
                    n += 1
                    if n % 10 == 0:
                        time.sleep(0.005)
            except shmarray.StreamEnded:
                pass
            print(n, flush=True)
        """)

        async def produce() -> None:
            ach = shmarray.aio.Channel.open(name)
            for i in range(300):
                if i % 2:
                    await ach.send(np.full(16, i, np.int64), timeout=30)
                else:
                    async with ach.loan((16,), np.int64, timeout=30) as out:
                        out[:] = i
            ach.end()
            ach.close()

        try:
            _run(produce)
            assert rx.wait(30) == 0
            out, err = stop(rx)
            assert out.strip() == "300", err
        finally:
            stop(rx)


def test_broadcast_subscribers_and_latest(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=128, capacity=8, mode="broadcast",
                                 max_subscribers=4, policy="block"):
        async def go() -> None:
            ach = shmarray.aio.Channel.open(name)
            subs = [ach.subscribe() for _ in range(2)]

            async def read(sub: Any) -> list[int]:
                return [int(v[0]) async for v in sub]

            async def send() -> None:  # in the same loop: the producer awaits space too
                for i in range(100):
                    await ach.send(np.full(4, i), timeout=10)
                ach.end()

            got = await asyncio.gather(send(), *(read(s) for s in subs))
            assert got[1] == got[2] == list(range(100))
            with pytest.raises(shmarray.StreamEnded):
                await subs[0].latest(timeout=1)
            for s in subs:
                s.close()
            ach.close()
        _run(go)


def test_control_messages_are_awaited(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=128, capacity=2) as ch:
        async def go() -> None:
            ach = shmarray.aio.Channel.open(name)
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, ch.control.send, {"fps": 30})
            assert await ach.control.recv(timeout=5) == {"fps": 30}
            with pytest.raises(shmarray.WaitTimeoutError):
                await ach.control.recv(timeout=0.1)
            ach.close()
        _run(go)


def test_a_blocking_call_is_not_reachable_through_the_twin(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=128, capacity=2):
        ach = shmarray.aio.Channel.open(name)
        assert ach.capacity == 2 and ach.mode == "one-to-one"
        with pytest.raises(AttributeError, match="block the event loop"):
            _ = ach.recv_many
        ach.close()


def test_a_killed_waiters_doorbell_is_removed_by_clean(name: str) -> None:
    ch = shmarray.Channel.create(name, slot_bytes=128, capacity=2)
    waiter = start_py(ASYNC_WAITER.format(name=name, create=""))
    try:
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "waiting"
        assert len(_doorbells(name)) == 1
        waiter.send_signal(signal.SIGKILL)
        waiter.wait(10)
        # the producer rings a dead waiter's FIFO: nobody reads it (ENXIO), no harm done
        ch.send(np.zeros(4))
        # the channel's owner unlinks the doorbells with the channel
        ch.close()
        ch.unlink()
        assert _doorbells(name) == []
    finally:
        stop(waiter)
    # SIGKILL of the owner too: `shmarray clean` removes the channel and its doorbells
    owner = start_py(ASYNC_WAITER.format(
        name=name, create=f"ch = shmarray.Channel.create({name!r}, slot_bytes=128, capacity=2)"))
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "waiting"
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert len(_doorbells(name)) == 1
        res = run_py("from shmarray.cli import main; main(['clean'])")
        assert "removed channel" in res.stdout, res.stdout
        assert _doorbells(name) == [] and not os.path.exists(f"/dev/shm/shmarray.{name}")
    finally:
        stop(owner)


def test_an_orphaned_doorbell_is_listed_and_cleaned(name: str) -> None:
    path = f"/dev/shm/shmarray.{name}.{0x1234:016x}.db3"
    os.mkfifo(path, 0o600)
    try:
        res = run_py("from shmarray.cli import main; main(['ls'])")
        assert path in res.stdout and "doorbell" in res.stdout, res.stdout
        res = run_py("from shmarray.cli import main; main(['clean'])")
        assert f"removed orphaned doorbell {path}" in res.stdout, res.stdout
        wait_for(lambda: not os.path.exists(path), 5, "the doorbell gone")
    finally:
        if os.path.exists(path):
            os.unlink(path)
