"""No wait without an end: a process that opened a channel counts as a peer; locks follow the
incarnation a handle opened; end of stream and a producer's registration are ordered."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import shmarray
from helpers import CHILD_CWD, run_py

DIES = {
    "SIGKILL": "import os; os.kill(os.getpid(), 9)",
    "exception": "raise RuntimeError('the producer gave up')",
    "dropped handle": "del ch; import gc; gc.collect(); import time; time.sleep(30)",
    "exception in with": "raise RuntimeError('the producer gave up inside its with block')",
}


@pytest.mark.parametrize("mode", ["one-to-one", "work-queue", "broadcast"])
@pytest.mark.parametrize("how", sorted(DIES))
def test_a_peer_that_opened_and_died_before_registering_ends_the_wait(name: str, mode: str,
                                                                      how: str) -> None:
    kw = {"max_subscribers": 2} if mode == "broadcast" else {}
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4, mode=mode, **kw) as owner:
        # the waiter is the creator: its own handle is no peer (another handle, even in this
        # process, would be one: it might send from another thread)
        rx = owner.subscribe() if mode == "broadcast" else owner
        if how == "exception in with":
            body = f"with shmarray.Channel.open({name!r}, timeout=10) as ch:\n    " + DIES[how]
        else:
            body = f"ch = shmarray.Channel.open({name!r}, timeout=10)\n" + DIES[how]
        child = subprocess.Popen([sys.executable, "-c", "import shmarray\n" + textwrap.dedent(
            body)], cwd=CHILD_CWD, stderr=subprocess.PIPE)
        try:
            t0 = time.monotonic()
            with pytest.raises(shmarray.PeerDiedError, match="may still open"):
                for _view in rx:  # a for loop over a stream nobody will ever produce
                    pytest.fail("a frame from nowhere")
            assert time.monotonic() - t0 < 10
        finally:
            child.kill()
            child.wait(10)
            child.stderr.close()  # type: ignore[union-attr]
        # a later producer still may come: the stream goes on
        tx = owner if mode == "broadcast" else shmarray.Channel.open(name)
        tx.send(np.arange(3))
        assert list(rx.recv_copy(timeout=1)) == [0, 1, 2]
        if tx is not owner:
            tx.close()


def test_nobody_else_ever_came_keeps_waiting(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4) as owner:
        rx = shmarray.Channel.open(name)
        with pytest.raises(shmarray.WaitTimeoutError):  # the owner is alive: just waits
            rx.recv(timeout=0.3)
        other = shmarray.Channel.open(name)
        other.close()  # opened and closed cleanly: not a death
        with pytest.raises(shmarray.WaitTimeoutError):
            rx.recv(timeout=0.3)
        rx.close()
        del owner


@pytest.mark.parametrize("mode", ["one-to-one", "broadcast"])
def test_an_old_handle_never_locks_the_next_incarnation(name: str, mode: str) -> None:
    kw = {"max_subscribers": 2} if mode == "broadcast" else {}
    first = shmarray.Channel.create(name, slot_bytes=64, capacity=4, mode=mode, **kw)
    old = shmarray.Channel.open(name)
    first.close()
    first.unlink()
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4, mode=mode, **kw) as second:
        old.send(np.zeros(1))  # the old handle produces into the incarnation it opened...
        second.send(np.ones(1))  # ...and the new producer is not refused ("pid 0")
        rx = second.subscribe() if mode == "broadcast" else shmarray.Channel.open(name)
        assert rx.recv_copy(timeout=1)[0] == 1
        rx.close()
    res = run_py(f"""
        import shmarray
        try:
            shmarray.Channel.open({name!r})
        except shmarray.NotFoundError:
            print("gone")
    """)
    assert res.stdout.strip() == "gone"
    old.close()


def _send_then_end(ch: shmarray.Channel, outcome: list[str]) -> None:
    try:
        ch.send(np.zeros(1), tag=2)
        ch.end()
        outcome.append("sent")
    except shmarray.StreamEnded:
        outcome.append("refused")


def _drain_tags(rx: shmarray.Channel) -> list[int]:
    tags = []
    while True:
        try:
            frame = rx.recv(timeout=1)
        except shmarray.StreamEnded:
            return tags
        tags.append(int(frame.tag))
        frame.release()


def test_a_producer_registering_as_the_stream_ends_is_delivered_or_refused(name: str) -> None:
    # Work queue: a producer registers while the only other one ends. Either it came first
    # (the stream stays open until it ends too, and its frame is delivered) or it gets
    # StreamEnded: never a frame committed after the end, which would reach no one.
    outcomes = []
    for i in range(60):
        with shmarray.Channel.create(f"{name}_{i}", slot_bytes=64, capacity=4,
                                     mode="work-queue") as ender:
            ender.send(np.zeros(1), tag=1)
            late = shmarray.Channel.open(ender.name)
            rx = shmarray.Channel.open(ender.name)
            outcome: list[str] = []
            t = threading.Thread(target=_send_then_end, args=(late, outcome))
            t.start()
            ender.end()
            t.join(10)
            tags = _drain_tags(rx)
            assert (outcome == ["sent"] and tags == [1, 2]) or (
                outcome == ["refused"] and tags == [1]), (outcome, tags)
            outcomes += outcome
            late.close()
            rx.close()
    assert len(outcomes) == 60
