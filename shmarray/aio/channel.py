"""The asyncio twins of Channel, Subscriber and ControlQueue: the same channel, the same lease
objects, awaited instead of blocked on.

Each twin wraps one handle of the sync class and tries the non-blocking call first (the fast
path: no await is ever parked while frames are there); only when it would block does it arm
its doorbell and await (shmarray/aio/doorbell.py). A twin belongs to the event loop it is
first awaited in.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import partial
from typing import Any, AsyncIterator, Callable, Coroutine, TypeVar

import numpy as np

from .. import channel as _channel
from .._os.native import lib
from ..channel.lease import Loan
from ..channel.receiver import Receiver
from ..errors import StreamEnded, WaitTimeoutError, WouldBlockError
from .._os.segment import Deadline
from .._os.wait import SLICE
from .doorbell import Awaiter, await_op, readable

__all__ = ["Channel", "Subscriber", "ControlQueue", "AsyncLoan"]

T = TypeVar("T")
_DATA = lib.SHM_CHAN_WAIT_DATA
_SPACE = lib.SHM_CHAN_WAIT_SPACE
#: what the twin forwards to the sync channel as is: attributes and calls that never wait
_FORWARDED = frozenset({"name", "mode", "policy", "capacity", "slot_bytes", "max_subscribers",
                        "end", "unlink", "count_dropped"})


class _Receiving:
    """The receiving calls both twins share, over ``self._sync`` (a ring Channel or a
    Subscriber) and its receive-side awaiter ``self._rx``."""

    _sync: Any
    _rx: Awaiter
    #: the sync handle's zero-copy C step (Receiver._try_step), made on the first recv
    _step: Callable[[], Any] | None = None

    def _receiving(self, sync: Any, rx: Awaiter) -> None:
        self._sync = sync
        self._rx = rx
        self._steps = isinstance(sync, Receiver)  # a broadcast channel's handle does not
        self._failed = partial(sync._recv_error, op="recv") if self._steps else None

    async def _await_data(self, attempt: Callable[[], T], timeout: float | None) -> T:
        s = self._sync
        return await await_op(attempt, self._rx, _DATA, timeout, s._between_recv,
                              s._empty_error)

    def recv(self, timeout: float | None = None, *, copy: bool | None = None
             ) -> Coroutine[Any, Any, Any]:
        """Await the next frame: a Frame, the same lease as the sync ``recv()`` (``with await
        ch.recv() as view:``; a view keeps its frame). Waits up to ``timeout`` seconds (None:
        forever; 0: WouldBlockError at once) without blocking the loop or using a thread.
        Raises as the sync recv: StreamEnded, PeerDiedError, WaitTimeoutError, LimitError,
        ClosedError."""
        # a plain function returning the wait's coroutine (one frame less to resume on the
        # wake path); the zero-copy try is the sync receive's own step, with nothing between
        s = self._sync
        step = self._step
        if step is None and self._steps and s._rx_ready:  # registered (by an earlier call)
            step = self._step = s._try_step()
        if step is None or (copy if copy is not None else s._copy_default):
            # the sync call with timeout=0: it registers, and raises, when awaited
            return await_op(partial(s.recv, timeout=0, copy=copy), self._rx, _DATA, timeout,
                            s._between_recv, s._empty_error)
        return await_op(step, self._rx, _DATA, timeout, s._between_recv, s._empty_error,
                        self._failed)

    async def recv_copy(self, timeout: float | None = None) -> np.ndarray[Any, Any]:
        """Await the next frame as an ordinary array of your own (as the sync recv_copy)."""
        s = self._sync
        arr: np.ndarray[Any, Any] = await self._await_data(lambda: s.recv_copy(timeout=0),
                                                           timeout)
        return arr

    async def recv_into(self, out: np.ndarray[Any, Any], timeout: float | None = None) -> Any:
        """Await the next frame, copied into ``out`` (as the sync recv_into)."""
        s = self._sync
        return await self._await_data(lambda: s.recv_into(out, timeout=0), timeout)

    def try_recv(self, *, copy: bool | None = None) -> Any:
        """The next frame, or None when there is none now (never waits)."""
        return self._sync.try_recv(copy=copy)

    async def __aiter__(self) -> AsyncIterator[np.ndarray[Any, Any]]:
        """``async for view in ch:`` read-only arrays, each let go at the next step (the sync
        iteration's lifetime rule: a view kept past its step keeps its frame). Stops at end of
        stream."""
        while True:
            try:
                frame = await self.recv()
            except StreamEnded:
                return
            try:
                yield frame.array
            finally:
                frame._step()

    def stats(self) -> dict[str, Any]:
        """As the sync stats() (never waits)."""
        stats: dict[str, Any] = self._sync.stats()
        return stats


class Subscriber(_Receiving):
    """A broadcast subscriber awaited from asyncio (see shmarray.Subscriber): ``await
    sub.recv()``, ``await sub.latest()``, ``async for view in sub``."""

    def __init__(self, sync: Any) -> None:
        self._receiving(sync, Awaiter(sync._rx))

    async def latest(self, timeout: float | None = 1.0, *, copy: bool | None = None) -> Any:
        """Await the newest frame (skipping older ones), as the sync latest()."""
        s = self._sync
        return await self._await_data(lambda: s.latest(timeout=0, copy=copy), timeout)

    def close(self) -> None:
        """Leave the channel (idempotent): the doorbell FIFO goes with it."""
        self._rx.close()
        self._sync.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class AsyncLoan:
    """``async with ch.loan(shape, dtype) as out:`` awaits a free slot on entry, then behaves
    as the sync Loan (commit on a normal exit, abort on an exception). ``await ch.loan(...)``
    gives the Loan itself."""

    __slots__ = ("_ch", "_args", "_loan")

    def __init__(self, ch: Channel, args: tuple[Any, Any, float | None, int]) -> None:
        self._ch = ch
        self._args = args
        self._loan: Loan | None = None

    async def _get(self) -> Loan:
        shape, dtype, timeout, tag = self._args
        s = self._ch._sync
        loan: Loan = await self._ch._await_space(
            lambda: s.loan(shape, dtype, timeout=0, tag=tag), timeout)
        return loan

    def __await__(self) -> Any:
        return self._get().__await__()

    async def __aenter__(self) -> np.ndarray[Any, Any]:
        self._loan = await self._get()
        return self._loan.array

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        loan, self._loan = self._loan, None
        if loan is not None:
            loan.__exit__(exc_type, *exc)


class Channel(_Receiving):
    """A channel awaited from asyncio: the twin of shmarray.Channel, with the same names.

        ach = shmarray.aio.Channel.open("cam0", timeout=5.0)
        with await ach.recv(timeout=1.0) as view: ...
        async for view in ach: ...
        await ach.send(frame, tag=7)
        async with ach.loan((1080, 1920, 3), np.uint8) as out: out[...] = 0
        sub = ach.subscribe()                      # broadcast
        msg = await ach.control.recv(timeout=1.0)

    Properties and non-waiting calls (name, mode, capacity, stats, end, close, unlink, ...)
    are the sync channel's. Awaits never block the loop and use no thread; a cancelled await
    leaves nothing armed or leased."""

    def __init__(self, sync: Any) -> None:
        self._tx = Awaiter(sync._h)
        # the ring modes receive on the same handle; broadcast receives through subscribers
        self._receiving(sync, self._tx)
        self._control: ControlQueue | None = None
        self._subscribers: weakref.WeakSet[Subscriber] = weakref.WeakSet()

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> Channel:
        """As shmarray.Channel.create (same arguments; never waits)."""
        return cls(_channel.Channel.create(*args, **kwargs))

    @classmethod
    def open(cls, name: str, timeout: float | None = 0, *, spin_us: float | None = None
             ) -> Channel:
        """As shmarray.Channel.open: ``timeout=0`` (the default) raises NotFoundError at once
        when ``name`` does not exist. A timeout > 0 waits for the creator *blocking the loop*
        (in 100 ms slices): open before the loop runs, or with timeout=0 and retry."""
        return cls(_channel.Channel.open(name, timeout, spin_us=spin_us))

    def __getattr__(self, name: str) -> Any:
        # the sync channel's attributes and calls that never wait; a waiting call forwarded
        # here would block the loop, so the others are not reachable through the twin
        sync = self.__dict__.get("_sync")  # (absent while copying or unpickling)
        if sync is not None and name in _FORWARDED:
            return getattr(sync, name)
        raise AttributeError(f"shmarray.aio.Channel has no attribute {name!r}"
                             + (" (it would block the event loop: use the sync "
                                "shmarray.Channel in a thread)"
                                if sync is not None and hasattr(sync, name) else ""))

    async def _await_space(self, attempt: Callable[[], T], timeout: float | None) -> T:
        s = self._sync
        return await await_op(attempt, self._tx, _SPACE, timeout, s._between_send,
                              s._full_error)

    async def send(self, frame: Any, timeout: float | None = None, tag: int = 0) -> None:
        """Await a free slot, then copy ``frame`` in and publish it (as the sync send: one
        copy; raises FrameTooLargeError, PeerDiedError, WaitTimeoutError, ...)."""
        s = self._sync
        await self._await_space(lambda: s.send(frame, timeout=0, tag=tag), timeout)

    def loan(self, shape: Any, dtype: Any = np.uint8, timeout: float | None = None,
             tag: int = 0) -> AsyncLoan:
        """``async with ch.loan(shape, dtype) as out:`` (see AsyncLoan)."""
        return AsyncLoan(self, (shape, dtype, timeout, tag))

    def subscribe(self, *, spin_us: float | None = None) -> Subscriber:
        """Join a broadcast channel as a new subscriber, awaited from asyncio (closed with
        the channel, as the sync subscribers are)."""
        sub = Subscriber(self._sync.subscribe(spin_us=spin_us))
        self._subscribers.add(sub)
        return sub

    @property
    def control(self) -> ControlQueue:
        """The channel's control queue, awaited from asyncio."""
        if self._control is None:
            self._control = ControlQueue(self._sync.control)
        return self._control

    def _close_doorbells(self) -> None:
        for sub in list(self._subscribers):
            sub._rx.close()
        self._tx.close()

    def close(self) -> None:
        """Close this handle (idempotent; as the sync close), its subscribers and doorbells.
        An await parked on them is woken and raises ClosedError."""
        self._close_doorbells()
        self._sync.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._close_doorbells()
        self._sync.__exit__(exc_type, *exc)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        self.__exit__(exc_type, *exc)

    def __repr__(self) -> str:
        return f"<shmarray.aio {self._sync!r}>"


class ControlQueue:
    """A channel's control queue awaited from asyncio: its message-queue descriptor is
    pollable, so an await adds a reader on it and drains without blocking (no thread, no
    mq_notify)."""

    def __init__(self, sync: Any) -> None:
        self._sync = sync

    def send(self, message: dict[str, Any], priority: int = 0) -> None:
        """As the sync send, never waiting (WouldBlockError when the queue is full)."""
        self._sync.send(message, priority=priority, timeout=0)

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """Await the next message (highest priority first), as the sync recv."""
        msg: dict[str, Any] = (await self.recv_with_priority(timeout))[0]
        return msg

    async def recv_with_priority(self, timeout: float | None = None
                                 ) -> tuple[dict[str, Any], int]:
        """As recv, also returning the priority."""
        s = self._sync
        Deadline(timeout)  # the sync call's check: ValueError for a negative timeout
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            try:
                got: tuple[dict[str, Any], int] = s.recv_with_priority(timeout=0)
                return got
            except WouldBlockError:
                if timeout == 0:
                    raise
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                raise WaitTimeoutError(f"no control message for channel {s._channel!r} "
                                       f"within {timeout:g} s")
            await readable(loop, s.fileno(), min(SLICE, left) if left is not None else SLICE)
