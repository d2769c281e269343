"""How an asyncio waiter sleeps without a thread: a doorbell FIFO and the await loop over it.

The eventcount of the sync path (shmarray/_os/wait.py) with an fd in place of the futex: the
waiter *arms its doorbell* in the channel (a bit in its participant entry and a count in the
control block, seq_cst, in C), re-checks, and awaits its FIFO becoming readable; a poster,
after the fence it makes anyway, consumes the announcement of every armed waiter of that
direction and writes one byte to its FIFO -- only when the count is non-zero, so a stream
that keeps up still makes no system call. (Every one, not one of several: a rung coroutine
may not take the frame, having one already or being cancelled before it runs, and a ring it
absorbed would strand the others.)

The FIFO is ``/dev/shm/shmarray.<name>.<nonce>.db<participant index>`` (0600), made by the
waiter, opened read-write (so it never reads as end-of-file when a poster goes away) and
unlinked when its handle closes; one a SIGKILL left goes with its channel or `shmarray clean`.
One long-lived reader callback per FIFO drains it and wakes the current await (pyzmq's
``zmq.asyncio`` pattern). Research behind the choice (2 vCPUs): a FIFO doorbell woke an
awaiting coroutine in 23-24 us median, an eventfd passed by SCM_RIGHTS in 21-23 us, a POSIX
message queue descriptor in 27-43 us, ``run_in_executor`` in 63-66 us (benchmarks/bench_aio.py
measures it in one run against a bare eventfd).

Every await sleeps in slices of at most 100 ms against its deadline, and probes the peers'
liveness between slices, exactly as the sync waits do; a cancelled await disarms on the way
out, so nothing is left armed, leased or running. A ring consumes the announcement (the
poster clears it before it writes, as a futex wake does), so a rung await has nothing to
withdraw on its way back; one that wakes and finds nothing arms again before it sleeps.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any, Callable, TypeVar

from .._os import names as _names
from .._os.native import lib
from .._os.segment import Deadline
from .._os.wait import SLICE
from ..errors import WouldBlockError

__all__ = ["Awaiter", "Doorbell", "await_op", "readable"]

T = TypeVar("T")


class Doorbell:
    """The FIFO one participant (a C handle) of a channel sleeps on, read by one loop."""

    __slots__ = ("handle", "loop", "path", "fd", "waiter", "bufs", "tick", "tick_when",
                 "busy")

    def __init__(self, handle: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.handle = handle
        self.loop = loop
        index = int(handle.self_info().index)  # the handle is registered by now
        seg = handle.seg
        self.path = f"{_names.doorbell_prefix(seg.name, seg.nonce)}{index}"
        try:
            os.mkfifo(self.path, 0o600)
        except FileExistsError:  # left by a killed waiter that had our index: ours now
            os.unlink(self.path)
            os.mkfifo(self.path, 0o600)
        # read-write: we hold a write end ourselves, so the FIFO never reads as end of file
        # (nor polls as hung up) when a poster that rang it goes away
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.waiter: asyncio.Future[bool] | None = None
        self.bufs = [bytearray(256)]
        #: the slice timer (see sleep_until) and when it fires (loop.time())
        self.tick: asyncio.TimerHandle | None = None
        self.tick_when = 0.0
        #: an await is in progress on this handle (one at a time: see await_op)
        self.busy = False
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        # one read drains it, into a buffer of our own (no allocation): an armed waiter is
        # rung about once per post, and a FIFO left with bytes calls back again
        try:
            rung = os.readv(self.fd, self.bufs) > 0
        except BlockingIOError:
            return
        w = self.waiter
        if rung and w is not None and not w.done():
            w.set_result(True)

    def sleep_until(self, when: float) -> asyncio.Future[bool]:
        """A future resolved True when rung, False at the latest at ``when`` (loop.time()).

        The slice timer is shared by successive waits and left running after a ring: a
        frame-paced stream then costs no timer per frame, only one per slice (100 ms); a
        wait it ends early merely runs the liveness probe sooner."""
        w: asyncio.Future[bool] = self.loop.create_future()
        self.waiter = w
        if self.tick is None or self.tick_when > when:
            self.tick_at(when)
        return w

    def tick_at(self, when: float) -> None:
        """(Re)start the slice timer to fire at ``when`` (loop.time())."""
        if self.tick is not None:
            self.tick.cancel()
        self.tick = self.loop.call_at(when, self._tick)
        self.tick_when = when

    def _tick(self) -> None:
        self.tick = None
        _settle(self.waiter, False)

    def arm(self, which: int) -> None:
        """Announce that this participant waits on its FIFO for direction ``which`` (the C
        core keeps the handle's state: arming twice is one announcement)."""
        lib.shm_chan_arm_doorbell(self.handle.h, which)

    def disarm(self, which: int) -> None:
        """Withdraw the announcement (a no-op when not armed)."""
        lib.shm_chan_disarm_doorbell(self.handle.h, which)

    def disarm_all(self) -> None:
        for which in (lib.SHM_CHAN_WAIT_DATA, lib.SHM_CHAN_WAIT_SPACE):
            self.disarm(which)

    def close(self) -> None:
        """Withdraw, stop reading, close and unlink the FIFO (idempotent). An await parked on
        it is woken: it tries again and meets the closed handle (ClosedError)."""
        _settle(self.waiter, True)
        self.disarm_all()
        if self.tick is not None:
            self.tick.cancel()
            self.tick = None
        if self.fd >= 0:
            try:
                self.loop.remove_reader(self.fd)
            except Exception:  # noqa: BLE001 - the loop may be closed already
                pass
            os.close(self.fd)
            self.fd = -1
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _settle(w: asyncio.Future[bool] | None, rung: bool) -> None:
    if w is not None and not w.done():
        w.set_result(rung)


async def readable(loop: asyncio.AbstractEventLoop, fd: int, seconds: float) -> bool:
    """Await ``fd`` becoming readable (True) or ``seconds`` passing (False)."""
    w: asyncio.Future[bool] = loop.create_future()
    loop.add_reader(fd, _settle, w, True)
    timer = loop.call_later(seconds, _settle, w, False)
    try:
        return await w
    finally:
        timer.cancel()
        loop.remove_reader(fd)


class Awaiter:
    """The doorbell of one sync handle, made on the first await that has to sleep, and
    closed with its twin: by close(), or when the twin is collected (the loop's reader keeps
    the Doorbell itself alive, so it must not outlive the registration it rings for)."""

    __slots__ = ("door", "_handle", "_loop", "_final", "__weakref__")

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.door: Doorbell | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._final: Any = None  # weakref.finalize

    def bell(self) -> Doorbell:
        loop = asyncio.get_running_loop()
        if self.door is None:
            self.door = Doorbell(self._handle, loop)
            self._loop = loop
            self._final = weakref.finalize(self, self.door.close)
        elif loop is not self._loop:
            raise RuntimeError(f"{self._handle.what}: an asyncio handle belongs to the event "
                               "loop it was first awaited in; open another handle for this one")
        return self.door

    def close(self) -> None:
        if self._final is not None:
            self._final()


async def await_op(attempt: Callable[[], T], awaiter: Awaiter, which: int,
                   timeout: float | None, between: Callable[[], BaseException | None],
                   on_timeout: Callable[[bool], BaseException],
                   failed: Callable[[Any], None] | None = None) -> T:
    """``attempt()`` (a call with ``timeout=0``: a result, or WouldBlockError) until it gives
    a result, awaiting ``awaiter``'s doorbell for direction ``which`` (``SHM_CHAN_WAIT_DATA`` /
    ``SPACE``) between tries, for at most ``timeout`` seconds (None: forever; 0: never waits).
    With ``failed``, ``attempt`` is a C step that returns an int status instead of raising,
    and ``failed(status)`` raises it (WouldBlockError included). ``between()`` runs after
    every 100 ms slice without a ring and returns the exception to raise (PeerDiedError) if
    the next try still blocks. Raises ``on_timeout(False)`` at the deadline. Returns with
    nothing armed (a ring consumed the announcement, or it is withdrawn)."""
    try:
        got = attempt()
        if failed is not None and type(got) is int:
            failed(got)
        return got
    except WouldBlockError:
        if timeout == 0:
            raise
    deadline = Deadline(timeout)
    door = awaiter.bell()
    if door.busy:
        raise RuntimeError(
            f"{door.handle.what}: another task is already awaiting this handle; a handle is "
            "awaited by one task at a time (as a sync handle is used by one thread): open "
            "another handle for each concurrent task")
    door.busy = True
    loop = door.loop
    try:
        while True:
            door.arm(which)  # again after a ring: the ring consumed the announcement
            try:
                try:
                    got = attempt()  # the re-check after arming: no ring can be missed
                    if failed is not None and type(got) is int:
                        failed(got)
                except WouldBlockError:
                    pass
                else:
                    door.disarm(which)
                    return got
                step = deadline.slice(SLICE)
                if step <= 0:
                    raise on_timeout(False)
                # sleep until rung (True) or the slice passes (False), awaited here rather
                # than in a coroutine of its own: one frame less to resume on the wake path
                try:
                    woken = await door.sleep_until(loop.time() + step)
                finally:
                    door.waiter = None
                gone = None if woken else between()
                try:
                    got = attempt()  # rung: the frame (or the slot) is there, as a rule
                    if failed is not None and type(got) is int:
                        failed(got)
                except WouldBlockError:
                    if gone is not None:
                        raise gone from None
                    continue  # arm again and sleep
            except BaseException:  # a timeout, a peer's death, a cancellation: nothing armed
                door.disarm(which)
                raise
            if not woken:  # the slice ended the sleep: the announcement is still there
                door.disarm(which)
            # (rung: consumed by the ring; a ring left over from an earlier wait may have
            # woken this one instead, leaving its announcement to the next post's one ring)
            return got
    finally:
        door.busy = False
