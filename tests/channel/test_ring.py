"""Channels across real processes: integrity, order, zero copy, blocking, end, dead peers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shmarray
from helpers import CHILD_CWD, run_py, start_py, stop

# A spawned producer: N frames of random shapes and dtypes, half by send and half by loan; each
# frame's tag is the crc of its bytes, so the consumer checks integrity and order.
PRODUCER = """
import sys, zlib, numpy as np, shmarray
name, n, seed, pid_tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(seed)
dtypes = ["u1", "i2", "<f4", ">f8", "c8", "?", "M8[ns]", ">u4"]
ch = shmarray.Channel.open(name, timeout=30)
for i in range(n):
    dt = np.dtype(dtypes[i % len(dtypes)])
    shape = tuple(int(s) for s in rng.integers(0, 9, size=int(rng.integers(0, 4))))
    data = np.frombuffer(rng.bytes(int(np.prod(shape)) * dt.itemsize), np.uint8)
    # tag: producer id in the top 16 bits, then the frame index, then the crc
    tag = (pid_tag << 48) | (i << 32) | zlib.crc32(data.tobytes())
    if i % 2:
        ch.send(data.view(dt).reshape(shape), tag=tag, timeout=30)
    else:
        with ch.loan(shape, dt, timeout=30, tag=tag) as out:
            out.reshape(-1).view(np.uint8)[:] = data
ch.end()
ch.close()
print("done", flush=True)
"""


def _check(frame: shmarray.Frame) -> tuple[int, int]:
    import zlib

    tag = int(frame.tag)
    with frame as view:
        assert not view.flags.writeable
        assert view.flags.c_contiguous
        crc = zlib.crc32(view.tobytes())
    assert crc == tag & 0xFFFFFFFF, f"frame {tag >> 32 & 0xFFFF} corrupt"
    return tag >> 48, (tag >> 32) & 0xFFFF


def test_one_to_one_order_and_integrity(name: str) -> None:
    n = 3000
    with shmarray.Channel.create(name, slot_bytes=8 * 8 * 8 * 8, capacity=8) as ch:
        prod = start_py(PRODUCER, name, str(n), "1", "7")
        try:
            expected = 0
            for frame in iter(lambda: ch.recv(timeout=30), None):
                seq = frame.seq
                who, idx = _check(frame)
                assert (who, idx, seq) == (7, expected, expected)
                expected += 1
                if expected == n:
                    break
            with pytest.raises(shmarray.StreamEnded):
                ch.recv(timeout=30)
            assert list(ch) == []
            out, err = prod.communicate(timeout=30)
            assert prod.returncode == 0, err
        finally:
            stop(prod)


CONSUMER = """
import sys, json, zlib, numpy as np, shmarray
ch = shmarray.Channel.open(sys.argv[1], timeout=30)
got = []
while True:
    try:
        frame = ch.recv(timeout=30)
    except shmarray.StreamEnded:
        break
    with frame as view:
        assert zlib.crc32(view.tobytes()) == frame.tag & 0xFFFFFFFF
        got.append(int(frame.tag) >> 32)
ch.close()
print(json.dumps(got), flush=True)
"""


def test_work_queue_exactly_once(name: str) -> None:
    n = 1500
    with shmarray.Channel.create(name, slot_bytes=4096, capacity=8, mode="work-queue"):
        cons = [start_py(CONSUMER, name) for _ in range(3)]
        prods = [start_py(PRODUCER, name, str(n), str(s), str(s)) for s in (1, 2)]
        try:
            for p in prods:
                _, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
            got: list[int] = []
            for c in cons:
                out, err = c.communicate(timeout=60)
                assert c.returncode == 0, err
                got += json.loads(out)
            expected = sorted((s << 16) | i for s in (1, 2) for i in range(n))
            assert len(got) == len(expected), "loss or duplicate"
            assert sorted(got) == expected
        finally:
            for p in prods + cons:
                stop(p)


def test_zero_copy_views_lie_in_the_slot(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=1 << 16, capacity=4) as tx:
        rx = shmarray.Channel.open(name)
        with tx.loan((64, 64), np.uint16) as out:
            out[...] = 7
            loan_ptr = out.__array_interface__["data"][0]
        payload = tx._seg.capacity * tx._seg.stride
        assert tx._seg.rw_payload <= loan_ptr < tx._seg.rw_payload + payload
        with rx.recv() as view:
            ptr = view.__array_interface__["data"][0]
            # a consumer's view lies in the read-only mapping of the payload...
            lo = rx._seg.ro_payload
            assert lo <= ptr and ptr + view.nbytes <= lo + payload
            assert np.shares_memory(view, np.frombuffer(rx._seg.ro, np.uint8))
            # ...over the very bytes the producer wrote: same offset in the payload
            assert ptr - lo == loan_ptr - tx._seg.rw_payload
            assert (view == 7).all()
        rx.close()


def test_zero_copy_across_processes(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=1 << 20, capacity=4) as ch:
        run_py(f"""
            import shmarray, numpy as np
            ch = shmarray.Channel.open({name!r}, timeout=10)
            with ch.loan((512, 512), np.float32) as out:
                out[...] = 3.0
                print(out.__array_interface__["data"][0] - ch._seg.mapping.addr)
            ch.close()
        """)
        with ch.recv(timeout=10) as view:
            assert view.shape == (512, 512) and (view == 3.0).all()


def test_blocking_consumer_wakes_on_send(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4) as ch:
        child = start_py(f"""
            import shmarray, numpy as np, time
            ch = shmarray.Channel.open({name!r}, timeout=10)
            print("ready", flush=True)
            time.sleep(0.5)
            ch.send(np.array([time.monotonic_ns()]))
            ch.close()
        """)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            t0 = time.monotonic()
            with ch.recv(timeout=20) as view:
                woke = time.monotonic_ns()
                sent = int(view[0])
            assert time.monotonic() - t0 >= 0.3
            assert (woke - sent) / 1e9 < 1.0  # woken by the post, not by a slice expiry
        finally:
            stop(child)


def test_blocking_producer_wakes_on_release(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as tx:
        rx = shmarray.Channel.open(name)
        tx.send(np.zeros(4))
        tx.send(np.zeros(4))
        with pytest.raises(shmarray.WouldBlockError):
            tx.send(np.zeros(4), timeout=0)
        t0 = time.monotonic()
        with pytest.raises(shmarray.WaitTimeoutError):
            tx.send(np.zeros(4), timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2.0
        child = start_py(f"""
            import shmarray, time
            ch = shmarray.Channel.open({name!r}, timeout=10)
            time.sleep(0.3)
            f = ch.recv(timeout=10)
            f.release()
            time.sleep(0.5)
            ch.close()
        """)
        try:
            rx.close()  # the child is the consumer now
            t0 = time.monotonic()
            tx.send(np.ones(4), timeout=20)
            assert time.monotonic() - t0 < 5
        finally:
            stop(child)


def test_timeouts_and_try_recv(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as tx:
        rx = shmarray.Channel.open(name)
        assert rx.try_recv() is None
        with pytest.raises(shmarray.WouldBlockError):
            rx.recv(timeout=0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            rx.recv(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2.0
        tx.send(np.arange(3))
        frame = rx.try_recv()
        assert frame is not None and list(frame.array) == [0, 1, 2]
        frame.release()
        rx.close()


def test_end_of_stream_reaches_after_drain(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=8) as tx:
        rx = shmarray.Channel.open(name)
        for i in range(5):
            tx.send(np.array([i]))
        tx.end()
        assert [int(v[0]) for v in rx] == list(range(5))
        with pytest.raises(shmarray.StreamEnded):
            rx.recv(timeout=1)
        with pytest.raises(shmarray.StreamEnded):
            rx.try_recv()
        rx.close()


def test_frame_metadata_and_out_of_order_release(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=1024, capacity=4) as tx:
        rx = shmarray.Channel.open(name)
        t0 = time.monotonic_ns()
        for i in range(3):
            tx.send(np.full((2, 3), i, np.int16), tag=100 + i)
        frames = [rx.recv() for _ in range(3)]
        assert [f.seq for f in frames] == [0, 1, 2]
        assert [f.tag for f in frames] == [100, 101, 102]
        assert all(t0 <= f.timestamp_ns <= time.monotonic_ns() for f in frames)
        with pytest.raises(shmarray.LimitError, match="capacity - 1"):
            tx.send(np.zeros((2, 3), np.int16))
            rx.recv(timeout=1)
        frames[1].release()
        frames[2].release()
        frames[0].release()
        frames[0].release()  # idempotent
        tx.send(np.zeros(1), timeout=1)
        tx.send(np.zeros(1), timeout=1)
        assert rx.recv_copy(timeout=1).shape == (2, 3)
        rx.close()


def test_frame_released_when_collected(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as tx:
        rx = shmarray.Channel.open(name)
        for _ in range(10):
            tx.send(np.zeros(2), timeout=1)
            rx.recv(timeout=1)  # dropped at once: released by collection
        assert rx.stats()["held"] == 0
        rx.close()


def test_fortran_and_strided_arrive_c_ordered(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=4096, capacity=4) as tx:
        rx = shmarray.Channel.open(name)
        a = np.asfortranarray(np.arange(12.0).reshape(3, 4))
        tx.send(a)
        tx.send(a[:, ::2])
        for expected in (a, a[:, ::2]):
            got = rx.recv_copy(timeout=1)
            assert got.flags.c_contiguous and (got == expected).all()
        tx.send(b"raw bytes")  # any buffer
        assert rx.recv_copy(timeout=1).tobytes() == b"raw bytes"
        rx.close()


def test_recv_into(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=4096, capacity=4) as tx:
        rx = shmarray.Channel.open(name)
        out = np.empty((4, 4), np.float32)
        tx.send(np.eye(4, dtype=np.float32), tag=9)
        frame = rx.recv_into(out, timeout=1)
        assert frame.tag == 9 and frame.released and (out == np.eye(4)).all()
        tx.send(np.zeros(3))
        with pytest.raises(ValueError, match="does not fit"):
            rx.recv_into(out, timeout=1)
        rx.close()


def test_loan_abort_on_exception(name: str) -> None:
    for mode in ("one-to-one", "work-queue"):
        with shmarray.Channel.create(f"{name}{mode[0]}", slot_bytes=64, capacity=2,
                                     mode=mode) as tx:
            rx = shmarray.Channel.open(tx.name)
            with pytest.raises(RuntimeError):
                with tx.loan((2,), np.int32) as out:
                    out[...] = 1
                    raise RuntimeError("abort me")
            with tx.loan((2,), np.int32) as out:
                out[...] = 2
            with rx.recv(timeout=1) as view:
                assert list(view) == [2, 2]
            assert rx.try_recv() is None
            rx.close()


def test_frame_too_large_names_sizes(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=1000, capacity=2) as tx:
        with pytest.raises(shmarray.FrameTooLargeError, match=r"1,008 bytes.*1,000-byte"):
            tx.send(np.zeros(126))
        with pytest.raises(shmarray.FrameTooLargeError):
            tx.loan((2000,), np.uint8)
        with pytest.raises(TypeError, match="cannot travel"):
            tx.send(np.zeros(3, dtype="U3"))


def test_debug_poisons_released_slots(name: str) -> None:
    """SHMARRAY_DEBUG=1 poisons a slot when it goes back, for misuse through raw pointers (a
    view keeps its frame; a raw pointer does not)."""
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as tx:
        tx.send(np.array([5], np.uint8))
        res = run_py(f"""
            import numpy as np, shmarray
            ch = shmarray.Channel.open({name!r}, timeout=10)
            f = ch.recv(timeout=10)
            raw = np.frombuffer(ch._seg.ro, np.uint8, count=1)  # slot 0, no lease
            before = int(f.array[0])
            f.release()
            print(before, int(raw[0]), flush=True)
            ch.close()
        """, env={"SHMARRAY_DEBUG": "1"})
        assert res.stdout.split() == ["5", str(0xDB)]


def test_one_to_one_refuses_second_live_producer(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as a:
        b = shmarray.Channel.open(name)
        a.send(np.zeros(1))
        with pytest.raises(shmarray.LimitError, match="work-queue"):
            b.send(np.zeros(1))
        b.close()


def test_producer_killed_consumer_gets_peer_died(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4) as rx:
        child = start_py(f"""
            import shmarray, numpy as np, time
            ch = shmarray.Channel.open({name!r}, timeout=10)
            ch.send(np.array([1]))
            ch.send(np.array([2]))
            print("sent", flush=True)
            time.sleep(60)
        """)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "sent"
            assert [int(rx.recv_copy(timeout=5)[0]) for _ in range(2)] == [1, 2]
            t0 = time.monotonic()
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(shmarray.PeerDiedError, match=str(child.pid)):
                rx.recv(timeout=30)
            assert time.monotonic() - t0 < 5
        finally:
            stop(child)


def test_producer_killed_while_consumer_waits_drains_first(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4) as rx:
        child = start_py(f"""
            import shmarray, numpy as np, time
            ch = shmarray.Channel.open({name!r}, timeout=10)
            ch.send(np.array([1]))
            print("sent", flush=True)
            time.sleep(60)
        """)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "sent"
            time.sleep(0.2)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            assert int(rx.recv_copy(timeout=5)[0]) == 1  # committed frames are still delivered
            t0 = time.monotonic()
            with pytest.raises(shmarray.PeerDiedError):
                rx.recv(timeout=30)
            assert time.monotonic() - t0 < 5
        finally:
            stop(child)


def test_consumer_killed_holding_slots(name: str) -> None:
    # work queue: a consumer dies holding frames; they are dropped and counted, the producer and
    # the other consumer carry on, and no frame is delivered twice.
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4, mode="work-queue") as tx:
        child = start_py(f"""
            import shmarray, time
            ch = shmarray.Channel.open({name!r}, timeout=10)
            held = [ch.recv(timeout=10) for _ in range(2)]
            print(" ".join(str(f.seq) for f in held), flush=True)
            time.sleep(60)
        """)
        try:
            for i in range(4):
                tx.send(np.array([i]), timeout=5)
            assert child.stdout is not None
            held = [int(s) for s in child.stdout.readline().split()]
            assert held == [0, 1]
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            rx = shmarray.Channel.open(name)
            assert rx.try_recv().seq == 2  # registers a live consumer
            t0 = time.monotonic()
            for i in range(4, 7):  # needs the dead consumer's slots back
                tx.send(np.array([i]), timeout=10)
            assert time.monotonic() - t0 < 5
            got = [int(rx.recv_copy(timeout=5)[0]) for _ in range(4)]
            tx.send(np.array([7]), timeout=10)
            got.append(int(rx.recv_copy(timeout=5)[0]))
            assert got == [3, 4, 5, 6, 7]
            assert tx.stats()["dropped"] == 2
            rx.close()
        finally:
            stop(child)


def test_one_to_one_consumer_killed_producer_gets_peer_died(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as tx:
        child = start_py(f"""
            import shmarray, time
            ch = shmarray.Channel.open({name!r}, timeout=10)
            f = ch.recv(timeout=10)
            print("holding", flush=True)
            time.sleep(60)
        """)
        try:
            tx.send(np.array([0]))
            assert child.stdout is not None and child.stdout.readline().strip() == "holding"
            tx.send(np.array([1]))
            tx.send(np.array([2]), timeout=5)  # the held slot is reclaimed only after death
        except shmarray.WaitTimeoutError:
            pass
        try:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            t0 = time.monotonic()
            # the dead consumer's held frame is reclaimed: one slot frees, then the ring is full
            # with nobody alive to drain it
            with pytest.raises(shmarray.PeerDiedError):
                for i in range(3, 10):
                    tx.send(np.array([i]), timeout=30)
            assert time.monotonic() - t0 < 5
            assert tx.stats()["dropped"] == 1
        finally:
            stop(child)


def test_interrupted_wait_raises_keyboard_interrupt_and_channel_stays_usable(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as tx:
        child = start_py(f"""
            import shmarray, signal, numpy as np
            ch = shmarray.Channel.open({name!r}, timeout=10)
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
            try:
                ch.recv(timeout=20)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            f = ch.recv(timeout=20)
            print(int(f.array[0]), flush=True)
            f.release()
            ch.close()
        """)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "interrupted"
            tx.send(np.array([42]))
            assert child.stdout.readline().strip() == "42"
        finally:
            stop(child)


def test_stats_and_ls(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=4096, capacity=8) as tx:
        rx = shmarray.Channel.open(name)
        tx.send(np.zeros(3))
        tx.send(np.zeros(3))
        f = rx.recv()
        st = tx.stats()
        assert st["committed"] == 2 and st["consumed"] == 1 and st["fill"] == 1
        assert {p["role"] for p in st["peers"]} == {"producer", "consumer"}
        res = subprocess.run([sys.executable, "-m", "shmarray.cli", "ls"], capture_output=True,
                             text=True, timeout=60, cwd=CHILD_CWD)
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith(name + " "))
        assert "channel" in line and "one-to-one cap 8" in line and "fill 1" in line
        assert f"producer {os.getpid()} alive" in line and "consumer" in line
        f.release()
        rx.close()


def test_unlink_after_close_and_twice(name: str) -> None:
    ch = shmarray.Channel.create(name, slot_bytes=64, capacity=2)
    ch.close()
    with pytest.raises(shmarray.ClosedError):
        ch.send(np.zeros(1))
    ch.unlink()
    with pytest.raises(shmarray.NotFoundError):
        ch.unlink()
    with pytest.raises(shmarray.NotFoundError):
        shmarray.Channel.open(name, timeout=0)


def test_open_waits_for_creator(name: str) -> None:
    child = start_py(f"""
        import shmarray
        ch = shmarray.Channel.open({name!r}, timeout=20)
        print(int(ch.recv_copy(timeout=20)[0]), flush=True)
        ch.close()
    """)
    try:
        time.sleep(0.5)
        with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as tx:
            tx.send(np.array([8]))
            out, err = child.communicate(timeout=30)
            assert out.strip() == "8", err
    finally:
        stop(child)


def test_channel_is_not_an_array(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2):
        with pytest.raises(shmarray.CorruptSegmentError, match="Channel.open"):
            shmarray.attach(name, timeout=0)
    with shmarray.create(name, shape=(2,)):
        with pytest.raises(shmarray.CorruptSegmentError, match="shmarray.attach"):
            shmarray.Channel.open(name, timeout=0)


def test_no_leak_after_sigkill_and_clean(name: str) -> None:
    import posix_ipc

    child = start_py(f"""
        import shmarray, time
        ch = shmarray.Channel.create({name!r}, slot_bytes=64, capacity=2)
        print(ch._seg.control_name, flush=True)
        time.sleep(60)
    """)
    try:
        assert child.stdout is not None
        queue = child.stdout.readline().strip()
        assert queue.endswith(".ctl")
        child.kill()
        child.wait(10)
        posix_ipc.MessageQueue(queue).close()  # left behind by the SIGKILL
        res = subprocess.run([sys.executable, "-m", "shmarray.cli", "clean"], capture_output=True,
                             text=True, timeout=60, cwd=CHILD_CWD)
        assert f"removed channel {name}" in res.stdout
        with pytest.raises(posix_ipc.ExistentialError):  # the queue its header named: removed
            posix_ipc.MessageQueue(queue)
        assert not os.path.exists(f"/dev/shm/shmarray.{name}")
    finally:
        stop(child)


def test_send_many_recv_many_runs(name: str) -> None:
    for mode in ("one-to-one", "work-queue"):
        with shmarray.Channel.create(f"{name}{mode[0]}", slot_bytes=64, capacity=16,
                                     mode=mode) as tx:
            rx = shmarray.Channel.open(tx.name)
            block = np.arange(40, dtype=np.int32).reshape(10, 4)
            tx.send_many(block, tag=100)
            with rx.recv_many(100) as got:
                assert got.shape == (10, 4) and (got == block).all()
                assert not got.flags.writeable
            tx.send_many(block)  # wraps at slot 16: two runs
            b1 = rx.recv_many(100)
            b2 = rx.recv_many(100)
            assert (len(b1), len(b2)) == (6, 4)
            assert list(b1.seqs) == list(range(10, 16)) and list(b2.seqs) == list(range(16, 20))
            assert list(b1.tags) == list(range(6))
            assert (np.concatenate([b1.array, b2.array]) == block).all()
            b1.release()
            b2.release()
            # a run stops at a change of schema; recv() stays in step with the view cache
            tx.send(np.zeros(3))
            tx.send(np.ones((2, 2), np.float32))
            tx.send(np.full((2, 2), 2, np.float32))
            one = rx.recv_many(10)
            assert one.array.shape == (1, 3)
            one.release()
            with rx.recv() as v:
                assert v.shape == (2, 2) and (v == 1).all()
            with rx.recv() as v:
                assert (v == 2).all()
            assert rx.try_recv() is None
            rx.close()


def test_send_many_blocks_and_streams_across_processes(name: str) -> None:
    n = 5000
    with shmarray.Channel.create(name, slot_bytes=64, capacity=64) as tx:
        child = start_py(f"""
            import shmarray, numpy as np
            ch = shmarray.Channel.open({name!r}, timeout=10)
            total, count, last = 0, 0, -1
            while True:
                try:
                    batch = ch.recv_many(32, timeout=30)
                except shmarray.StreamEnded:
                    break
                with batch as block:
                    assert batch.seqs[0] == last + 1
                    last = int(batch.seqs[-1])
                    total += int(block[:, 0].sum())
                    count += len(batch)
            print(count, total, flush=True)
            ch.close()
        """)
        try:
            frames = np.arange(n * 8, dtype=np.int64).reshape(n, 8)
            for chunk in np.array_split(frames, 7):
                tx.send_many(chunk, timeout=30)
            tx.end()
            out, err = child.communicate(timeout=60)
            assert out.split() == [str(n), str(int(frames[:, 0].sum()))], err
        finally:
            stop(child)
