"""A pool worker process: takes tasks from the task ring, runs them, sends the outcomes to the
result ring; exits when the pool ends the task stream, or when the parent dies (its watchdog).

The worker table (a SharedArray, one int64 row per worker: pid, state, the task it holds,
tasks done) tells the parent which task a dead worker held.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from .._os import names as _names
from .._os import segment as _segment
from .._os.native import lib
from ..array import attach
from ..channel import Channel
from ..errors import (
    ClosedError,
    LimitError,
    PeerDiedError,
    ShmArrayError,
    StreamEnded,
    WaitTimeoutError,
)
from .packing import ERR, OK, Payload, Ref, format_tb, spill, unlink_quietly, unpack

WORKER_SLICE = 1.0  # s: a worker's wait slice (its watchdog notices a dead parent)
WATCHDOG = 0.5  # s: how often a worker checks that its parent lives
JOIN_TIMEOUT = 5.0  # s: how long shutdown waits for workers to exit before terminating them
INIT_FAILED_TAG = (1 << 64) - 1

# worker table: one row of int64 per worker
PID, STATE, JOB, DONE = range(4)
COLS = 4
STARTING, IDLE, BUSY, EXITED, INIT_FAILED = 1, 2, 3, 4, 5
GONE = 4  # exit status of a worker that found the pool's segments gone


def call_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """Run ``fn`` over a chunk of argument tuples in a worker (``chunksize > 1``)."""
    return [fn(*args) for args in chunk]


class WorkerConfig(NamedTuple):
    base: str
    slot: int
    table: str
    tasks: str
    results: str


def watchdog(table: str, table_fd: int, spills: list[str]) -> None:
    """Exit this worker once the pool's parent is gone (its owner lock on the table dropped)
    or the pool's table was removed: workers never outlive their pool. The lock is probed on
    a descriptor opened at start, so no later limit (EMFILE...) can make it fail; a probe that
    fails says nothing, and unknown is not dead."""
    path = _names.segment_path(table)
    while True:
        time.sleep(WATCHDOG)
        code = -1
        if lib.shm_seg_lock_probe(table_fd, _segment.OWNER_BYTE) == 0:
            code = 0
        else:
            try:
                os.stat(path)
            except FileNotFoundError:
                code = GONE  # removed under the pool (the parent then knows why)
            except OSError:
                pass
        if code >= 0:
            for name in list(spills):
                unlink_quietly(name)
            os._exit(code)


class Worker:
    def __init__(self, cfg: WorkerConfig, row: np.ndarray[Any, Any]) -> None:
        self.cfg = cfg
        self.row = row
        self.spills: list[str] = []  # one-off result segments the parent has not unlinked yet
        self.count = itertools.count()
        self.tasks = Channel.open(cfg.tasks, timeout=0)  # made before any worker starts
        self.results = Channel.open(cfg.results, timeout=0)

    def sweep(self) -> None:
        """Forget result segments the parent has unlinked (closes their owner-lock files)."""
        for name in list(self.spills):
            if not os.path.exists(_names.segment_path(name)):
                self.spills.remove(name)
                unlink_quietly(name)  # gone: this only drops our ownership record

    def send(self, outcome: Any, tag: int) -> None:
        try:
            payload = Payload(outcome)
        except BaseException as exc:
            if outcome[0] == OK:
                outcome = (ERR, exc, format_tb(exc))
            else:  # the exception itself does not pickle: send what can be said of it
                orig = outcome[1]
                outcome = (ERR, RuntimeError(f"{type(orig).__name__}: {orig} (the exception "
                                              f"could not be pickled: {exc!r})"), outcome[2])
            try:
                payload = Payload(outcome)
            except BaseException as again:
                payload = Payload((ERR, RuntimeError(f"the outcome could not be pickled: "
                                                       f"{again!r}"), outcome[2]))
        frame: Payload | Ref = payload
        if payload.total > self.results.slot_bytes:
            name = f"{self.cfg.base}-o{os.getpid()}-{next(self.count)}"
            try:
                frame = spill(payload, name)
                self.spills.append(name)
            except BaseException as exc:
                frame = Payload((ERR, exc, format_tb(exc)))
        slot = self.results.slot_bytes
        while True:
            try:
                loan = self.results.loan((slot,), np.uint8, timeout=WORKER_SLICE, tag=tag)
                break
            except WaitTimeoutError:
                continue  # the parent is slow; the watchdog ends us if it died
        with loan as out:
            frame.write(out)

    def run(self) -> None:
        """Take tasks until the stream ends. A function's array arguments are its own: on its
        first call in this worker it gets private copies, and whether it keeps them past the
        call (a cache, an accumulator) is noted. A function that does not keeps getting
        zero-copy writable views of its task's slot, which goes back when the call returns;
        one that does keeps getting copies, so the ring never waits for what it keeps. (A
        function that starts keeping views later holds their slot until it lets them go, and
        is given copies from then on.)"""
        row, tasks = self.row, self.tasks
        keeps: dict[str, bool] = {}  # function -> keeps its inputs (learned on its first call)
        while True:
            row[STATE] = IDLE
            try:
                frame = tasks._recv_writable(WORKER_SLICE)
            except WaitTimeoutError:
                self.sweep()
                continue
            except LimitError:
                # a function kept views of a frame a whole lap old: wait for it to let go
                gc.collect()
                time.sleep(WORKER_SLICE / 10)
                continue
            except (StreamEnded, PeerDiedError, ClosedError):
                return
            tag = frame.tag
            row[JOB] = tag
            row[STATE] = BUSY
            # Until the outcome is sent, an exception escaping from here leaves the row BUSY:
            # the parent then fails (or retries) this task rather than wait for it.
            key = ""
            made: list[Any] = []
            try:
                fn, args, kwargs = unpack(frame.array, copy=False, unlink_named=False)
                key = fn_key(fn)
                if keeps.get(key, True):  # not known to let go: private copies
                    fn, args, kwargs = unpack(frame.array, copy=True, unlink_named=False,
                                              made=made)
                    frame.release()
                outcome: Any = (OK, fn(*args, **kwargs))
            except BaseException as exc:
                outcome = (ERR, exc, format_tb(exc))
                exc.__traceback__ = None  # its frames hold views of the slot
            fn = args = kwargs = None
            self.send(outcome, tag)
            outcome = None
            frame.release()
            if made:  # references: `made`, `a`, getrefcount's argument
                keeps[key] = any(sys.getrefcount(a) > 3 for a in made)
            elif key and not frame.lease.released:  # zero copy, and a view of it lives on
                keeps[key] = True
            elif key not in keeps:
                keeps[key] = False
            del frame, made
            row[DONE] += 1
            if self.spills:
                self.sweep()


def fn_key(fn: Any) -> str:
    """What identifies a function across tasks (functions travel by reference)."""
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None)
    return f"{mod}.{qual}" if qual is not None else f"{type(fn).__module__}.{type(fn).__name__}"


def worker_main(cfg: WorkerConfig, initializer: Callable[..., Any] | None,
                 initargs: tuple[Any, ...]) -> None:
    """Entry point of a pool worker (started by multiprocessing with any start method)."""
    # Ctrl-C reaches the whole process group: the parent decides what to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        table = attach(cfg.table, timeout=0)  # made before any worker starts
    except ShmArrayError:
        raise SystemExit(GONE) from None  # the pool is gone (or its segments were removed)
    row = table.view(np.ndarray)[cfg.slot]
    row[PID] = os.getpid()
    try:
        worker = Worker(cfg, row)
    except ShmArrayError:
        raise SystemExit(GONE) from None
    table_fd = os.open(_names.segment_path(cfg.table), os.O_RDONLY | os.O_CLOEXEC)
    threading.Thread(target=watchdog, args=(cfg.table, table_fd, worker.spills), daemon=True,
                     name="shmarray-pool-watchdog").start()
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            row[STATE] = INIT_FAILED
            worker.send((ERR, exc, format_tb(exc)), INIT_FAILED_TAG)
            raise SystemExit(3) from None
    try:
        worker.run()
        row[STATE] = EXITED  # only a clean exit says so (an exception leaves the task BUSY)
    except PeerDiedError:
        row[STATE] = EXITED  # the parent's collector is gone: nobody to report to
    finally:
        worker.tasks.close()
        worker.results.close()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while worker.spills and time.monotonic() < deadline:  # let the parent take them
            worker.sweep()
            time.sleep(0.01)
