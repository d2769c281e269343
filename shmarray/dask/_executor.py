"""``Executor``: shmarray.Pool's semantics on a Dask cluster (see the package docstring)."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import pickle
import re
import threading
import time
import traceback
import uuid
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, Literal

import distributed
from distributed.client import FutureCancelledError

import shmarray
from shmarray.pool import window

from ._plugin import install
from ._wire import Payload, arrays_in, has_arrays

__all__ = ["Executor"]

_SLICE = 0.1  # s: the longest an executor thread waits before looking around
_LOST_LIMIT = 3  # times a task whose input died with a worker is sent again (not a retry)
_EXIT_WAIT = 5.0  # s: how long interpreter exit waits for submitted tasks
_OK, _ERR = 0, 1


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` (as concurrent.futures does)."""

    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _fn_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None)
    if qual is None:
        return repr(fn)[:80]
    return f"{mod}.{qual}" if mod else str(qual)


def _key_prefix(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return re.sub(r"[^A-Za-z0-9_]", "_", str(name))[:40] or "call"


# ---------------------------------------------------------------------------------------------
# What runs on a worker


def _sendable(exc: BaseException, tb: str) -> BaseException:
    """``exc``, or what can be said of it when it does not pickle."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception as why:
        return RuntimeError(f"{type(exc).__name__}: {exc} (the exception could not be pickled: "
                            f"{why!r})")


def _call(fn: Callable[..., Any], payload: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` on a worker and return its outcome, never raising: Dask
    sees a task that raised as a success, so it is never retried (as in Pool), and the caller
    gets the exception with this traceback as its ``__cause__``."""
    args, kwargs = payload.value if type(payload) is Payload else payload
    del payload
    try:
        outcome: Any = (_OK, fn(*args, **kwargs))
    except BaseException as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc.__traceback__ = None  # its frames hold the arguments (views of their segments)
        outcome = (_ERR, _sendable(exc, tb), tb)
    del args, kwargs
    for arr in arrays_in(outcome):
        if type(arr) is shmarray.SharedArray:
            try:  # made here and handed to Dask: it lives while Dask (or anyone here) holds it
                arr.unlink_when_unreferenced()
            except shmarray.ShmArrayError:
                pass  # attached, or a private copy: not ours to unlink
    return Payload(outcome) if has_arrays(outcome) else outcome


def _call_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """``chunksize`` > 1: one task runs ``fn`` over several argument tuples."""
    return [fn(*args) for args in chunk]


def _outcome(value: Any) -> Any:
    """The caller's side of ``_call``: the value, or raise the exception."""
    if type(value) is Payload:
        value = value.private()
    if type(value) is not tuple or len(value) not in (2, 3) or value[0] not in (_OK, _ERR):
        raise shmarray.InternalError(f"a task returned {type(value).__name__}, not an outcome "
                                     "(a bug, please report it)")
    if value[0] == _OK:
        return value[1]
    exc, tb = value[1], value[2]
    exc.__cause__ = _RemoteTraceback(f'\n"""\n{tb}"""')
    raise exc


# ---------------------------------------------------------------------------------------------
# The client side


class _Job:
    __slots__ = ("task", "future", "fn", "args", "kwargs", "fn_name", "key_prefix", "attempts",
                 "lost", "dfut", "payload", "keep", "flying")

    def __init__(self, task: int, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], fn_name: str, key_prefix: str) -> None:
        self.task = task
        self.future: Future[Any] = Future()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.fn_name = fn_name
        self.key_prefix = key_prefix
        self.attempts = 0  # re-sent after its worker died while running it
        self.lost = 0  # re-sent after its input died with a worker
        self.dfut: distributed.Future[Any] | None = None
        self.payload: Any = None  # what the next send hands the cluster
        self.keep: Any = None  # the Payload sent: its one-off segments live until we finish
        self.flying = False  # counted in _Core.in_flight

    def pack(self) -> None:
        """The wrapper's argument; arrays travel out of band through a Payload. Made afresh
        for each send: a worker that died may have written to the one-off segments."""
        pair = (self.args, self.kwargs)
        self.payload = self.keep = Payload(pair) if has_arrays(pair) else pair


class _Core:
    """Everything but the Executor facade: the threads hold this, so an Executor dropped
    without shutdown() is collected (and then shuts down)."""

    def __init__(self, client: distributed.Client, retries: int, max_in_flight: int,
                 direct: bool, task_options: dict[str, Any]) -> None:
        self.client = client
        self.retries = retries
        self.max_in_flight = max_in_flight
        self.direct = direct
        self.task_options = task_options
        self.lock = threading.Condition(threading.Lock())
        self.pending: deque[_Job] = deque()
        self.jobs: dict[int, _Job] = {}  # every unresolved job, by task number
        self.in_flight = 0
        self.tasks = itertools.count()
        self.stopping = False
        self.started = False
        self.broken: BaseException | None = None
        self.finished = threading.Event()
        self.feeder: threading.Thread | None = None

    # -- submit --------------------------------------------------------------------------------

    def submit(self, job_fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               user_fn: Any) -> Future[Any]:
        with self.lock:
            if self.broken is not None:
                raise self.broken
            if self.stopping:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self.client.status in ("closing", "closed"):
                raise RuntimeError(f"the Dask client {self.client} is closed: cannot schedule "
                                   "new futures")
            job = _Job(next(self.tasks), job_fn, args, kwargs, _fn_name(user_fn),
                       _key_prefix(user_fn))
            self.jobs[job.task] = job
            self.pending.append(job)
            if not self.started:
                self.start()
            self.lock.notify_all()
        return job.future

    def start(self) -> None:
        self.started = True
        self.feeder = threading.Thread(target=self.feed_loop, daemon=True,
                                       name="shmarray-dask-feeder")
        self.feeder.start()
        atexit.register(self.at_exit)

    # -- feeder: pending jobs -> the cluster, at most max_in_flight at a time ------------------

    def feed_loop(self) -> None:
        """Hands batches of pending jobs to the client's event loop (launch); there, each
        task is submitted, awaited and gathered (watch), and its future resolved."""
        try:
            while True:
                with self.lock:
                    while not (self.pending and self.in_flight < self.max_in_flight):
                        if self.broken is not None or (self.stopping and not self.jobs):
                            return
                        if not self.lock.wait(_SLICE * 5) and self.client_gone():
                            break
                    batch: list[_Job] = []
                    while self.pending and self.in_flight + len(batch) < self.max_in_flight:
                        job = self.pending.popleft()
                        fresh = job.attempts == 0 and job.lost == 0
                        if fresh and not job.future.set_running_or_notify_cancel():
                            self.jobs.pop(job.task, None)  # cancelled while it waited here
                            continue
                        job.flying = True
                        batch.append(job)
                    self.in_flight += len(batch)
                if self.client_gone():
                    self.fail_all(shmarray.ClosedError, "the Dask client was closed")
                    continue
                for job in batch:
                    try:
                        job.pack()
                    except BaseException as exc:
                        self.finish(job, exc=exc)
                batch = [j for j in batch if j.payload is not None]
                if batch:
                    asyncio.run_coroutine_threadsafe(self.launch(batch),
                                                     self.loop())
        except BaseException as exc:
            self.set_broken(shmarray.InternalError(f"shmarray.dask.Executor: the feeder thread "
                                                   f"failed: {exc!r} (a bug, please report it)"),
                            exc)
        finally:
            self.finished.set()

    def loop(self) -> asyncio.AbstractEventLoop:
        """The client's event loop (where Dask's coroutines run)."""
        client: Any = self.client
        loop: asyncio.AbstractEventLoop = client.loop.asyncio_loop
        return loop

    def client_gone(self) -> bool:
        return self.client.status in ("closing", "closed")

    async def launch(self, batch: list[_Job]) -> None:
        """In the client's event loop: scatter the payloads that carry arrays (one message per
        worker for the batch), submit every task, and watch each."""
        try:
            scatter = [j for j in batch if type(j.payload) is Payload]
            if scatter:
                try:
                    futs = await self.client.scatter(
                        [j.payload for j in scatter], direct=True, hash=False,
                        workers=self.task_options.get("workers"), asynchronous=True)
                except Exception:
                    futs = None
                if futs is None:  # find the call that does not travel, so only it fails
                    futs = []
                    for j in scatter:
                        try:
                            futs.append(await self.client.scatter(
                                j.payload, direct=True, hash=False, asynchronous=True))
                        except BaseException as exc:
                            futs.append(None)
                            self.finish(j, exc=exc)
                for j, f in zip(scatter, futs):
                    j.payload = f  # the task takes the scattered payload; Dask resolves it
            for job in batch:
                if job.payload is None:
                    continue
                key = f"{job.key_prefix}-shmarray-{uuid.uuid4().hex}"
                try:
                    dfut = self.client.submit(_call, job.fn, job.payload, key=key, pure=False,
                                              retries=0, **self.task_options)
                except BaseException as exc:
                    self.finish(job, exc=exc)
                    continue
                job.payload = None  # the cluster has it (a scattered payload: the task holds it)
                job.dfut = dfut
                asyncio.ensure_future(self.watch(job, dfut))
        except BaseException as exc:  # asyncio.CancelledError too: the loop is going away
            for job in batch:
                if job.dfut is None:
                    self.finish(job, exc=shmarray.ClosedError(
                        f"the Dask client's event loop stopped before task {job.task} "
                        f"({job.fn_name}) was sent: {exc!r}"))

    async def watch(self, job: _Job, dfut: distributed.Future[Any]) -> None:
        """Wait for one task, gather its outcome (from its worker, with direct_to_workers)."""
        try:
            value = await self.client.gather(dfut, direct=self.direct, asynchronous=True)
        except asyncio.CancelledError:
            self.finish(job, exc=shmarray.ClosedError(
                f"the Dask client's event loop stopped before task {job.task} ({job.fn_name}) "
                "finished"))
        except BaseException as exc:
            if job.dfut is dfut:
                self.failed(job, exc)
        else:
            if job.dfut is dfut:
                self.resolve(job, value)

    def resolve(self, job: _Job, value: Any) -> None:
        try:
            result = _outcome(value)
        except BaseException as exc:
            self.finish(job, exc=exc)
        else:
            self.finish(job, value=result)

    def failed(self, job: _Job, exc: BaseException) -> None:
        """The cluster could not run ``job``: its worker died, its input was lost, or Dask
        itself raised (a deserialization error, a closed client)."""
        if isinstance(exc, distributed.KilledWorker):
            if job.attempts < self.retries:
                job.attempts += 1
                self.requeue(job)
                return
            try:
                worker = str(exc.last_worker)
            except Exception:
                worker = "a worker"
            tries = f" (sent {job.attempts + 1} times)" if job.attempts else ""
            err = shmarray.PeerDiedError(
                f"the worker running task {job.task} ({job.fn_name}) died: {worker}{tries}; the "
                f"cluster already ran it on {exc.allowed_failures + 1} worker(s) "
                "(distributed.scheduler.allowed-failures); Executor(retries=N) sends such a "
                "task again")
            err.__cause__ = exc
            self.finish(job, exc=err)
            return
        if isinstance(exc, concurrent.futures.CancelledError) and not job.future.cancelled():
            if self.client.status in ("closing", "closed"):
                err2 = shmarray.ClosedError(f"the Dask client was closed before task {job.task} "
                                            f"({job.fn_name}) finished")
                err2.__cause__ = exc
                self.finish(job, exc=err2)
                return
            reason = exc.reason if isinstance(exc, FutureCancelledError) else "unknown"
            if job.lost < _LOST_LIMIT:
                job.lost += 1
                self.requeue(job)
                return
            err3 = shmarray.PeerDiedError(
                f"task {job.task} ({job.fn_name}) was lost {job.lost + 1} times with the worker "
                f"that held its input (the cluster cancelled it: {reason}); did it kill its "
                "worker?")
            err3.__cause__ = exc
            self.finish(job, exc=err3)
            return
        self.finish(job, exc=exc)

    def land(self, job: _Job) -> distributed.Future[Any] | None:
        """``job`` leaves the cluster (under the lock): its slot is free for the next."""
        dfut, job.dfut = job.dfut, None
        job.payload = job.keep = None
        if job.flying:
            job.flying = False
            self.in_flight -= 1
        self.lock.notify_all()
        return dfut

    def requeue(self, job: _Job) -> None:
        with self.lock:
            dfut = self.land(job)
            self.pending.appendleft(job)
        if dfut is not None:
            dfut.release()

    def finish(self, job: _Job, value: Any = None, exc: BaseException | None = None) -> None:
        with self.lock:
            dfut = self.land(job)
            self.jobs.pop(job.task, None)
        job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
        if dfut is not None:
            dfut.release()  # the worker drops the result (and unlinks its segments)
        try:
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile

    # -- stop ----------------------------------------------------------------------------------

    def fail_all(self, kind: type[BaseException], why: str) -> None:
        with self.lock:
            jobs = list(self.jobs.values())
            self.pending.clear()
        for job in jobs:
            self.finish(job, exc=kind(f"{why} before task {job.task} ({job.fn_name}) finished"))

    def set_broken(self, exc: BaseException, cause: BaseException) -> None:
        exc.__cause__ = cause
        with self.lock:
            if self.broken is None:
                self.broken = exc
        self.fail_all(shmarray.InternalError, f"the executor broke ({cause!r})")

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self.lock:
            self.stopping = True
            if cancel_futures:
                for job in list(self.pending):
                    if job.attempts == 0 and job.lost == 0 and job.future.cancel():
                        self.pending.remove(job)
                        self.jobs.pop(job.task, None)
            self.lock.notify_all()
            started = self.started
        if not started or not wait or self.in_our_threads():
            return
        try:
            while not self.finished.wait(_SLICE * 10):
                pass
            if self.feeder is not None:
                self.feeder.join(_EXIT_WAIT)
        except BaseException:  # interrupted (Ctrl-C): give up on what is left
            self.fail_all(concurrent.futures.CancelledError, "the executor was interrupted")
            raise

    def in_our_threads(self) -> bool:
        """Waiting here would deadlock: the feeder, or the client's event loop (a callback)."""
        if threading.current_thread() is self.feeder:
            return True
        try:
            return asyncio.get_running_loop() is self.loop()
        except RuntimeError:
            return False

    def at_exit(self) -> None:
        self.shutdown(wait=False, cancel_futures=True)
        self.finished.wait(_EXIT_WAIT)

    def release(self) -> None:
        """The Executor was collected without shutdown(): stop once the work is done."""
        self.shutdown(wait=False, cancel_futures=False)


class Executor(concurrent.futures.Executor):
    """``shmarray.Pool``'s semantics on a Dask cluster: a :class:`concurrent.futures.Executor`
    (``submit``, ``map``, ``shutdown``, ``with``) with ``imap`` and ``imap_unordered``, running
    each call as a task of ``client`` (a synchronous :class:`distributed.Client`).

    - ``fn``'s keyword arguments always reach ``fn`` (task options are set here, never
      per call); every call runs (``pure=False``); results are gathered straight from the
      workers (``direct_to_workers=True``).
    - ``map`` and ``imap`` stream over any iterable, holding at most a window of tasks;
      ``chunksize`` > 1 sends that many calls per task.
    - An exception raised by ``fn`` is raised by ``result()`` with the worker's traceback as
      its ``__cause__``, and is never retried. A task whose worker died fails with
      :class:`shmarray.PeerDiedError` naming it, after the cluster's own reruns
      (``distributed.scheduler.allowed-failures``) and then ``retries`` more sends of ours.
    - Arrays: SharedArrays travel by name to workers proven to share this process's /dev/shm
      (a beacon read by name, never an IP address), plain ndarrays of 256 KiB or more through
      a one-off shared segment to those workers, and both as bytes to every other worker.
      The package docstring has the table of what still differs from ``shmarray.Pool``.

    ``retries``: how many more times a task whose worker died is sent. ``max_in_flight``:
    tasks handed to the cluster at once (default: 4 per worker thread, at least 8): the rest
    wait here, where ``cancel()`` and ``shutdown(cancel_futures=True)`` can still cancel them.
    ``window``: tasks ``map``/``imap`` hold at once (default: twice ``max_in_flight``).
    ``workers``, ``allow_other_workers``, ``resources``, ``priority``: Dask's task
    placement, for every task of this executor.

    Creating one registers a worker plugin on the cluster (one round trip: workers load the
    serializers and publish their beacons) and blocks on nothing else. Methods may be called
    from several threads. ``shutdown(wait=True)`` returns once every submitted task is
    resolved; it never closes the client.
    """

    def __init__(self, client: distributed.Client, *, retries: int = 0,
                 max_in_flight: int | None = None, window: int | None = None,
                 direct_to_workers: bool = True, workers: Any = None,
                 allow_other_workers: bool = False, resources: dict[str, float] | None = None,
                 priority: int = 0) -> None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"Executor needs a distributed.Client, not {type(client).__name__}")
        if client.asynchronous:
            raise TypeError("Executor needs a synchronous distributed.Client (asynchronous=False)"
                            "; its methods block the calling thread")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        install(client)
        if max_in_flight is None:
            threads = sum(client.nthreads().values())
            max_in_flight = max(8, 4 * threads)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        if window is None:
            window = 2 * max_in_flight
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        options: dict[str, Any] = {"priority": priority}
        if workers is not None:
            options["workers"] = workers
            options["allow_other_workers"] = allow_other_workers
        if resources is not None:
            options["resources"] = resources
        self._client = client
        self._window = window
        self._core = _Core(client, retries, max_in_flight, direct_to_workers, options)
        weakref.finalize(self, _Core.release, self._core).atexit = False

    @property
    def client(self) -> distributed.Client:
        """The Dask client the tasks run on."""
        return self._client

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` on the cluster; returns a
        :class:`concurrent.futures.Future`. Never blocks on the cluster. Raises RuntimeError
        after shutdown (or once the client is closed)."""
        return self._core.submit(fn, args, kwargs, fn)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """``map(fn, *iterables)`` on the cluster: an iterator of the results in order, each
        yielded as soon as it (and those before it) arrived. The iterables are read as results
        are taken, at most ``window`` tasks ahead (any iterable, a generator included);
        ``timeout`` (seconds from this call) makes ``next()`` raise TimeoutError; an exception
        raised by ``fn`` is raised when its result is reached. ``chunksize`` > 1 sends that
        many calls per task. Closing the iterator cancels the tasks not yet handed out."""
        end_time = None if timeout is None else timeout + time.monotonic()
        return self._stream(fn, zip(*iterables), chunksize, True, end_time)

    def imap(self, fn: Callable[..., Any], iterable: Iterable[Any],
             chunksize: int = 1) -> Iterator[Any]:
        """Like ``map(fn, iterable)``: streaming, in order, at most ``window`` tasks ahead."""
        return self._stream(fn, ((x,) for x in iterable), chunksize, True, None)

    def imap_unordered(self, fn: Callable[..., Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> Iterator[Any]:
        """As imap, but results come as they finish, in any order."""
        return self._stream(fn, ((x,) for x in iterable), chunksize, False, None)

    def _stream(self, fn: Callable[..., Any], items: Iterator[tuple[Any, ...]], chunksize: int,
                ordered: bool, end_time: float | None) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        it: Iterator[Any] = items
        if chunksize > 1:
            it = iter(lambda: tuple(itertools.islice(items, chunksize)), ())

        def submit(x: Any) -> Future[Any]:
            if chunksize > 1:
                return self._core.submit(_call_chunk, (fn, x), {}, fn)
            return self._core.submit(fn, x, {}, fn)

        pending = [submit(x) for x in itertools.islice(it, self._window)]
        return window.results(pending, it, submit, chunksize > 1, ordered, end_time,
                              self._check_alive)

    def _check_alive(self) -> None:
        core = self._core
        if core.started and core.finished.is_set():
            raise shmarray.InternalError("shmarray.dask.Executor stopped with a task unresolved "
                                         "(a bug, please report it)")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; those submitted run to the end.

        ``wait``: block until every submitted task is resolved. ``cancel_futures``: cancel the
        tasks not yet handed to the cluster. Idempotent; never closes the client."""
        self._core.shutdown(wait, cancel_futures)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        """Shut down and wait; when the block raised, tasks not yet handed out are cancelled
        first."""
        self.shutdown(wait=True, cancel_futures=exc_type is not None)
        return False

    def __repr__(self) -> str:
        core = self._core
        state = "shut down" if core.stopping else "running"
        return (f"<shmarray.dask.Executor {self._client.scheduler.address if self._client.scheduler else '-'}"  # noqa: E501
                f" max_in_flight={core.max_in_flight} {state}>")

