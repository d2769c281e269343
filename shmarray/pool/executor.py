"""``Pool``: worker processes fed and drained through channels; arrays travel through shared
memory, written once and never pickled.

``Pool`` is a :class:`concurrent.futures.Executor` (``submit``, ``map``, ``shutdown``, ``with``)
with ``imap`` and ``imap_unordered`` in the manner of :class:`multiprocessing.pool.Pool`.

How a call travels. The parent owns two work-queue channels and a small table:

- ``<pool>-t``, the task ring: the parent is its one producer, every worker a consumer, and each
  frame goes to exactly one worker. One task is one frame.
- ``<pool>-r``, the result ring: every worker a producer, the parent its one consumer.
- ``<pool>-w``, the worker table (a SharedArray, one row per worker: pid, state, the task it
  holds, tasks done): how the parent tells which task a dead worker held.

A frame (task or result) is one ring slot laid out as::

    0   16-byte prefix: magic b"SHP1" (inline) or b"SHP2" (named), header length, data length
    16  header: a pickle of (fn, args, kwargs), or of the outcome, in which every array is a
        reference (offset, dtype, shape, order) into the data area
    ..  data area (64-byte aligned): each array's bytes, each at a 64-byte aligned offset

Which path each thing takes:

- A plain ``numpy.ndarray`` of any dtype without Python objects (numbers, bool, datetimes,
  strings, structured), any shape (0-d and empty included) and any memory layout, anywhere in
  the arguments or the result (top level or nested in tuples, lists, dicts, objects): its bytes
  are written once into the frame's data area. A worker's function gets arrays of its own, as
  under ``ProcessPoolExecutor``: on its first call private copies; if it kept none of them
  past the call, from then on *writable views of the slot* (no copy; the slot goes back when
  the call returns and nothing refers to the views any more), else copies again (worker.py).
  The caller receives a *private copy*, made as soon as the result arrives, so an ordered
  ``imap`` never holds result slots while it waits for an earlier task.
- A ``SharedArray`` backed by a named segment travels by reference (its name, offset and
  strides: nothing is copied); the worker maps the same memory, so writes to it are shared.
- Everything else -- ``fn`` itself, scalars, strings, small objects, object arrays, other
  ndarray subclasses -- is pickled into the header: the small side-band. Pickle is used only
  between the parent and the workers it started (as ``multiprocessing`` does), never through
  the control queue.
- A frame larger than its slot (slot sizes are fixed at start) goes whole through a one-off
  named shared array (``<pool>-i<task>`` for tasks, created by the parent; ``<pool>-o<pid>-<n>``
  for results, created by the worker); the ring carries only its name, and the parent unlinks
  it once used. A big result arrives without a copy.

Failure. An exception in ``fn`` reaches the caller with the worker's traceback as its
``__cause__``, as in ``concurrent.futures``. A worker that dies (SIGKILL, OOM) is replaced; the
task it held fails with :class:`PeerDiedError` naming the worker and the task, or is sent again
up to ``retries`` times. Workers exit by themselves when the parent dies (they watch its owner
lock on the table). Every wait is bounded; shutdown joins workers with a timeout and then
terminates them; nothing of the pool is left in /dev/shm once ``shutdown(wait=True)`` returns.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np

from .._os import names as _names
from ..array import create
from ..channel import Channel
from ..errors import InternalError, PeerDiedError, ShmArrayError, StreamEnded, WaitTimeoutError
from . import window
from .packing import ERR, Payload, Ref, format_tb, named_in_frame, result_of, spill, sweep
from .packing import unlink_quietly, unpack
from .worker import (
    BUSY,
    COLS,
    GONE,
    IDLE,
    INIT_FAILED,
    INIT_FAILED_TAG,
    JOB,
    JOIN_TIMEOUT,
    STARTING,
    STATE,
    WorkerConfig,
    call_chunk,
    worker_main,
)

__all__ = ["Pool"]

_SLICE = 0.1  # s: the longest any pool thread waits before looking around
_LOST_GRACE = 2.0  # s: see _Core.check_lost
_START_FAILURES = 3  # consecutive workers dying before they are ready: the pool is broken
_MIN_SLOT = 64 * 1024
_SLOT_HEADROOM = 4096


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _next_pow2(n: int) -> int:
    return 1 << max(1, (n - 1).bit_length())


def exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        hint = ": killed, or out of memory" if -code == signal.SIGKILL else ""
        return f"{sig}{hint}"
    return f"exit code {code}"


def fn_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None)
    if qual is None:
        return repr(fn)[:80]
    return f"{mod}.{qual}" if mod else str(qual)


class _Job:
    __slots__ = ("id", "task", "future", "fn", "args", "kwargs", "fn_name", "attempts", "seq",
                 "spill")

    def __init__(self, task: int, future: Future[Any], fn: Callable[..., Any],
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.id = 0
        self.task = task
        self.future = future
        self.fn: Callable[..., Any] | None = fn
        self.args: tuple[Any, ...] | None = args
        self.kwargs: dict[str, Any] | None = kwargs
        self.fn_name = fn_name(fn)
        self.attempts = 0
        self.seq: int | None = None  # the position of its frame in the task ring, once sent
        self.spill: Ref | None = None  # its one-off input segment, if it needed one


class _Core:
    """Everything but the Executor facade: the pool's threads hold this, not the Pool, so a
    Pool dropped without shutdown() is collected (and then shuts down)."""

    def __init__(self, processes: int, slot_bytes: tuple[int, int] | None, capacity: int,
                 initializer: Callable[..., Any] | None, initargs: tuple[Any, ...],
                 retries: int, ctx: Any) -> None:
        self.processes = processes
        self.slot_bytes = slot_bytes
        self.capacity = capacity
        self.initializer = initializer
        self.initargs = initargs
        self.retries = retries
        self.ctx = ctx
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.jobs: dict[int, _Job] = {}
        self.queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.ids = itertools.count(1)
        self.tasks_submitted = itertools.count()
        self.started = False
        self.stopping = False  # shutdown() was called
        self.killing = False  # stop now: terminate workers, fail what is left
        self.broken: BaseException | None = None
        self.finished = threading.Event()
        self.base = ""
        self.frames_sent = 0
        self.procs: list[Any] = []
        self.start_failures = 0
        self.suspects: list[str] = []  # deaths that may have swallowed an unrecorded task
        self.lost_since: dict[int, float] = {}
        self.feeder: threading.Thread | None = None
        self.collector: threading.Thread | None = None

    # -- start ---------------------------------------------------------------------------------

    def ensure_started(self, samples: Iterable[tuple[Any, ...]]) -> None:
        """Start on first use, sizing the slots from ``samples`` unless the caller chose."""
        with self.lock:
            self.check_usable()
            if self.started:
                return
            sizes = self.slot_bytes or self.size_slots(samples)
            self.start(*sizes)

    def check_usable(self) -> None:
        if self.broken is not None:
            raise BrokenProcessPool(str(self.broken))
        if self.stopping:
            raise RuntimeError("cannot schedule new futures after shutdown")

    @staticmethod
    def size_slots(samples: Iterable[tuple[Any, ...]]) -> tuple[int, int]:
        need = 0
        for sample in itertools.islice(samples, 16):
            try:
                need = max(need, Payload(sample).total)
            except Exception:
                pass  # it will fail again when sent, and reach its future then
        task = max(_MIN_SLOT, _round_up(need + _SLOT_HEADROOM, 4096))
        # results often outgrow inputs a little (rfft of float32): give them a quarter more
        return task, _round_up(task + task // 4, 4096)

    def start(self, task_slot: int, result_slot: int) -> None:
        self.base = _names.unique("pool")
        kw: dict[str, Any] = dict(capacity=self.capacity, mode="work-queue",
                                  max_participants=min(1024, max(64, self.processes + 8)),
                                  control_messages=1, control_message_size=64)
        try:
            self.table = create(f"{self.base}-w", shape=(self.processes, COLS), dtype=np.int64)
            self.tab = self.table.view(np.ndarray)
            self.tasks = Channel.create(f"{self.base}-t", slot_bytes=task_slot, **kw)
            self.results = Channel.create(f"{self.base}-r", slot_bytes=result_slot, **kw)
            self.monitor = Channel.open(self.tasks.name, timeout=0)  # the collector's look
            self.procs = [None] * self.processes
            for i in range(self.processes):
                self.spawn(i)
        except BaseException:
            for p in self.procs:
                if p is not None:
                    p.kill()
                    p.join(JOIN_TIMEOUT)
            sweep(f"{self.base}-")
            raise
        self.started = True
        # workers first: with the fork start method, forking before our threads exist is safer
        self.feeder = threading.Thread(target=self.feed_loop, daemon=True,
                                       name=f"shmarray-pool-feeder-{self.base}")
        self.collector = threading.Thread(target=self.collect_loop, daemon=True,
                                          name=f"shmarray-pool-collector-{self.base}")
        self.feeder.start()
        self.collector.start()
        atexit.register(self.at_exit)

    def spawn(self, i: int) -> None:
        self.tab[i] = (0, STARTING, 0, 0)
        cfg = WorkerConfig(self.base, i, self.table.name or "", self.tasks.name,
                            self.results.name)
        p = self.ctx.Process(target=worker_main, args=(cfg, self.initializer, self.initargs),
                             name=f"shmarray-pool-{self.base}-{i}")
        p.start()
        self.procs[i] = p

    # -- submit --------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Future[Any]:
        with self.lock:
            if not self.started:
                self.ensure_started([(fn, args, kwargs)])
            self.check_usable()
            job = _Job(next(self.tasks_submitted), Future(), fn, args, kwargs)
            job.id = next(self.ids)
            self.jobs[job.id] = job
            self.queue.put(job)
        return job.future

    # -- feeder thread: jobs -> task ring ------------------------------------------------------

    def done_feeding(self) -> bool:
        with self.lock:
            return (self.killing or self.broken is not None
                    or (self.stopping and not self.jobs))

    def feed_loop(self) -> None:
        try:
            while True:
                try:
                    job = self.queue.get(timeout=_SLICE)
                except queue.Empty:
                    if self.done_feeding():
                        break
                    continue
                self.feed(job)
        except BaseException as exc:
            self.set_broken(InternalError(f"pool {self.base}: the feeder thread failed: {exc!r}"
                                          " (a bug, please report it)"), exc)
        finally:
            try:
                self.tasks.end()  # idle workers see the end and exit
            except ShmArrayError:
                pass

    def feed(self, job: _Job) -> None:
        if job.attempts == 0 and not job.future.set_running_or_notify_cancel():
            with self.lock:
                self.jobs.pop(job.id, None)
            return
        frame: Payload | Ref
        if job.spill is not None:
            frame = job.spill
        else:
            try:
                payload = Payload((job.fn, job.args, job.kwargs))
                frame = payload
                if payload.total > self.tasks.slot_bytes:
                    frame = job.spill = spill(payload, f"{self.base}-i{job.task}")
                del payload
            except BaseException as exc:
                self.finish(job, exc=exc)
                return
        if self.retries == 0:
            job.fn = job.args = job.kwargs = None  # the caller's arrays are free to go
        slot = self.tasks.slot_bytes
        while True:
            if self.killing or self.broken is not None:
                return  # set_broken / teardown fail it
            try:
                loan = self.tasks.loan((slot,), np.uint8, timeout=_SLICE, tag=job.id)
                break
            except WaitTimeoutError:
                continue
            except PeerDiedError:
                time.sleep(_SLICE)  # every worker died and the ring is full: replacements come
        job.seq = self.frames_sent
        self.frames_sent += 1  # an aborted loan takes its position too
        try:
            with loan as out:
                frame.write(out)
        except BaseException as exc:
            self.finish(job, exc=exc)

    # -- collector thread: result ring -> futures; worker deaths -------------------------------

    def collect_loop(self) -> None:
        try:
            next_look = 0.0
            while True:
                try:
                    frame = self.results.recv(timeout=_SLICE)
                except (WaitTimeoutError, PeerDiedError):
                    frame = None
                if frame is not None:
                    self.on_result(frame)
                now = time.monotonic()
                if frame is None or now >= next_look:
                    next_look = now + _SLICE
                    self.check_workers()
                    if self.suspects:
                        self.check_lost(now)
                    if self.done_feeding():
                        break
        except BaseException as exc:
            self.set_broken(InternalError(f"pool {self.base}: the collector thread failed: "
                                          f"{exc!r} (a bug, please report it)"), exc)
        finally:
            try:
                self.teardown()
            finally:
                self.finished.set()

    def drain(self) -> None:
        while True:
            try:
                frame = self.results.try_recv()
            except (PeerDiedError, StreamEnded):
                return
            if frame is None:
                return
            self.on_result(frame)

    def on_result(self, frame: Any) -> None:
        tag = frame.tag
        with self.lock:
            job = self.jobs.pop(tag, None)
        try:
            if job is None:
                if tag == INIT_FAILED_TAG:
                    self.on_init_failed(frame.array)
                else:  # a task already given up on: drop it, and its one-off segment
                    name = named_in_frame(frame.array)
                    if name is not None:
                        unlink_quietly(name)
                return
            try:
                outcome = unpack(frame.array, copy=True, unlink_named=True)
            except BaseException as exc:
                outcome = (ERR, exc, format_tb(exc))
        finally:
            frame.release()
        self.resolve(job, outcome)

    def on_init_failed(self, buf: np.ndarray[Any, Any]) -> None:
        try:
            outcome = unpack(buf, copy=True, unlink_named=True)
            result_of(outcome)
        except BaseException as exc:
            self.set_broken(BrokenProcessPool(
                f"the initializer raised {exc!r} in a worker of pool {self.base}: the pool is "
                "not usable anymore"), exc)

    def resolve(self, job: _Job, outcome: Any) -> None:
        try:
            value = result_of(outcome)
        except BaseException as exc:
            self.finish(job, exc=exc)
        else:
            self.finish(job, value=value)

    def finish(self, job: _Job, value: Any = None, exc: BaseException | None = None) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)
        if job.spill is not None:
            unlink_quietly(job.spill.name.decode())
            job.spill = None
        job.fn = job.args = job.kwargs = None
        try:
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile

    def check_workers(self) -> None:
        live = {p.sentinel: i for i, p in enumerate(self.procs) if p is not None}
        if not live:
            return
        for s in multiprocessing.connection.wait(list(live), timeout=0):
            self.on_worker_exit(live[s])  # type: ignore[index]

    def on_worker_exit(self, i: int) -> None:
        p = self.procs[i]
        p.join(JOIN_TIMEOUT)
        self.procs[i] = None
        self.drain()  # what it sent before dying is the caller's
        state, job_id = int(self.tab[i, STATE]), int(self.tab[i, JOB])
        sweep(f"{self.base}-o{p.pid}-")  # result segments it made and never sent
        what = f"worker {i} (pid {p.pid}) of pool {self.base} died ({exit_text(p.exitcode)})"
        if state == BUSY:
            with self.lock:
                job = self.jobs.get(job_id)
            if job is not None:
                self.lost(job, what)
        elif state == IDLE:
            # It may have taken a frame but not yet recorded it: check_lost finds that task.
            self.suspects.append(what)
        if state == STARTING:
            self.start_failures += 1
        elif state != INIT_FAILED:
            self.start_failures = 0
        if p.exitcode == GONE:
            gone = [n for n in (self.table.name, self.tasks.name, self.results.name)
                    if n and not os.path.exists(_names.segment_path(n))]
            if gone:
                self.set_broken(BrokenProcessPool(
                    f"the segments of pool {self.base} were removed by another process while "
                    f"it ran ({', '.join(gone)}: 'shmarray clean --force', or a test's leak "
                    "check?): the pool is not usable anymore"))
                return
        if self.start_failures >= _START_FAILURES:
            self.set_broken(BrokenProcessPool(
                f"{what} before it was ready, {self.start_failures} workers in a row: the pool "
                "is not usable anymore (can the workers import their module? is memory short?)"))
            return
        if state == INIT_FAILED or self.broken is not None or self.killing:
            return
        with self.lock:
            needed = bool(self.jobs) or not self.stopping
        if needed:
            try:
                self.spawn(i)
            except Exception as exc:
                self.set_broken(BrokenProcessPool(
                    f"{what}, and a replacement could not be started: {exc!r}"), exc)

    def lost(self, job: _Job, what: str) -> None:
        """The task ``job`` died with its worker: send it again, or fail it."""
        self.lost_since.pop(job.id, None)
        if job.attempts < self.retries:
            with self.lock:
                if self.jobs.pop(job.id, None) is None:
                    return
                job.attempts += 1
                job.id = next(self.ids)
                job.seq = None
                self.jobs[job.id] = job
                self.queue.put(job)
            return
        tries = f" (tried {job.attempts + 1} times)" if job.attempts else ""
        self.finish(job, exc=PeerDiedError(
            f"{what} while running task {job.task} ({job.fn_name}){tries}; the worker was "
            f"replaced (Pool(retries=N) sends such a task again)"))

    def check_lost(self, now: float) -> None:
        """Find a task a worker took from the ring just before dying, before it could record
        it in the table: sent, taken (its position is below the ring's consumed cursor), no
        result, and held by no live worker, for longer than a live worker ever takes to
        record what it took (microseconds; _LOST_GRACE allows for a descheduled one)."""
        self.drain()
        consumed = int(self.monitor.stats()["consumed"])
        held = {int(self.tab[i, JOB]) for i, p in enumerate(self.procs)
                if p is not None and int(self.tab[i, STATE]) == BUSY}
        with self.lock:
            if not self.jobs:
                self.suspects.clear()
                self.lost_since.clear()
                return
            candidates = [j for j in self.jobs.values()
                          if j.seq is not None and j.seq < consumed and j.id not in held]
        seen = {}
        for job in candidates:
            t0 = self.lost_since.get(job.id, now)
            seen[job.id] = t0
            if now - t0 >= _LOST_GRACE and self.suspects:
                self.lost(job, self.suspects.pop(0))
                seen.pop(job.id, None)
        self.lost_since = seen

    # -- stop ----------------------------------------------------------------------------------

    def set_broken(self, exc: BaseException, cause: BaseException | None = None) -> None:
        if cause is not None:
            exc.__cause__ = cause
        with self.lock:
            if self.broken is None:
                self.broken = exc
            jobs = list(self.jobs.values())
            self.jobs.clear()
        for job in jobs:
            err = BrokenProcessPool(str(exc))
            err.__cause__ = exc.__cause__
            self.finish(job, exc=err)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self.lock:
            self.stopping = True
            if cancel_futures:
                for job in list(self.jobs.values()):
                    if job.seq is None and job.attempts == 0 and job.future.cancel():
                        self.jobs.pop(job.id, None)
            started = self.started
        if not started or not wait or threading.current_thread() is self.collector:
            return
        try:
            while not self.finished.wait(_SLICE * 10):
                pass
        except BaseException:  # interrupted (Ctrl-C): stop now rather than leave work behind
            self.terminate()
            raise

    def terminate(self) -> None:
        """Stop now: cancel what was not sent, fail what was, terminate the workers."""
        with self.lock:
            self.stopping = True
            self.killing = True
            started = self.started
            for job in list(self.jobs.values()):
                if job.seq is None and job.attempts == 0 and job.future.cancel():
                    self.jobs.pop(job.id, None)
        if started and threading.current_thread() is not self.collector:
            self.finished.wait(JOIN_TIMEOUT * 3)

    def at_exit(self) -> None:
        if os.getpid() == self.pid:
            self.shutdown(wait=True, cancel_futures=True)

    def release(self) -> None:
        """The Pool was collected without shutdown(): stop once the submitted work is done."""
        if os.getpid() == self.pid:
            self.shutdown(wait=False, cancel_futures=False)

    def teardown(self) -> None:
        """In the collector thread, last: workers joined (or terminated), segments removed."""
        if self.feeder is not None:
            self.feeder.join(JOIN_TIMEOUT)
        grace = 1.0 if (self.killing or self.broken is not None) else JOIN_TIMEOUT
        deadline = time.monotonic() + grace
        for p in self.procs:
            if p is not None and not self.killing:
                p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p is not None and p.is_alive():
                p.terminate()
                p.join(1.0)
                if p.is_alive():
                    p.kill()
                    p.join(1.0)
        with self.lock:
            leftover = list(self.jobs.values())
            self.jobs.clear()
        for job in leftover:  # only after terminate() or a broken pool
            self.finish(job, exc=BrokenProcessPool(str(self.broken)) if self.broken is not None
                        else PeerDiedError(f"pool {self.base} was terminated before task "
                                           f"{job.task} ({job.fn_name}) finished"))
        for ch in (self.monitor, self.results, self.tasks):
            ch.close()
        for ch in (self.results, self.tasks):
            try:
                ch.unlink()
            except ShmArrayError:
                pass
        try:
            self.table.unlink()
        except ShmArrayError:
            pass
        sweep(f"{self.base}-")
        try:
            atexit.unregister(self.at_exit)
        except Exception:
            pass


class Pool(Executor):
    """A pool of worker processes that passes numpy arrays through shared memory.

    A :class:`concurrent.futures.Executor`: ``submit``, ``map`` and ``shutdown`` have the
    standard library's signatures, so it replaces ``ProcessPoolExecutor`` in one line; ``imap``
    and ``imap_unordered`` stream like :class:`multiprocessing.pool.Pool`'s. Arrays, anywhere in
    the arguments or results, are written once into shared memory and never pickled; what
    else a call carries goes by a small pickled side-band (see the module docstring for which
    path each thing takes). ``fn`` and its arguments must be importable or picklable as with
    any process pool.

    ``processes``: the number of workers (default ``os.cpu_count()``). ``slot_bytes``: the
    size of a task frame, or a pair ``(task, result)``; by default sized from the first batch
    of inputs, with results a quarter larger. A frame that outgrows its slot goes through a
    one-off named shared array instead (slower, never an error). ``capacity``: frames per
    ring, a power of two (default: the next power of two >= processes + 2, at least 4).
    ``initializer(*initargs)`` runs once in each worker; if it raises, the pool is broken
    (``BrokenProcessPool``). ``retries``: how many times a task whose worker died (SIGKILL,
    OOM) is sent again before it fails with :class:`PeerDiedError` (exceptions raised by
    ``fn`` are never retried). ``context``: a multiprocessing context or start-method name
    (``"spawn"``, ``"forkserver"``, ``"fork"``); default: multiprocessing's default.

    Workers start at the first task (at once when ``slot_bytes`` is given); the rings reserve
    ``capacity`` slots each in /dev/shm, so a full /dev/shm raises LimitError there. Methods
    may be called from several threads. ``shutdown(wait=True)`` (and the end of a ``with``)
    returns once every submitted task is done and nothing of the pool is left in /dev/shm;
    ``terminate()`` stops at once. A pool dropped without either shuts down when collected,
    and at interpreter exit.

        with shmarray.Pool(4) as pool:
            spectra = list(pool.map(np.fft.rfft, frames))      # in order, lazily
            for out in pool.imap_unordered(process, stream):   # streaming, bounded memory
                ...
    """

    def __init__(self, processes: int | None = None, *, slot_bytes: int | tuple[int, int] | None
                 = None, capacity: int | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = (),
                 retries: int = 0, context: Any = None) -> None:
        if processes is None:
            processes = os.cpu_count() or 1
        if processes <= 0:
            raise ValueError(f"processes must be at least 1, not {processes}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if capacity is None:
            capacity = max(4, _next_pow2(processes + 2))
        elif capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two >= 2, not {capacity}")
        sizes: tuple[int, int] | None
        if slot_bytes is None:
            sizes = None
        elif isinstance(slot_bytes, tuple):
            sizes = (int(slot_bytes[0]), int(slot_bytes[1]))
        else:
            sizes = (int(slot_bytes), int(slot_bytes))
        if sizes is not None and min(sizes) < 1024:
            raise ValueError(f"slot_bytes must be at least 1024, not {slot_bytes}")
        ctx: Any
        if context is None:
            ctx = multiprocessing.get_context()
        elif isinstance(context, str):
            ctx = multiprocessing.get_context(context)
        else:
            ctx = context
        self._processes = processes
        self._core = _Core(processes, sizes, capacity, initializer, tuple(initargs), retries,
                           ctx)
        self._window = max(2 * capacity, processes + 2)
        weakref.finalize(self, _Core.release, self._core).atexit = False
        if sizes is not None:
            self._core.ensure_started(())

    @property
    def processes(self) -> int:
        """The number of worker processes."""
        return self._processes

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` on a worker; returns a Future. Never blocks on the
        workers (the call waits in the parent until a slot is free). Raises RuntimeError after
        shutdown, BrokenProcessPool once the pool is broken."""
        return self._core.submit(fn, args, kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """``map(fn, *iterables)`` on the workers: returns an iterator of the results in order,
        each yielded as soon as it (and those before it) arrived. As in concurrent.futures the
        iterables are read at once; ``timeout`` (seconds from this call) makes ``next()`` raise
        TimeoutError; an exception raised by ``fn`` is raised when its result is reached.
        ``chunksize`` > 1 sends that many calls per task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        items = list(zip(*iterables))
        if not items:
            return iter(())
        if chunksize == 1:
            self._core.ensure_started((fn, a, {}) for a in items)
        else:
            self._core.ensure_started((call_chunk, (fn, tuple(items[i:i + chunksize])), {})
                                      for i in range(0, len(items), chunksize))
        if chunksize == 1:
            fs = [self.submit(fn, *a) for a in items]
        else:
            fs = [self.submit(call_chunk, fn, tuple(items[i:i + chunksize]))
                  for i in range(0, len(items), chunksize)]
        del items
        # every call is submitted already: the window's ordered results, with nothing to add
        return window.results(fs, iter(()), self.submit, chunksize > 1, True, end_time,
                              self._check_alive)

    def imap(self, fn: Callable[..., Any], iterable: Iterable[Any],
             chunksize: int = 1) -> Iterator[Any]:
        """Like ``map(fn, iterable)``, streaming: the iterable is read as results are taken,
        and at most a window of tasks (about twice the ring capacity) is in flight or held, so
        memory stays bounded whatever the length. Results come in order; an exception raised
        by ``fn`` is raised when its result is reached (the tasks behind it are cancelled if
        the iterator is then closed)."""
        return self._imap(fn, iterable, chunksize, ordered=True)

    def imap_unordered(self, fn: Callable[..., Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> Iterator[Any]:
        """As imap, but results come as they finish, in any order."""
        return self._imap(fn, iterable, chunksize, ordered=False)

    def _imap(self, fn: Callable[..., Any], iterable: Iterable[Any], chunksize: int,
              ordered: bool) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        it: Iterator[Any] = iter(iterable)
        if chunksize > 1:
            source = it
            it = iter(lambda: tuple((x,) for x in itertools.islice(source, chunksize)), ())

        def submit(x: Any) -> Future[Any]:
            if chunksize > 1:
                return self.submit(call_chunk, fn, x)
            return self.submit(fn, x)

        first = list(itertools.islice(it, self._window))
        if first:
            if chunksize > 1:
                self._core.ensure_started((call_chunk, (fn, c), {}) for c in first)
            else:
                self._core.ensure_started((fn, (x,), {}) for x in first)
        pending = [submit(x) for x in first]
        del first
        return window.results(pending, it, submit, chunksize > 1, ordered, None,
                              self._check_alive)

    def _check_alive(self) -> None:
        core = self._core
        if core.started and core.finished.is_set():
            # every task is resolved before the collector finishes: a future still pending
            # now was never accounted for
            raise InternalError(f"pool {core.base} stopped with a task unresolved (a bug, "
                                "please report it)")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; the workers finish what was submitted, then exit.

        ``wait``: block until every submitted task is done, the workers are joined (those
        that do not exit within 5 s are terminated) and the pool's shared memory is removed.
        ``cancel_futures``: cancel the tasks not yet handed to a worker. Idempotent. An
        interrupted wait (Ctrl-C) terminates the pool before it propagates."""
        self._core.shutdown(wait, cancel_futures)

    def terminate(self) -> None:
        """Stop now (as multiprocessing.pool.Pool.terminate): tasks not yet handed to a worker
        are cancelled, running ones fail with PeerDiedError, the workers are terminated
        (SIGTERM, then SIGKILL after 1 s) and the pool's shared memory is removed. Blocks for
        at most about 15 s."""
        self._core.terminate()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        """Shut down and wait; when the block raised, tasks not yet started are cancelled
        first, so the exception is not held up by work nobody will read."""
        self.shutdown(wait=True, cancel_futures=exc_type is not None)
        return False

    def __repr__(self) -> str:
        core = self._core
        state = ("broken" if core.broken is not None else "shut down" if core.stopping
                 else "running" if core.started else "not started")
        return f"<shmarray.Pool {core.base or '-'} processes={self._processes} {state}>"
