"""Blocking waits: spin briefly, then sleep on a futex word of the channel's segment.

The eventcount protocol (RING.md §3.4; csrc/chan.h): a waiter *arms* (snapshots the epoch and
increments the waiter count with a seq_cst fence, in C), re-checks, and only then sleeps on
the epoch; the other side wakes only when it sees the count non-zero after its own seq_cst
fence. So no wake-up is lost, and a stream whose consumer keeps up makes no system call per
frame.

Every wait takes ``timeout=None | 0 | seconds`` and sleeps in slices of at most 100 ms against
a monotonic deadline; between slices it lets Python run signal handlers and calls the
caller's ``between`` hook (the channel probes its peers' liveness there). The GIL is released
while spinning and while sleeping (inside the C calls).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from . import faults as _faults
from .native import lib
from .segment import Deadline

SLICE = 0.1  # seconds: the longest sleep between liveness checks
DEFAULT_SPIN_NS = 50_000  # a sleep costs ~22 us to wake here; spin about two wake latencies
NCPU = os.cpu_count() or 1


class Spin:
    """An adaptive, time-based spin budget (in the spirit of PhasedBackoff).

    After a wait that ended in a long sleep, the next spin is halved (down to none): frames
    are arriving slower than a spin can bridge, and spinning only burns CPU. A wait that was
    served within the budget restores it. A wait that sleeps takes longer than the budget
    even when the next frame came right after the spin would have ended, so every
    ``PROBE_EVERY``-th wait spins the full budget again to find out (costing at most that
    fraction of the budget in CPU while frames are slow).
    """

    __slots__ = ("max_ns", "ns", "_n")
    PROBE_EVERY = 8

    def __init__(self, max_ns: int | None = None) -> None:
        self.max_ns = DEFAULT_SPIN_NS if max_ns is None else max(0, int(max_ns))
        self.ns = self.max_ns
        self._n = 0

    def budget(self) -> int:
        """The spin budget (ns) for the next wait."""
        self._n += 1
        if self._n >= self.PROBE_EVERY:
            self._n = 0
            return self.max_ns
        return self.ns

    def crowded(self, participants: int) -> None:
        """Skip spinning when participants outnumber CPUs: a spinner would steal the CPU
        its peer needs to make progress."""
        if participants > NCPU:
            self.max_ns = 0
            self.ns = 0

    def waited(self, wait_ns: int) -> None:
        if wait_ns <= self.max_ns:
            self.ns = self.max_ns
        else:
            self.ns = self.ns // 2 if self.ns > 1000 else 0


def wait(op: Callable[[int], Any], wouldblock: int, handle: Any, which: int,
         timeout: float | None, spin: Spin, between: Callable[[], BaseException | None],
         on_timeout: Callable[[bool], BaseException]) -> Any:
    """Run ``op(spin_ns)`` until it returns something other than ``wouldblock``.

    ``op`` is called with a spin budget (ns) and spins inside C for at most that long. Then the
    waiter arms direction ``which`` of the channel ``handle`` (a ``shm_chan_t *``), re-checks
    with ``op(0)``, and sleeps on the channel's futex for one slice at a time, calling
    ``between()`` after every slice that ended without a wake: it probes the peers and returns
    the exception to raise (e.g. PeerDiedError) if ``op`` still blocks after it. Raises
    ``on_timeout(timeout == 0)`` when the deadline passes.
    """
    if timeout == 0:
        rc = op(0)
        if rc != wouldblock:
            return rc
        raise on_timeout(True)
    deadline = Deadline(timeout)
    t0 = time.monotonic_ns()
    rc = op(spin.budget())
    point = _faults.point  # fault points (tests/faults): a no-op unless SHMARRAY_FAULT is set
    while rc == wouldblock:
        point("wait.spun")
        lib.shm_chan_arm(handle, which)
        try:
            point("wait.armed")
            rc = op(0)
            if rc != wouldblock:
                break
            step = deadline.slice(SLICE)
            if step <= 0:
                raise on_timeout(False)
            point("wait.sleep")
            # OK: woken (or the epoch moved); TIMEOUT: the slice passed; INTR: a signal, whose
            # Python handler runs at the next bytecode (KeyboardInterrupt...)
            woken = lib.shm_chan_sleep(handle, which, max(1, int(step * 1e9))) == 0
            if woken:
                point("wait.woken")
        finally:
            lib.shm_chan_disarm(handle, which)
        if not woken:
            gone = between()
            rc = op(0)
            if rc == wouldblock and gone is not None:
                raise gone
            continue
        rc = op(0)
    spin.waited(time.monotonic_ns() - t0)
    return rc
