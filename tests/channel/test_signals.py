"""Signals: a blocking wait interrupted by a signal raises what the handler raises (SIGINT:
KeyboardInterrupt) or carries on when the handler returns, and leaves the channel usable; an
exception raised at any step of a wait or a loan (SHMARRAY_FAULT=<step>:1:raise stands for a
signal handler's exception arriving exactly there) leaves nothing claimed or armed; the opt-in
SIGTERM handler unlinks the channels the process owns, semaphores and queue included.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import posix_ipc
import pytest

import shmarray
from helpers import start_py, stop


def lines(child, n: int, timeout: float = 20.0) -> list[str]:
    """The child's next ``n`` stdout lines (bounded: the child exits or the test times out)."""
    assert child.stdout is not None
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"child said only {out}"
        line = child.stdout.readline()
        if not line:
            raise AssertionError(f"child exited early: {out} {child.stderr.read()[-2000:]}")
        out.append(line.strip())
    return out


def test_producer_blocked_on_full_gets_keyboard_interrupt(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as rx:
        child = start_py(f"""
            import shmarray, numpy as np, time
            ch = shmarray.Channel.open({name!r}, timeout=10)
            for i in range(2):
                ch.send(np.array([i]))
            print("full", flush=True)
            t0 = time.monotonic()
            try:
                ch.send(np.array([99]), timeout=20)  # blocks; SIGINT arrives
            except KeyboardInterrupt:
                print("interrupted", round(time.monotonic() - t0, 1), flush=True)
            ch.send(np.array([2]), timeout=20)  # usable: blocks until a slot frees
            ch.end()
            ch.close()
            print("done", flush=True)
        """)
        try:
            assert lines(child, 1) == ["full"]
            time.sleep(0.4)  # asleep on the space semaphore
            child.send_signal(signal.SIGINT)
            word, took = lines(child, 1)[0].split()
            assert word == "interrupted" and float(took) < 5
            got = [int(v[0]) for v in rx]  # the interrupted send never committed anything
            assert got == [0, 1, 2]
            assert lines(child, 1) == ["done"] and child.wait(10) == 0
            st = rx.stats()
            assert st["dropped"] == 0
        finally:
            stop(child)


def test_waits_retry_when_the_handler_returns(name: str) -> None:
    # a timer firing every 20 ms whose handler returns: recv, send and control.recv keep
    # waiting (each interrupted sleep is retried) and complete when their peer acts
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as tx:
        child = start_py(f"""
            import shmarray, numpy as np, signal, time
            ticks = []
            signal.signal(signal.SIGALRM, lambda *a: ticks.append(1))
            signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
            ch = shmarray.Channel.open({name!r}, timeout=10)
            print("ready", flush=True)
            v = ch.recv_copy(timeout=20)
            print("frame", int(v[0]), flush=True)
            msg = ch.control.recv(timeout=20)
            print("msg", msg["n"], flush=True)
            signal.setitimer(signal.ITIMER_REAL, 0)
            print("ticks", len(ticks) > 10, flush=True)
            ch.close()
        """)
        try:
            assert lines(child, 1) == ["ready"]
            time.sleep(0.5)
            tx.send(np.array([7]))
            assert lines(child, 1) == ["frame 7"]
            time.sleep(0.3)
            tx.control.send({"n": 3})
            assert lines(child, 2) == ["msg 3", "ticks True"]
            assert child.wait(10) == 0
        finally:
            stop(child)


def test_control_queue_waits_interrupted(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2):
        child = start_py(f"""
            import shmarray, signal, time
            def boom(*a):
                raise KeyboardInterrupt
            signal.signal(signal.SIGALRM, boom)
            ch = shmarray.Channel.open({name!r}, timeout=10)
            q = ch.control
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            try:
                q.recv(timeout=20)  # empty: interrupted
            except KeyboardInterrupt:
                print("recv interrupted", flush=True)
            for i in range(q.max_messages):
                q.send({{"i": i}}, timeout=0)
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            try:
                q.send({{"i": 99}}, timeout=20)  # full: interrupted
            except KeyboardInterrupt:
                print("send interrupted", flush=True)
            got = [q.recv(timeout=1)["i"] for _ in range(q.max_messages)]
            q.send({{"i": 100}}, timeout=1)  # usable both ways
            print(got == list(range(q.max_messages)), q.recv(timeout=1)["i"], flush=True)
            ch.close()
        """)
        try:
            assert lines(child, 3) == ["recv interrupted", "send interrupted", "True 100"]
            assert child.wait(10) == 0
        finally:
            stop(child)


@pytest.mark.parametrize("step", ["wait.spun", "wait.armed", "wait.sleep", "wait.woken",
                                  "channel.loan"])
def test_exception_at_each_step_leaves_the_channel_clean(name: str, step: str) -> None:
    # SHMARRAY_FAULT=<step>:1:raise raises KeyboardInterrupt there: a signal handler's exception
    # arriving at that bytecode. Afterwards nothing is claimed, nothing stays armed, and both
    # sides carry on.
    for attempt in range(3):
        if _interrupted_at(f"{name}_{attempt}", step):
            return
    pytest.fail(f"the child never reached {step} in 3 tries")


def _interrupted_at(name: str, step: str) -> bool:
    """One try; False when the child was not asleep when the frame came (a 100 ms wait slice
    ended just then, so no post woke it: correct, but wait.woken was not reached)."""
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2, mode="work-queue") as tx:
        child = start_py(f"""
            import shmarray, numpy as np
            ch = shmarray.Channel.open({name!r}, timeout=10)
            def waiters():
                st = ch._h.status()
                return int(st.data_waiters), int(st.space_waiters)
            print("ready", flush=True)
            try:
                if {step!r} == "channel.loan":
                    with ch.loan((1,), np.int64) as out:
                        out[...] = -1
                else:
                    ch.recv(timeout=10)  # a consumer waiting for data
                print("not interrupted", flush=True)
            except KeyboardInterrupt:
                print("interrupted", *waiters(), flush=True)
            if {step!r} == "channel.loan":
                with ch.loan((1,), np.int64) as out:  # the claim was given back
                    out[...] = 5
                ch.end()
            else:
                got = [int(ch.recv_copy(timeout=10)[0]) for _ in range(2)]
                print("next", *got, *waiters(), flush=True)
            ch.close()
        """, env={"SHMARRAY_FAULT": f"{step}:1:raise"})
        try:
            assert lines(child, 1) == ["ready"]
            if step == "wait.woken":
                time.sleep(0.4)  # asleep on the data futex: this commit wakes it
                tx.send(np.array([1]))
            first = lines(child, 1)
            if first == ["not interrupted"] and step == "wait.woken":
                return False  # (stop() below ends the child)
            assert first == ["interrupted 0 0"]
            if step == "channel.loan":
                assert child.wait(10) == 0
                rx = shmarray.Channel.open(name)
                assert [int(v[0]) for v in rx] == [5]  # no frame -1, no stuck position
                rx.close()
            else:
                if step != "wait.woken":
                    tx.send(np.array([1]))
                tx.send(np.array([2]))
                assert lines(child, 1) == ["next 1 2 0 0"]  # nothing lost, nothing armed
                assert child.wait(10) == 0
            return True
        finally:
            stop(child)


def test_sigterm_opt_in_unlinks_channels(name: str) -> None:
    child = start_py(f"""
        import shmarray, time
        shmarray.cleanup_on_sigterm()
        ch = shmarray.Channel.create({name!r}, slot_bytes=64, capacity=2)
        b = shmarray.Channel.create({name!r} + "_wq", slot_bytes=64, capacity=2,
                                    mode="work-queue")
        a = shmarray.create({name!r} + "_arr", shape=(4,))
        print(ch._seg.control_name, b._seg.control_name, flush=True)
        time.sleep(60)
    """)
    try:
        objects = lines(child, 1)[0].split()
        assert len(objects) == 2
        for osname in objects:
            posix_ipc.MessageQueue(osname).close()  # they exist
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 143
        left = [f for f in os.listdir("/dev/shm") if name in f]
        assert left == [], left
        for osname in objects:
            with pytest.raises(posix_ipc.ExistentialError):
                posix_ipc.MessageQueue(osname)
    finally:
        stop(child)
