"""An exception at any bytecode never leaks a slot or wedges a handle.

A signal handler that raises (KeyboardInterrupt, a SIGALRM-based timeout) can land between any
two bytecodes. Two ways to put it everywhere: a tracer that raises at every line of the receive,
release, loan, commit and send paths in turn (sys.settrace), and a signal storm on a consumer
in another process. Afterwards the channel still moves frames, nothing is delivered twice, and
stats() adds up.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from typing import Any, Callable

import numpy as np
import pytest

import shmarray
from helpers import CHILD_CWD, PY, run_py, stop

PACKAGE = os.path.dirname(os.path.abspath(shmarray.__file__))
MODES = [("one-to-one", None), ("work-queue", None), ("broadcast", "block"),
         ("broadcast", "drop")]


class Injected(KeyboardInterrupt):
    pass


def raise_at_line(fn: Callable[[], Any], k: int) -> bool:
    """Run ``fn`` with an exception raised at the k-th line it executes inside shmarray's
    Python code (as a signal handler's would be); True if that line was reached."""
    count = 0
    fired = False

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count, fired
        if event == "line":
            count += 1
            if count == k:
                fired = True
                raise Injected(f"line {frame.f_lineno} of {frame.f_code.co_name}")
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(PACKAGE) else None

    sys.settrace(tracer)
    try:
        fn()
    except Injected:
        pass
    finally:
        sys.settrace(None)
    return fired


class Bench:
    """A producer and a consumer of one channel (two handles on one segment), recording every
    tag received so that a second delivery shows."""

    def __init__(self, mode: str, policy: str | None) -> None:
        kw: dict[str, Any] = {"max_subscribers": 2, "policy": policy} if policy else {}
        self.tx = shmarray.Channel.create(None, slot_bytes=256, capacity=4, mode=mode, **kw)
        self.rx = self.tx.subscribe() if mode == "broadcast" else shmarray.Channel.open(
            self.tx.name)
        self.drop = policy == "drop"
        self.sent = 0
        self.seen: list[int] = []

    def send(self, n: int = 1) -> None:
        for _ in range(n):
            tag = self.sent  # taken first: an interrupted send may have sent it
            self.sent += 1
            self.tx.send(np.full(8, tag, np.int64), tag=tag, timeout=1)

    def got(self, tag: int, arr: Any) -> None:
        assert int(np.asarray(arr)[0]) == tag, "a frame's bytes are another frame's"
        self.seen.append(tag)

    def settle(self) -> None:
        """Drain, then check: no frame twice, nothing held, and both ends still work."""
        gc.collect()
        while True:
            f = self.rx.try_recv()
            if f is None:
                break
            self.got(int(f.tag), f.array)
            f.release()
        assert len(self.seen) == len(set(self.seen)), f"delivered twice: {sorted(self.seen)}"
        st = self.rx.stats()
        assert st["held"] == 0, st
        if not self.drop:
            whole = self.tx.stats()
            assert whole["fill"] == 0, whole
        self.send()
        with self.rx.recv(timeout=1) as v:
            self.got(self.sent - 1, v)
        self.sent += 1
        with self.tx.loan((8,), np.int64, tag=self.sent - 1) as out:  # no claim left over
            out[...] = self.sent - 1
        f = self.rx.recv(timeout=1)
        self.got(int(f.tag), f.array)
        f.release()

    def close(self) -> None:
        self.rx.close()
        self.tx.close()
        self.tx.unlink()


def op_recv(b: Bench) -> None:
    b.send()
    f = b.rx.recv(timeout=1)
    b.got(int(f.tag), f.array)
    f.release()


def op_with(b: Bench) -> None:
    b.send()
    with b.rx.recv(timeout=1) as v:
        b.got(int(v[0]), v)


def op_iterate(b: Bench) -> None:
    b.send(2)
    it = iter(b.rx)
    try:
        for n, v in enumerate(it):
            b.got(int(v[0]), v)
            if n == 1:
                break
    finally:
        it.close()  # (here, not at collection: an exception there would only be printed)


def op_copy(b: Bench) -> None:
    b.send()
    a = b.rx.recv_copy(timeout=1)
    b.got(int(a[0]), a)


def op_loan(b: Bench) -> None:
    tag = b.sent
    b.sent += 1
    with b.tx.loan((8,), np.int64, timeout=1, tag=tag) as out:
        out[...] = tag


def op_send(b: Bench) -> None:
    b.send()


def op_wait(b: Bench) -> None:
    """A receive that waits (nothing there yet): the wait loop's lines."""
    try:
        b.rx.recv(timeout=0.01)
    except shmarray.WaitTimeoutError:
        pass


def op_many(b: Bench) -> None:
    if not hasattr(b.rx, "recv_many") or b.tx.mode == "broadcast":
        return
    b.send(2)
    with b.rx.recv_many(4, timeout=1) as block:
        for i, row in enumerate(block):
            b.got(int(row[0]), row)
            assert i < 2


OPS = [op_recv, op_with, op_iterate, op_copy, op_loan, op_send, op_wait, op_many]


@pytest.mark.parametrize("mode,policy", MODES)
def test_an_exception_at_every_line_heals(mode: str, policy: str | None) -> None:
    b = Bench(mode, policy)
    try:
        for op in OPS:
            k = 1
            while raise_at_line(lambda op=op: op(b), k):  # every line of the path, in turn
                b.settle()
                k += 1
            b.settle()
            assert k > 1 or op is op_many, f"{op.__name__}: no line of shmarray ran"
    finally:
        b.close()


def test_a_commit_interrupted_never_wedges_the_handle(name: str) -> None:
    # The loan's claim lives in C with the handle; the Loan object only names it. However
    # the commit is interrupted, the next loan works (no "a loan is outstanding" for ever).
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4, mode="work-queue") as tx:
        rx = shmarray.Channel.open(name)
        for k in range(1, 40):
            loan = tx.loan((1,), np.int64, tag=k)
            loan.array[0] = k
            raise_at_line(loan.commit, k % 5 + 1)  # (past its last line: commits normally)
            del loan
            gc.collect()
            with tx.loan((1,), np.int64, tag=0) as out:  # never LimitError
                out[0] = 0
            tags = []
            while (f := rx.try_recv()) is not None:
                tags.append(int(f.tag))
                f.release()
            assert tags[-1] == 0 and len(tags) <= 2
        rx.close()


STORM = """
import signal, sys, numpy as np, shmarray
name = sys.argv[1]
ch = shmarray.Channel.open(name, timeout=10)
rx = ch.subscribe() if ch.mode == "broadcast" else ch
rx.try_recv()  # registered (joined) before the storm: then every receive is in it
print("ready", flush=True)
inside = False
def boom(*a):
    if inside:
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, boom)
signal.setitimer(signal.ITIMER_REAL, 50e-6, 50e-6)  # every ~50 us
got, interrupted = [], 0
while True:
    try:
        f = None  # (a frame an interrupted step left bound goes here: the user's reference)
        inside = True
        f = rx.recv(timeout=10)
        tag = int(f.tag)
        ok = int(f.array[0]) == tag
        f.release()
        inside = False
        got.append(tag if ok else -1)
    except KeyboardInterrupt:
        inside = False
        interrupted += 1
    except shmarray.StreamEnded:
        inside = False
        break
signal.setitimer(signal.ITIMER_REAL, 0)
st = rx.stats()
print(len(got), len(set(got)), min(got, default=0), interrupted, st["held"], flush=True)
"""


@pytest.mark.parametrize("mode", ["one-to-one", "work-queue", "broadcast"])
def test_a_consumer_under_a_signal_storm_never_stalls_the_producer(name: str, mode: str) -> None:
    kw = {"max_subscribers": 2, "policy": "block"} if mode == "broadcast" else {}
    n = 3000
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4, mode=mode, **kw) as tx:
        child = subprocess.Popen([PY, "-c", STORM, name], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=CHILD_CWD)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            for i in range(n):  # a stuck slot would stop this for good: 10 s is plenty
                tx.send(np.full(8, i, np.int64), tag=i, timeout=10)
            tx.end()
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            got, distinct, lowest, interrupted, held = map(int, out.split())
            assert got == distinct and lowest >= 0, out  # never twice, never another's bytes
            assert held == 0 and interrupted > 0, out
            assert got >= n // 2, out  # (a frame whose receive was interrupted is lost)
            assert tx.stats()["fill"] == 0
        finally:
            stop(child)


def test_a_pool_worker_whose_loop_raises_fails_its_task_and_shuts_down() -> None:
    # Any exception escaping the worker loop (here: injected into the worker's send of the
    # result) leaves its task marked busy: the task fails with PeerDiedError, shutdown ends.
    res = run_py("""
        import os, sys, numpy as np, shmarray
        sys.path.insert(0, sys.argv[1])
        import pool_funcs as pf
        os.environ["SHMARRAY_FAULT"] = "channel.loan:1:raise"  # the workers', not ours
        with shmarray.Pool(1, context="spawn") as pool:
            exc = pool.submit(pf.double, np.ones(3)).exception(timeout=30)
            print(type(exc).__name__, flush=True)
        print("shut down", flush=True)
    """, os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=90)
    assert res.stdout.split("\n")[:2] == ["PeerDiedError", "shut down"], res.stdout + res.stderr
