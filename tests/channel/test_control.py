"""The control queue: the channel owner's inbox (a real POSIX message queue)."""

from __future__ import annotations

import resource
import select
import time

import pytest

import shmarray
from helpers import run_py


def test_priorities_and_fifo_within_priority(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as ch:
        q = ch.control
        q.send({"n": 1}, priority=0)
        q.send({"n": 2}, priority=5)
        q.send({"n": 3}, priority=0)
        q.send({"n": 4}, priority=5)
        assert q.pending() == 4
        assert [q.recv(timeout=1)["n"] for _ in range(4)] == [2, 4, 1, 3]
        with pytest.raises(shmarray.WouldBlockError):
            q.recv(timeout=0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            q.recv(timeout=0.2)
        assert time.monotonic() - t0 >= 0.15


def test_cross_process_and_pollable(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as ch:
        run_py(f"""
            import shmarray
            ch = shmarray.Channel.open({name!r}, timeout=10)
            ch.control.send({{"event": "join", "pid": 1, "nested": [1, 2.5, None]}}, priority=3)
            ch.close()
        """)
        r, _, _ = select.select([ch.control.fileno()], [], [], 5)
        assert r
        msg, prio = ch.control.recv_with_priority(timeout=1)
        assert msg == {"event": "join", "pid": 1, "nested": [1, 2.5, None]} and prio == 3


def test_oversize_and_invalid_messages(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as ch:
        with pytest.raises(shmarray.LimitError, match="1024-byte"):
            ch.control.send({"blob": "x" * 2000})
        with pytest.raises(TypeError):
            ch.control.send({"obj": object()})
        with pytest.raises(TypeError):
            ch.control.send(["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ch.control.send({}, priority=99)
        # a hostile peer writing raw bytes: never unpickled or evaluated, reported as invalid
        ch.control._mq.send(b"\x80\x04K\x01.")
        assert "invalid" in ch.control.recv(timeout=1)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), {1, 2}, b"raw"],
                         ids=repr)
def test_values_json_cannot_carry_are_type_errors(name: str, value: object) -> None:
    # one documented exception for every value JSON cannot carry (issue 11, C13)
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as ch:
        with pytest.raises(TypeError, match=name):
            ch.control.send({"x": value})
        cyclic: dict[str, object] = {}
        cyclic["self"] = cyclic
        with pytest.raises(TypeError, match=name):
            ch.control.send(cyclic)
        with pytest.raises(shmarray.WouldBlockError):
            ch.control.recv(timeout=0)  # nothing half-sent


def test_a_deeply_nested_message_comes_back_invalid_and_the_queue_goes_on(name: str) -> None:
    # a peer's message nested deeper than the decoder's recursion limit (~1000 levels) is
    # reported as invalid, not raised as RecursionError, and the next message still arrives
    # (issue 11, C12)
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2,
                                 control_message_size=8192) as ch:
        run_py(f"""
            import posix_ipc
            q = posix_ipc.MessageQueue({ch._seg.control_name!r})
            q.send(b"[" * 2000 + b"]" * 2000)
            q.send(b'{{"a":' * 1200 + b"1" + b"}}" * 1200)
            q.send(b'{{"after": 1}}')
        """)
        first, second = ch.control.recv(timeout=1), ch.control.recv(timeout=1)
        assert set(first) == {"invalid"} and set(second) == {"invalid"}, (first, second)
        assert ch.control.recv(timeout=1) == {"after": 1}


def test_full_queue_blocks_with_timeout(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as ch:
        for i in range(10):
            ch.control.send({"i": i}, timeout=0)
        with pytest.raises(shmarray.WouldBlockError):
            ch.control.send({"i": 10}, timeout=0)
        with pytest.raises(shmarray.WaitTimeoutError):
            ch.control.send({"i": 10}, timeout=0.2)


def test_kernel_limit_errors_name_the_knob(name: str) -> None:
    with pytest.raises(shmarray.LimitError, match="msg_max"):
        shmarray.Channel.create(name, slot_bytes=64, capacity=2, control_messages=100000)
    with pytest.raises(shmarray.LimitError, match="msgsize_max"):
        shmarray.Channel.create(name, slot_bytes=64, capacity=2,
                                control_message_size=10 * 1024 * 1024)


def test_too_many_queues_is_a_clear_limit(name: str) -> None:
    # RLIMIT_MSGQUEUE bounds the bytes of all queues of a user: with it at 0 in a child, no
    # channel can get its queue; the error names the knob and nothing half-created is left.
    res = run_py(f"""
        import resource, os, shmarray
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
        try:
            shmarray.Channel.create({name!r}, slot_bytes=64, capacity=2)
        except shmarray.LimitError as e:
            print("limit:", e)
        print("left:", sorted(f for f in os.listdir("/dev/shm") if {name!r} in f))
    """)
    assert "limit:" in res.stdout and "RLIMIT_MSGQUEUE" in res.stdout, res.stdout + res.stderr
    assert "left: []" in res.stdout
    assert resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0] > 0
