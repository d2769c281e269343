"""Broadcast channels: one producer, many subscribers, every subscriber sees every frame.

``Channel.create(name, ..., mode="broadcast", max_subscribers=N, policy="block" | "drop")``
returns a :class:`BroadcastChannel` (the producer side: ``send``, ``send_many``, ``loan``,
``end``, ``stats``, ``control``, ``close``, ``unlink`` as for any Channel); ``Channel.open(name)``
of a broadcast channel returns one too. ``ch.subscribe()`` joins as a :class:`Subscriber` with
its own cursor (``recv``, ``recv_copy``, ``recv_into``, ``try_recv``, iteration, ``latest``,
``stats``, ``close``). A subscriber joins at the newest frame (at the first frame if it joins
before any was sent) and may join and leave while the stream runs.

Slow subscribers, chosen at create:

- ``policy="block"``: the producer reuses a slot only when every live subscriber has released
  it, so ``send`` blocks (with its timeout) while the slowest subscriber lags a full ring.
  ``recv()`` returns a zero-copy Frame lease whose view stays intact while it is held (a view
  keeps its frame, as everywhere).
- ``policy="drop"``: the producer never waits. A subscriber that falls a full ring behind skips
  to the oldest intact frame and counts what it lost in ``stats()["lost"]``. Since a slot can be
  overwritten while it is read, ``recv()``, ``recv_copy()``, ``latest()`` and iteration COPY the
  frame out and check that the copy is intact (a seqlock), so no subscriber ever sees a torn
  frame. ``recv(copy=False)`` / ``latest(copy=False)`` return a zero-copy view instead, which
  may be overwritten while you use it: call ``frame.valid()`` AFTER using it and discard what
  you computed when it returns False.

Liveness: the producer holds participant entry 0's lock (byte 1), subscriber ``i`` entry
``1 + i``'s (byte ``2 + i``). A dead subscriber is evicted by the producer (at the latest within
about 0.1 s while it sends) or by a joiner that needs its entry: it stops gating the producer
and its holds are void. A subscriber whose producer died without ``end()`` gets PeerDiedError
once every committed frame was read.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Any, Iterator

import numpy as np

from .._os.native import lib
from .._os.wait import Spin
from ..errors import ClosedError, InvalidArgumentError, LimitError, PeerDiedError, ShmArrayError
from .base import Channel
from .handle import CONSUMER, Handle, Segment
from .lease import BroadcastFrame
from .receiver import Receiver

__all__ = ["BroadcastChannel", "Subscriber", "POLICIES"]

POLICIES = {"block": lib.SHM_CHAN_POLICY_BLOCK, "drop": lib.SHM_CHAN_POLICY_DROP}
_PRODUCER = int(lib.SHM_CHAN_BCAST_PRODUCER)
_REAP_EVERY = 0.1  # seconds: how often a sending producer looks for dead subscribers


class BroadcastChannel(Channel, modes=("broadcast",)):
    """The producer side of a broadcast channel, and the handle subscribers join through
    (``subscribe()``). See the module docstring. Used by one thread at a time."""

    @classmethod
    def _layout_params(cls, mode: str, policy: str, max_participants: int,
                       max_subscribers: int) -> tuple[int, int, int]:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, not {policy!r}")
        smax = int(lib.SHM_CHAN_MAX_PARTICIPANTS) - 1
        if not 1 <= max_subscribers <= smax:
            raise InvalidArgumentError(f"max_subscribers must be 1..{smax}, not "
                                       f"{max_subscribers}")
        return int(lib.SHM_CHAN_MODE_BROADCAST), POLICIES[policy], max_subscribers + 1

    def __init__(self, seg: Segment, *, owner: bool, spin_us: float | None = None) -> None:
        super().__init__(seg, owner=owner, spin_us=spin_us)
        #: "block" or "drop"
        self.policy: str = seg.policy
        self.max_subscribers: int = seg.maxp - 1
        self._next_reap = 0.0
        self._subscribers: weakref.WeakSet[Subscriber] = weakref.WeakSet()

    def _what(self) -> str:
        return f"broadcast channel {self.name!r}"

    # -- liveness ------------------------------------------------------------------------------

    def _reap(self) -> None:
        """Evict every subscriber whose process died (its lock byte is free). Never waits on
        a lock: a byte held by anyone is alive (or being reaped)."""
        self._next_reap = time.monotonic() + _REAP_EVERY
        if self._closed:
            return
        h = self._h
        for i in range(1, self._seg.maxp):
            p = h.participant(i)
            if p is not None and int(p.state) in (lib.SHM_CHAN_ACTIVE, lib.SHM_CHAN_JOINING):
                h.reap(i)

    def _between_send(self) -> BaseException | None:
        self._reap()  # dead subscribers stop gating us; the wait then retries
        return None

    def producer_alive(self) -> tuple[bool, int]:
        """(False, pid) when a producer registered and died without end(), else (True, pid)."""
        p = self._h.participant(_PRODUCER)
        if p is None:
            return True, 0
        if int(p.state) == lib.SHM_CHAN_DEAD:
            return False, int(p.pid)
        if int(p.state) != lib.SHM_CHAN_ACTIVE:
            return True, int(p.pid)
        return self._h.reap(_PRODUCER), int(p.pid)

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(self, *, spin_us: float | None = None) -> Subscriber:
        """Join as a new subscriber (its own cursor, its own liveness lock): it starts at the
        newest frame, or at the first frame if none was sent yet. A note ``{"event": "join",
        ...}`` goes to the owner's control queue (best effort: never blocks).

        Raises LimitError when ``max_subscribers`` live subscribers are in, ClosedError."""
        self._check_open()
        sub = Subscriber(self, self._spin_us if spin_us is None else spin_us)
        self._subscribers.add(sub)
        return sub

    def _not_here(self, what: str) -> ShmArrayError:
        return LimitError(f"{self._what()} is a broadcast channel: {what} belongs to a "
                          "subscriber: sub = ch.subscribe(); sub.recv() (each subscriber sees "
                          "every frame)")

    def recv(self, timeout: float | None = None, **kw: Any) -> Any:
        """Not on the channel handle: use ``ch.subscribe().recv()``. Raises LimitError."""
        raise self._not_here("recv()")

    def try_recv(self, **kw: Any) -> Any:
        """Not on the channel handle: use ``ch.subscribe().try_recv()``."""
        raise self._not_here("try_recv()")

    def recv_copy(self, timeout: float | None = None) -> Any:
        """Not on the channel handle: use ``ch.subscribe().recv_copy()``."""
        raise self._not_here("recv_copy()")

    def recv_into(self, out: Any, timeout: float | None = None) -> Any:
        """Not on the channel handle: use ``ch.subscribe().recv_into()``."""
        raise self._not_here("recv_into()")

    def recv_many(self, max_frames: int = 64, timeout: float | None = None) -> Any:
        """Not on the channel handle: use a subscriber."""
        raise self._not_here("recv_many()")

    def __iter__(self) -> Iterator[np.ndarray[Any, Any]]:
        raise self._not_here("iteration")

    def _close_parts(self) -> None:
        for sub in list(self._subscribers):
            sub.close()


class Subscriber(Receiver):
    """One subscriber of a broadcast channel: ``sub = ch.subscribe()`` (see the module
    docstring). Its own cursor, counts and liveness lock; used by one thread at a time."""

    _frame_type = BroadcastFrame

    def __init__(self, ch: BroadcastChannel, spin_us: float | None = None) -> None:
        self._ch = ch
        self.name = ch.name
        self.policy = ch.policy
        self.capacity = ch.capacity
        self.slot_bytes = ch.slot_bytes
        self._copy_default = ch.policy == "drop"
        self._closed = False
        self._spin = Spin(None if spin_us is None else int(spin_us * 1000))
        self._rx = Handle(ch._seg, ch._what(), opener=False)
        try:
            self._rx.register(CONSUMER)
        except BaseException:
            self._rx.close()
            raise
        self._rx_ready = True
        self._index = int(self._rx.self_info().index) - 1
        self._spin.crowded(self._rx.count_active())
        self._note("join")

    def _note(self, event: str) -> None:
        """A join/leave note to the owner's control queue: best effort, never blocks."""
        try:
            self._ch.control.send({"event": event, "channel": self.name,
                                   "subscriber": self._index, "pid": os.getpid()}, timeout=0)
        except (ShmArrayError, OSError, ValueError):
            pass

    @property
    def index(self) -> int:
        """This subscriber's number among the channel's subscribers (0..max_subscribers-1)."""
        return self._index

    def _what(self) -> str:
        return f"subscriber {self._index} of broadcast channel {self.name!r}"

    def _check_open(self) -> None:
        if self._closed or self._rx.closed:
            why = "is closed" if self._closed else "belongs to the parent of this forked process"
            raise ClosedError(f"{self._what()} {why}; subscribe again "
                              f"(shmarray.Channel.open({self.name!r}).subscribe())")

    def _raise_rc(self, rc: int, op: str) -> None:
        if rc == lib.SHM_CHAN_LIMIT:
            self._recv_error(rc, op)
        self._ch._raise_rc(rc, op)

    def _between_recv(self) -> BaseException | None:
        ch = self._ch
        alive, pid = ch.producer_alive()
        if not alive:
            return PeerDiedError(
                f"the producer of broadcast channel {self.name!r} died without end() (pid "
                f"{pid}); every frame it committed was received")
        if int(self._rx.status().producers_ever) == 0 and not ch._closed:
            return ch._peer_died_before_registering(ch._h.lock_fd)
        return None

    def latest(self, timeout: float | None = 1.0, *, copy: bool | None = None) -> Any:
        """The newest complete frame, skipping the backlog (skipped frames are counted in
        stats()["skipped"], not as lost); if no frame arrived since the last one received,
        waits for the next, up to ``timeout``. ``copy`` as recv() (policy "drop" copies by
        default). Raises as recv()."""
        self._check_open()
        if copy if copy is not None else self._copy_default:
            return self._received_copy(timeout, latest=True)
        return self._take(timeout, True)

    def stats(self) -> dict[str, Any]:
        """This subscriber's counts: received, lost (frames it missed because the producer
        lapped it: policy "drop"), skipped (by latest()), invalid (zero-copy views that
        valid() found overwritten), waits, held, lag (frames published and not yet read),
        join_pos (the first frame it was owed), and the channel's ended flag."""
        self._check_open()
        me = self._rx.self_info()
        st = self._rx.status()
        p = self._rx.participant(int(me.index))
        return {
            "name": self.name, "index": self._index, "policy": self.policy,
            "received": int(me.received), "lost": int(me.lost), "skipped": int(me.skipped),
            "invalid": int(me.invalid), "waits": int(p.waits) if p is not None else 0,
            "held": int(me.held), "lag": max(0, int(st.enqueue_pos) - int(me.next)),
            "join_pos": int(me.join_pos), "ended": bool(st.eos),
        }

    def close(self) -> None:
        """Leave the channel: frames held are given back with the entry (or, while views of
        them are alive, when the last one dies), and a leave note goes to the owner's control
        queue (best effort). Idempotent; never blocks."""
        if self._closed:
            return
        self._closed = True
        self._rx_ready = False
        self._rx.close()
        if not self._ch._closed:
            self._note("leave")

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"index {self._index}"
        return f"<Subscriber of {self.name!r} policy={self.policy} {state}>"
