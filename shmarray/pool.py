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
  are written once into the frame's data area. A worker receives a *writable view of the slot*
  (no copy; private to that worker until ``fn`` returns: do not keep it after the call, copy
  it). The caller receives a *private copy*, made as soon as the result arrives, so an ordered
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
import io
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import struct
import threading
import time
import traceback
import weakref
from collections import deque
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, Literal, NamedTuple

import numpy as np

from . import _names, _segment
from ._native import lib
from .array import SharedArray, attach, create
from .array import unlink as _unlink_segment
from .channel import Channel
from .errors import (
    ClosedError,
    CorruptSegmentError,
    InternalError,
    PeerDiedError,
    ShmArrayError,
    StreamEnded,
    WaitTimeoutError,
)

__all__ = ["Pool"]

_SLICE = 0.1  # s: the longest any pool thread waits before looking around
_WORKER_SLICE = 1.0  # s: a worker's wait slice (its watchdog notices a dead parent)
_WATCHDOG = 0.5  # s: how often a worker checks that its parent lives
_JOIN_TIMEOUT = 5.0  # s: how long shutdown waits for workers to exit before terminating them
_LOST_GRACE = 2.0  # s: see _Core._check_lost
_START_FAILURES = 3  # consecutive workers dying before they are ready: the pool is broken

_ALIGN = 64
_PREFIX = struct.Struct("<4sIQ")  # magic, header length, data length
_INLINE = b"SHP1"
_NAMED = b"SHP2"
_MIN_SLOT = 64 * 1024
_SLOT_HEADROOM = 4096
_INIT_FAILED_TAG = (1 << 64) - 1

# worker table: one row of int64 per worker
_PID, _STATE, _JOB, _DONE = range(4)
_COLS = 4
_STARTING, _IDLE, _BUSY, _EXITED, _INIT_FAILED = 1, 2, 3, 4, 5

_OK, _ERR = 0, 1
_GONE = 4  # exit status of a worker that found the pool's segments gone


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _next_pow2(n: int) -> int:
    return 1 << max(1, (n - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# Frames: a pickled header with every array out of band, in one buffer


class _Packer(pickle.Pickler):
    """Pickles an object with each plain ndarray replaced by a reference into the data area."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.arrays: list[tuple[np.ndarray[Any, Any], int]] = []  # (source, offset)
        self.size = 0
        self._refs: dict[int, tuple[Any, ...]] = {}

    def persistent_id(self, obj: Any) -> Any:  # noqa: D102 (pickle's hook)
        t = type(obj)
        if t is not np.ndarray and not (t is SharedArray and obj.name is None):
            return None  # named SharedArrays pickle by name; everything else in the header
        dt = obj.dtype
        if dt.hasobject or dt.itemsize == 0:
            return None
        ref = self._refs.get(id(obj))
        if ref is not None:  # the same array twice: one copy, one object on the other side
            return ref
        off = _align(self.size)
        fortran = obj.ndim > 1 and obj.flags.f_contiguous and not obj.flags.c_contiguous
        src = obj.T if fortran else obj  # an F-ordered array travels as its C-ordered transpose
        self.size = off + obj.nbytes
        simple = dt.fields is None and dt.subdtype is None and dt.metadata is None
        ref = (off, dt.str if simple else dt, obj.shape, fortran)
        self.arrays.append((src, off))  # keeps obj alive, so its id stays unique
        self._refs[id(obj)] = ref
        return ref


class _Payload:
    """A packed object, ready to be written into a slot or a one-off segment."""

    __slots__ = ("header", "arrays", "data_len", "data_start", "total")

    def __init__(self, obj: Any) -> None:
        buf = io.BytesIO()
        p = _Packer(buf)
        p.dump(obj)
        self.header = buf.getvalue()
        self.arrays = p.arrays
        self.data_len = p.size
        self.data_start = _align(_PREFIX.size + len(self.header))
        self.total = self.data_start + self.data_len

    def write(self, out: np.ndarray[Any, Any]) -> None:
        """Write into ``out`` (writable uint8, at least ``total`` bytes): one copy per array."""
        h = len(self.header)
        _PREFIX.pack_into(out, 0, _INLINE, h, self.data_len)  # type: ignore[arg-type]
        out[_PREFIX.size:_PREFIX.size + h] = np.frombuffer(self.header, np.uint8)
        base = self.data_start
        for src, off in self.arrays:
            n = src.nbytes
            if n:
                dst = out[base + off:base + off + n].view(src.dtype).reshape(src.shape)
                np.copyto(dst, src, casting="no")


class _Ref:
    """A frame that only names the one-off segment holding the real payload."""

    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name = name.encode()
        self.size = size

    def write(self, out: np.ndarray[Any, Any]) -> None:
        n = len(self.name)
        _PREFIX.pack_into(out, 0, _NAMED, n, self.size)  # type: ignore[arg-type]
        out[_PREFIX.size:_PREFIX.size + n] = np.frombuffer(self.name, np.uint8)


def _spill(payload: _Payload, name: str) -> _Ref:
    """Write ``payload`` into a new one-off shared array ``name``; the caller owns it."""
    seg = create(name, shape=(payload.total,), dtype=np.uint8, reserve=True)
    try:
        payload.write(seg.view(np.ndarray))
    except BaseException:
        _unlink_quietly(name)
        raise
    return _Ref(name, payload.total)


class _Unpacker(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, data: np.ndarray[Any, Any], copy: bool) -> None:
        super().__init__(file)
        self._data = data
        self._copy = copy
        self._seen: dict[Any, Any] = {}

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 (pickle's hook)
        got = self._seen.get(pid)
        if got is not None:
            return got
        try:
            off, code, shape, fortran = pid
            dt = np.dtype(code)
            n = math.prod(shape) * dt.itemsize
        except (TypeError, ValueError) as exc:
            raise pickle.UnpicklingError(f"bad array reference {pid!r} in a pool frame") from exc
        if off < 0 or off + n > len(self._data):
            raise CorruptSegmentError(f"a pool frame references bytes {off}..{off + n} beyond its "
                                      f"data area ({len(self._data)} bytes)")
        flat = self._data[off:off + n].view(dt)
        arr = flat.reshape(tuple(shape)[::-1]).T if fortran else flat.reshape(shape)
        if self._copy:
            arr = arr.copy(order="K")
        self._seen[pid] = arr
        return arr


def _unpack(buf: np.ndarray[Any, Any], *, copy: bool, unlink_named: bool) -> Any:
    """Rebuild the object in frame ``buf``. Arrays are views of the frame (writable, or copies
    with ``copy``); a named payload is attached (and unlinked at once with ``unlink_named``:
    the mapping outlives the name, so its arrays need no copy)."""
    magic, hlen, dlen = _PREFIX.unpack_from(buf, 0)  # type: ignore[arg-type, call-overload]
    if magic == _NAMED:
        if _PREFIX.size + hlen > len(buf):
            raise CorruptSegmentError("a pool frame names a payload beyond its slot")
        name = bytes(buf[_PREFIX.size:_PREFIX.size + hlen]).decode()
        try:
            buf = _map_spill(name)
        finally:
            if unlink_named:
                _unlink_quietly(name)
        copy = False  # a one-off segment is nobody else's once its name is gone
        magic, hlen, dlen = _PREFIX.unpack_from(buf, 0)  # type: ignore[arg-type, call-overload]
    if magic != _INLINE:
        raise CorruptSegmentError(f"a pool frame starts with {magic!r}, not a pool header")
    start = _align(_PREFIX.size + hlen)
    if start + dlen > len(buf):
        raise CorruptSegmentError(f"a pool frame of {len(buf)} bytes claims {start + dlen}")
    header = bytes(buf[_PREFIX.size:_PREFIX.size + hlen])
    data = buf[start:start + dlen]
    if not copy and not data.flags.writeable:
        # The slot is this worker's alone until it releases the frame: writing to it is as
        # private as writing to an unpickled copy (what ProcessPoolExecutor hands out).
        data = data.view()
        data.flags.writeable = True
    return _Unpacker(io.BytesIO(header), data, copy).load()


def _map_spill(name: str) -> np.ndarray[Any, Any]:
    """Map one-off segment ``name`` as writable uint8. Not attach(): that warns when the
    creator has died, and a worker that died right after sending its result is no reason to
    warn (or, under -W error, to fail) about a result that is complete."""
    mapping, info = _segment.open_mapping(name, False, 0, "pool payload")
    off, n = int(info.data_offset), int(info.nbytes)
    if int(info.kind) != lib.SHM_SEG_KIND_ARRAY or off + n > mapping.size:
        raise CorruptSegmentError(f"pool payload {name!r} is not a one-off pool segment")
    return np.ndarray((n,), np.uint8, buffer=mapping.mm, offset=off)  # keeps the mmap alive


def _named_in_frame(buf: np.ndarray[Any, Any]) -> str | None:
    """The one-off segment a frame names, if any (for frames dropped unread)."""
    try:
        magic, hlen, _ = _PREFIX.unpack_from(buf, 0)  # type: ignore[arg-type, call-overload]
        if magic == _NAMED and _PREFIX.size + hlen <= len(buf):
            return bytes(buf[_PREFIX.size:_PREFIX.size + hlen]).decode()
    except (struct.error, UnicodeDecodeError):
        pass
    return None


def _unlink_quietly(name: str) -> None:
    try:
        _unlink_segment(name)
    except (ShmArrayError, OSError):
        pass


def _sweep(stem: str) -> None:
    """Unlink every segment whose name starts with ``stem`` (with what its header lists)."""
    try:
        files = os.listdir(_names.SHM_DIR)
    except OSError:
        return
    for f in files:
        name = _names.from_segment_file(f)
        if name is not None and name.startswith(stem):
            _unlink_quietly(name)


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` (as concurrent.futures does)."""

    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _format_tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _outcome(value: Any) -> Any:
    """The caller's side of a worker's outcome tuple: the value, or raise the exception."""
    if value[0] == _OK:
        return value[1]
    exc, tb = value[1], value[2]
    exc.__cause__ = _RemoteTraceback(f'\n"""\n{tb}"""')
    raise exc


def _exit_text(code: int | None) -> str:
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


def _call_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """Run ``fn`` over a chunk of argument tuples in a worker (``chunksize > 1``)."""
    return [fn(*args) for args in chunk]


def _fn_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None)
    if qual is None:
        return repr(fn)[:80]
    return f"{mod}.{qual}" if mod else str(qual)


# ---------------------------------------------------------------------------------------------
# The worker process


class _WorkerConfig(NamedTuple):
    base: str
    slot: int
    table: str
    tasks: str
    results: str


def _watchdog(table: str, spills: list[str]) -> None:
    """Exit this worker once the pool's parent is gone (its owner lock on the table dropped,
    or the table unlinked): workers never outlive their parent."""
    while True:
        time.sleep(_WATCHDOG)
        if _segment.probe_owner(table) is not True:
            for name in list(spills):
                _unlink_quietly(name)
            os._exit(0)


class _Worker:
    def __init__(self, cfg: _WorkerConfig, row: np.ndarray[Any, Any]) -> None:
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
                _unlink_quietly(name)  # gone: this only drops our ownership record

    def send(self, outcome: Any, tag: int) -> None:
        try:
            payload = _Payload(outcome)
        except BaseException as exc:
            if outcome[0] == _OK:
                outcome = (_ERR, exc, _format_tb(exc))
            else:  # the exception itself does not pickle: send what can be said of it
                orig = outcome[1]
                outcome = (_ERR, RuntimeError(f"{type(orig).__name__}: {orig} (the exception "
                                              f"could not be pickled: {exc!r})"), outcome[2])
            try:
                payload = _Payload(outcome)
            except BaseException as again:
                payload = _Payload((_ERR, RuntimeError(f"the outcome could not be pickled: "
                                                       f"{again!r}"), outcome[2]))
        frame: _Payload | _Ref = payload
        if payload.total > self.results.slot_bytes:
            name = f"{self.cfg.base}-o{os.getpid()}-{next(self.count)}"
            try:
                frame = _spill(payload, name)
                self.spills.append(name)
            except BaseException as exc:
                frame = _Payload((_ERR, exc, _format_tb(exc)))
        slot = self.results.slot_bytes
        while True:
            try:
                loan = self.results.loan((slot,), np.uint8, timeout=_WORKER_SLICE, tag=tag)
                break
            except WaitTimeoutError:
                continue  # the parent is slow; the watchdog ends us if it died
        with loan as out:
            frame.write(out)

    def run(self) -> None:
        row, tasks = self.row, self.tasks
        while True:
            row[_STATE] = _IDLE
            try:
                frame = tasks.recv(timeout=_WORKER_SLICE)
            except WaitTimeoutError:
                self.sweep()
                continue
            except (StreamEnded, PeerDiedError, ClosedError):
                return
            tag = frame.tag
            row[_JOB] = tag
            row[_STATE] = _BUSY
            try:
                try:
                    fn, args, kwargs = _unpack(frame.array, copy=False, unlink_named=False)
                    outcome: Any = (_OK, fn(*args, **kwargs))
                except BaseException as exc:
                    outcome = (_ERR, exc, _format_tb(exc))
                    exc.__traceback__ = None  # its frames hold views of the slot
                fn = args = kwargs = None
                self.send(outcome, tag)
                outcome = None
            finally:
                frame.release()
            row[_DONE] += 1
            if self.spills:
                self.sweep()


def _worker_main(cfg: _WorkerConfig, initializer: Callable[..., Any] | None,
                 initargs: tuple[Any, ...]) -> None:
    """Entry point of a pool worker (started by multiprocessing with any start method)."""
    # Ctrl-C reaches the whole process group: the parent decides what to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        table = attach(cfg.table, timeout=0)  # made before any worker starts
    except ShmArrayError:
        raise SystemExit(_GONE) from None  # the pool is gone (or its segments were removed)
    row = table.view(np.ndarray)[cfg.slot]
    row[_PID] = os.getpid()
    try:
        worker = _Worker(cfg, row)
    except ShmArrayError:
        raise SystemExit(_GONE) from None
    threading.Thread(target=_watchdog, args=(cfg.table, worker.spills), daemon=True,
                     name="shmarray-pool-watchdog").start()
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            row[_STATE] = _INIT_FAILED
            worker.send((_ERR, exc, _format_tb(exc)), _INIT_FAILED_TAG)
            raise SystemExit(3) from None
    try:
        worker.run()
    except PeerDiedError:
        pass  # the parent's collector is gone: nobody to report to
    finally:
        row[_STATE] = _EXITED
        worker.tasks.close()
        worker.results.close()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        while worker.spills and time.monotonic() < deadline:  # let the parent take them
            worker.sweep()
            time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# The parent


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
        self.fn_name = _fn_name(fn)
        self.attempts = 0
        self.seq: int | None = None  # the position of its frame in the task ring, once sent
        self.spill: _Ref | None = None  # its one-off input segment, if it needed one


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
                need = max(need, _Payload(sample).total)
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
            self.table = create(f"{self.base}-w", shape=(self.processes, _COLS), dtype=np.int64)
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
                    p.join(_JOIN_TIMEOUT)
            _sweep(f"{self.base}-")
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
        self.tab[i] = (0, _STARTING, 0, 0)
        cfg = _WorkerConfig(self.base, i, self.table.name or "", self.tasks.name,
                            self.results.name)
        p = self.ctx.Process(target=_worker_main, args=(cfg, self.initializer, self.initargs),
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
        frame: _Payload | _Ref
        if job.spill is not None:
            frame = job.spill
        else:
            try:
                payload = _Payload((job.fn, job.args, job.kwargs))
                frame = payload
                if payload.total > self.tasks.slot_bytes:
                    frame = job.spill = _spill(payload, f"{self.base}-i{job.task}")
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
                if tag == _INIT_FAILED_TAG:
                    self.on_init_failed(frame.array)
                else:  # a task already given up on: drop it, and its one-off segment
                    name = _named_in_frame(frame.array)
                    if name is not None:
                        _unlink_quietly(name)
                return
            try:
                outcome = _unpack(frame.array, copy=True, unlink_named=True)
            except BaseException as exc:
                outcome = (_ERR, exc, _format_tb(exc))
        finally:
            frame.release()
        self.resolve(job, outcome)

    def on_init_failed(self, buf: np.ndarray[Any, Any]) -> None:
        try:
            outcome = _unpack(buf, copy=True, unlink_named=True)
            _outcome(outcome)
        except BaseException as exc:
            self.set_broken(BrokenProcessPool(
                f"the initializer raised {exc!r} in a worker of pool {self.base}: the pool is "
                "not usable anymore"), exc)

    def resolve(self, job: _Job, outcome: Any) -> None:
        try:
            value = _outcome(outcome)
        except BaseException as exc:
            self.finish(job, exc=exc)
        else:
            self.finish(job, value=value)

    def finish(self, job: _Job, value: Any = None, exc: BaseException | None = None) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)
        if job.spill is not None:
            _unlink_quietly(job.spill.name.decode())
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
        p.join(_JOIN_TIMEOUT)
        self.procs[i] = None
        self.drain()  # what it sent before dying is the caller's
        state, job_id = int(self.tab[i, _STATE]), int(self.tab[i, _JOB])
        _sweep(f"{self.base}-o{p.pid}-")  # result segments it made and never sent
        what = f"worker {i} (pid {p.pid}) of pool {self.base} died ({_exit_text(p.exitcode)})"
        if state == _BUSY:
            with self.lock:
                job = self.jobs.get(job_id)
            if job is not None:
                self.lost(job, what)
        elif state == _IDLE:
            # It may have taken a frame but not yet recorded it: check_lost finds that task.
            self.suspects.append(what)
        if state == _STARTING:
            self.start_failures += 1
        elif state != _INIT_FAILED:
            self.start_failures = 0
        if p.exitcode == _GONE:
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
        if state == _INIT_FAILED or self.broken is not None or self.killing:
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
        held = {int(self.tab[i, _JOB]) for i, p in enumerate(self.procs)
                if p is not None and int(self.tab[i, _STATE]) == _BUSY}
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
            self.finished.wait(_JOIN_TIMEOUT * 3)

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
            self.feeder.join(_JOIN_TIMEOUT)
        grace = 1.0 if (self.killing or self.broken is not None) else _JOIN_TIMEOUT
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
        _sweep(f"{self.base}-")
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
            self._core.ensure_started((_call_chunk, (fn, tuple(items[i:i + chunksize])), {})
                                      for i in range(0, len(items), chunksize))
        if chunksize == 1:
            fs = [self.submit(fn, *a) for a in items]
        else:
            fs = [self.submit(_call_chunk, fn, tuple(items[i:i + chunksize]))
                  for i in range(0, len(items), chunksize)]
        del items
        return self._in_order(fs, end_time, chunksize > 1)

    def _in_order(self, fs: list[Future[Any]], end_time: float | None,
                  chunks: bool) -> Iterator[Any]:
        try:
            fs.reverse()
            while fs:
                value = self._wait(fs.pop(), end_time)
                if chunks:
                    yield from value
                else:
                    yield value
        finally:
            for f in fs:
                f.cancel()

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
                return self.submit(_call_chunk, fn, x)
            return self.submit(fn, x)

        first = list(itertools.islice(it, self._window))
        if first:
            if chunksize > 1:
                self._core.ensure_started((_call_chunk, (fn, c), {}) for c in first)
            else:
                self._core.ensure_started((fn, (x,), {}) for x in first)
        pending = [submit(x) for x in first]
        del first
        if ordered:
            return self._ordered(deque(pending), it, submit, chunksize > 1)
        return self._unordered(pending, it, submit, chunksize > 1)

    def _ordered(self, pending: deque[Future[Any]], rest: Iterator[Any],
                 submit: Callable[[Any], Future[Any]], chunks: bool) -> Iterator[Any]:
        end = object()
        try:
            while pending:
                fut = pending.popleft()
                nxt = next(rest, end)
                if nxt is not end:
                    pending.append(submit(nxt))
                del nxt
                value = self._wait(fut, None)
                del fut
                if chunks:
                    yield from value
                else:
                    yield value
                del value
        finally:
            for f in pending:
                f.cancel()

    def _unordered(self, pending: list[Future[Any]], rest: Iterator[Any],
                   submit: Callable[[Any], Future[Any]], chunks: bool) -> Iterator[Any]:
        done: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        outstanding = set(pending)
        for f in pending:
            f.add_done_callback(done.put)
        del pending
        end = object()
        try:
            while outstanding:
                try:
                    fut = done.get(timeout=1.0)
                except queue.Empty:
                    self._check_alive()
                    continue
                outstanding.discard(fut)
                nxt = next(rest, end)
                if nxt is not end:
                    f = submit(nxt)
                    outstanding.add(f)
                    f.add_done_callback(done.put)
                del nxt
                value = fut.result()
                del fut
                if chunks:
                    yield from value
                else:
                    yield value
                del value
        finally:
            for f in outstanding:
                f.cancel()

    def _wait(self, fut: Future[Any], end_time: float | None) -> Any:
        if fut.done():
            return fut.result()
        while True:
            step = 1.0
            if end_time is not None:
                step = min(step, end_time - time.monotonic())
                if step <= 0:
                    fut.cancel()
                    raise concurrent.futures.TimeoutError()
            done, _ = concurrent.futures.wait([fut], timeout=step)
            if done:
                return fut.result()
            self._check_alive()

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
