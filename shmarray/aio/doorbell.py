"""How an asyncio waiter sleeps without a thread: a doorbell FIFO and the await loop over it.

The eventcount of the sync path (shmarray/_os/wait.py) with an fd in place of the futex: the
waiter *arms its doorbell* in the channel (a bit in its participant entry and a count in the
control block, seq_cst, in C), re-checks, and awaits its FIFO becoming readable; a poster,
after the fence it makes anyway, writes one byte to the FIFO of each armed waiter (one, in a
work queue) -- only when the count is non-zero, so a stream that keeps up still makes no system
call. The FIFO is ``/dev/shm/shmarray.<name>.<nonce>.db<participant index>`` (0600), made by
the waiter and unlinked when its handle closes; `shmarray clean` removes those a SIGKILL left.
One long-lived reader callback per FIFO drains it and wakes the current await (pyzmq's
``zmq.asyncio`` pattern). Research behind the choice (2 vCPUs): a FIFO doorbell woke an
awaiting coroutine in 23-24 us median, an eventfd passed by SCM_RIGHTS in 21-23 us, a POSIX
message queue descriptor in 27-43 us, ``run_in_executor`` in 63-66 us.

Every await sleeps in slices of at most 100 ms against its deadline, and probes the peers'
liveness between slices, exactly as the sync waits do; a cancelled await disarms on the way
out, so nothing is left armed, leased or running.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, TypeVar

from .._os import names as _names
from .._os.native import lib
from .._os.segment import Deadline
from .._os.wait import SLICE
from ..errors import WouldBlockError

__all__ = ["Doorbell", "await_op", "readable"]

T = TypeVar("T")


class Doorbell:
    """The FIFO one participant (a C handle) of a channel sleeps on, read by one loop."""

    __slots__ = ("handle", "loop", "path", "fd", "waiter")

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
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.waiter: asyncio.Future[bool] | None = None
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        _settle(self.waiter, True)

    async def wait(self, seconds: float) -> bool:
        """Sleep until rung (True) or ``seconds`` pass (False)."""
        w: asyncio.Future[bool] = self.loop.create_future()
        self.waiter = w
        timer = self.loop.call_later(seconds, _settle, w, False)
        try:
            return await w
        finally:
            timer.cancel()
            self.waiter = None

    def close(self) -> None:
        """Stop reading, close and unlink the FIFO (idempotent)."""
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


async def await_op(attempt: Callable[[], T], bell: Callable[[], Doorbell], which: int,
                   timeout: float | None, between: Callable[[], BaseException | None],
                   on_timeout: Callable[[bool], BaseException]) -> T:
    """``attempt()`` (a call with ``timeout=0``: a result, or WouldBlockError) until it gives
    a result, awaiting the doorbell of direction ``which`` (``SHM_CHAN_WAIT_DATA`` / ``SPACE``)
    between tries, for at most ``timeout`` seconds (None: forever; 0: never waits).
    ``between()`` runs after every 100 ms slice without a ring and returns the exception to
    raise (PeerDiedError) if the next try still blocks. Raises ``on_timeout(False)`` at the
    deadline."""
    try:
        return attempt()
    except WouldBlockError:
        if timeout == 0:
            raise
    deadline = Deadline(timeout)
    door = bell()
    h = door.handle.h
    while True:
        lib.shm_chan_arm_doorbell(h, which)
        try:
            try:
                return attempt()  # the re-check after arming: no ring can be missed
            except WouldBlockError:
                pass
            step = deadline.slice(SLICE)
            if step <= 0:
                raise on_timeout(False)
            woken = await door.wait(step)
        finally:
            lib.shm_chan_disarm_doorbell(h, which)
        if not woken:
            gone = between()
            try:
                return attempt()
            except WouldBlockError:
                if gone is not None:
                    raise gone from None
