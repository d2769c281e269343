"""A pool worker process: takes tasks from the task ring, runs them, sends the outcomes to the
result ring; exits when the pool ends the task stream, or when the parent dies (its watchdog).

The worker table (a SharedArray, one int64 row per worker: pid, state, the task it holds,
tasks done) tells the parent which task a dead worker held.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from .._os import names as _names
from .._os import segment as _segment
from .._os.native import lib
from ..array import attach
from ..channel import Channel
from ..errors import ClosedError, PeerDiedError, ShmArrayError, StreamEnded, WaitTimeoutError
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


def watchdog(table_fd: int, spills: list[str]) -> None:
    """Exit this worker once the pool's parent is gone (its owner lock on the table dropped):
    workers never outlive their parent. The lock is probed on a descriptor opened at start, so
    no later limit (EMFILE...) can make it fail; a probe that fails says nothing, and
    unknown is not dead."""
    while True:
        time.sleep(WATCHDOG)
        if lib.shm_seg_lock_probe(table_fd, _segment.OWNER_BYTE) == 0:
            for name in list(spills):
                unlink_quietly(name)
            os._exit(0)


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
        """Take tasks until the stream ends. A function's array arguments are views of its
        task's slot, writable and its own: the slot goes back when the function returns, or,
        if it kept a view of them (a cache, an accumulator), when the last such view dies; a
        function seen keeping its inputs gets private copies from then on, so the ring never
        stalls."""
        row, tasks = self.row, self.tasks
        keepers: set[str] = set()
        copy_all = False  # this worker holds so many kept frames that every input is copied
        while True:
            row[STATE] = IDLE
            try:
                frame = tasks._recv_writable(WORKER_SLICE)
            except WaitTimeoutError:
                self.sweep()
                continue
            except (StreamEnded, PeerDiedError, ClosedError):
                return
            tag = frame.tag
            row[JOB] = tag
            row[STATE] = BUSY
            # Until the outcome is sent, an exception escaping from here leaves the row BUSY:
            # the parent then fails (or retries) this task rather than wait for it.
            key = ""
            try:
                fn, args, kwargs = unpack(frame.array, copy=copy_all, unlink_named=False)
                key = fn_key(fn)
                if not copy_all and key in keepers:
                    fn, args, kwargs = unpack(frame.array, copy=True, unlink_named=False)
                outcome: Any = (OK, fn(*args, **kwargs))
            except BaseException as exc:
                outcome = (ERR, exc, format_tb(exc))
                exc.__traceback__ = None  # its frames hold views of the slot
            fn = args = kwargs = None
            self.send(outcome, tag)
            outcome = None
            frame.release()
            if not frame.lease.released:  # the function kept a view of its inputs
                keepers.add(key)
            del frame
            held = tasks._held()
            copy_all = held >= max(1, self.tasks.capacity - 2) or (copy_all and held > 0)
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
    threading.Thread(target=watchdog, args=(table_fd, worker.spills), daemon=True,
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
