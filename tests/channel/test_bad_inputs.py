"""Bad input to a channel gets a clear ShmArrayError (a ValueError where that fits) naming the
channel and the value, and nothing is consumed, sent or left behind (issue 11, C11 and C14)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import shmarray

MODES = ["one-to-one", "work-queue", "broadcast"]


def _create(name: str, mode: str, **kw: Any) -> Any:
    extra = {"max_subscribers": 2} if mode == "broadcast" else {}
    return shmarray.Channel.create(name, mode=mode, **extra, **kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tag", [2**64, -1, 2**200, 1.5, "7", None], ids=repr)
def test_tags_beyond_64_bits_are_refused_and_nothing_is_sent(name: str, mode: str,
                                                            tag: Any) -> None:
    with _create(name, mode, slot_bytes=64, capacity=4) as ch:
        rx = ch.subscribe() if mode == "broadcast" else shmarray.Channel.open(name)
        calls = [lambda: ch.send(np.zeros(2), tag=tag),
                 lambda: ch.send_many([np.zeros(2)], tag=tag),
                 lambda: ch.loan((2,), np.float64, tag=tag)]
        for call in calls:
            with pytest.raises(shmarray.InvalidArgumentError, match=f"{name}.*tag") as e:
                call()
            assert isinstance(e.value, ValueError)
        with pytest.raises(shmarray.WouldBlockError):
            rx.recv(timeout=0)  # nothing went out
        ch.send(np.zeros(2), tag=2**64 - 1)  # the largest tag there is
        frame = rx.recv(timeout=1)
        assert frame.tag == 2**64 - 1
        frame.release()
        rx.close()


@pytest.mark.parametrize("field,value", [("slot_bytes", 2**64), ("slot_bytes", 2**63),
                                         ("capacity", 2**62), ("capacity", 2**64),
                                         ("slot_bytes", 0), ("capacity", -1)])
def test_ring_sizes_beyond_reason_are_refused_by_name(name: str, field: str, value: int) -> None:
    kw: dict[str, Any] = {"slot_bytes": 64, "capacity": 4, field: value}
    with pytest.raises(shmarray.InvalidArgumentError, match=f"{name}.*{field}") as e:
        shmarray.Channel.create(name, **kw)
    assert isinstance(e.value, ValueError)
    assert not os.path.exists(f"/dev/shm/shmarray.{name}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("out_bytes", [8, 48, 64, 4096])
def test_recv_into_an_out_that_does_not_fit_is_a_value_error_and_consumes_nothing(
        name: str, mode: str, out_bytes: int) -> None:
    with _create(name, mode, slot_bytes=64, capacity=4) as ch:
        rx = ch.subscribe() if mode == "broadcast" else shmarray.Channel.open(name)
        ch.send(np.arange(4, dtype=np.float64), tag=9)  # 32 bytes, in a 64-byte slot
        for out in (np.empty(out_bytes, np.uint8), np.empty((out_bytes // 8, 2), np.float32)):
            with pytest.raises(ValueError, match="does not fit") as e:
                rx.recv_into(out, timeout=1)
            assert not isinstance(e.value, shmarray.InternalError)
        out = np.empty(4, np.float64)
        assert rx.recv_into(out, timeout=1).tag == 9  # the frame is still there
        assert list(out) == [0, 1, 2, 3]
        rx.close()
