"""What every channel handle stands on: the mapped segment (``Segment``) and one participant's
C handle over it (``Handle``): registration, liveness locks, peers, and the lease owner.

Liveness is the kernel's word. A handle holds open-file-description locks on bytes of the
segment file, through a descriptor of the incarnation it opened (never by path, so a handle
of an unlinked channel never locks its successor):

- byte ``1 + i`` while it owns participant entry ``i`` (producer or consumer, csrc/chan.h);
- one byte of the opener range ``[LOCK_OPEN0, LOCK_OPEN0 + MAX_OPENERS)`` while it is open, so
  that a waiter can tell "every other process that opened the channel died" from "nobody has
  come yet" (the counts of opens and clean closes live in the segment).

A dead participant's entry is recovered by whoever finds its lock free (and takes it for the
duration): its held frames are dropped and counted, its claims become tombstones (work queue),
a broadcast subscriber is evicted. Nobody ever waits on a lock another process holds.
"""

from __future__ import annotations

import mmap
import os
import random
import weakref
from typing import Any

from .._os import faults as _faults
from .._os import names as _names
from .._os import segment as _segment
from .._os.native import chan_strerror, ffi, lib, oserror
from ..errors import CorruptSegmentError, LimitError, StreamEnded

PRODUCER = lib.SHM_CHAN_ROLE_PRODUCER
CONSUMER = lib.SHM_CHAN_ROLE_CONSUMER
ROLE_NAMES = {PRODUCER: "producer", CONSUMER: "consumer"}
STATE_NAMES = {lib.SHM_CHAN_FREE: "free", lib.SHM_CHAN_JOINING: "joining",
               lib.SHM_CHAN_ACTIVE: "active", lib.SHM_CHAN_ENDED_STATE: "ended",
               lib.SHM_CHAN_DEAD: "dead"}
MODE_NAMES = {lib.SHM_CHAN_MODE_ONE_TO_ONE: "one-to-one",
              lib.SHM_CHAN_MODE_WORK_QUEUE: "work-queue",
              lib.SHM_CHAN_MODE_BROADCAST: "broadcast"}
POLICY_NAMES = {lib.SHM_CHAN_POLICY_BLOCK: "block", lib.SHM_CHAN_POLICY_DROP: "drop"}
HEADER = lib.SHM_SEG_RING_HEADER  # the channel block's offset in the segment
_LIVE = (lib.SHM_CHAN_ACTIVE, lib.SHM_CHAN_JOINING)


def _debug() -> bool:
    return os.environ.get("SHMARRAY_DEBUG", "") not in ("", "0")


def _close_fd(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


class Segment:
    """One process's view of a channel segment: the read-write mapping, a read-only mapping of
    the payload (what consumers' views are made of), the anchor descriptor of the incarnation,
    and the validated layout. Shared by every handle of the channel in this process; the
    mappings live as long as any view of them."""

    __slots__ = ("name", "nonce", "mapping", "info", "mode", "policy", "capacity", "slot_bytes",
                 "stride", "maxp", "payload_off", "rw_payload", "ro", "_ro_buf", "ro_payload",
                 "anchor_fd", "control_name", "slots", "__weakref__")

    def __init__(self, mapping: _segment.Mapping, info: Any, anchor_fd: int) -> None:
        fields = _segment.header_fields(info)
        self.name: str = fields["name"]
        self.nonce: int = fields["nonce"]
        self.mapping = mapping
        self.anchor_fd = anchor_fd
        if fields["kind"] != lib.SHM_SEG_KIND_RING:
            raise CorruptSegmentError(f"segment {self.name!r} is a shared array, not a channel: "
                                      f"attach it with shmarray.attach({self.name!r})")
        objects = fields["objects"]
        if len(objects) != 1 or not objects[0].endswith(".ctl"):
            raise CorruptSegmentError(f"channel {self.name!r} is corrupt: header field 'objects' "
                                      f"lists {objects!r}")
        self.control_name: str = objects[0]
        probe = ffi.new("shm_chan_t *")
        cinfo = ffi.new("shm_chan_info *")
        rc = lib.shm_chan_attach(probe, mapping.ptr(HEADER), mapping.size - HEADER, cinfo)
        if rc != 0:
            raise CorruptSegmentError(
                f"channel {self.name!r} is corrupt: its ring fails validation "
                f"({chan_strerror(rc)}); 'shmarray clean {self.name}' removes it if its owner is "
                "dead")
        self.info = cinfo
        self.mode: str = MODE_NAMES[int(cinfo.mode)]
        self.policy: str = POLICY_NAMES[int(cinfo.policy)]
        self.capacity: int = int(cinfo.capacity)
        self.slot_bytes: int = int(cinfo.slot_bytes)
        self.stride: int = int(cinfo.slot_stride)
        self.maxp: int = int(cinfo.max_participants)
        self.payload_off = HEADER + int(cinfo.payload_off)
        self.rw_payload = mapping.addr + self.payload_off
        # Consumers' views: a second, read-only mapping of the payload (the header, cursors
        # and slot table stay read-write in the first), so `writeable = True` is refused by
        # numpy and a write through a raw pointer faults.
        length = self.capacity * self.stride
        try:
            self.ro = mmap.mmap(anchor_fd, length, mmap.MAP_SHARED, mmap.PROT_READ,
                                offset=self.payload_off)
        except OSError as exc:
            raise oserror(exc, f"cannot map channel {self.name!r}") from exc
        self._ro_buf = ffi.from_buffer(self.ro)  # an export: the mmap cannot close under views
        self.ro_payload = int(ffi.cast("uintptr_t", self._ro_buf))
        import numpy as np

        payload = np.frombuffer(mapping.mm, np.uint8, count=length, offset=self.payload_off)
        self.slots = [payload[i * self.stride:i * self.stride + self.slot_bytes]
                      for i in range(self.capacity)]

    def __del__(self) -> None:
        _close_fd(self.anchor_fd)


_open: weakref.WeakSet[Handle] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child must not keep its parent's liveness locks alive (an OFD lock lives while
    # any descriptor of it is open), nor give back its parent's frames: drop the descriptors
    # and disable the inherited handles (their leases become stale).
    for h in list(_open):
        h.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Handle:
    """One participant's C handle (``shm_chan_t``) over a Segment: the owner of every lease it
    hands out (a lease keeps it, and so the mappings, alive). A handle is a producer or a
    consumer, registered on first use; ``opener`` handles (a Channel's, not a Subscriber's)
    also hold an opener byte while open."""

    __slots__ = ("seg", "h", "addr", "lock_fd", "opener_byte", "held_bits", "what", "closed",
                 "db_fds", "db_prefix", "__weakref__")

    def __init__(self, seg: Segment, what: str, *, opener: bool) -> None:
        self.seg = seg
        self.what = what
        self.closed = False
        self.opener_byte = -1
        self.db_fds: Any = None
        self.db_prefix: Any = None
        h = ffi.new("shm_chan_t *")
        rc = lib.shm_chan_attach(h, seg.mapping.ptr(HEADER), seg.mapping.size - HEADER, ffi.NULL)
        if rc != 0:
            raise CorruptSegmentError(f"{what} is corrupt: its ring fails validation "
                                      f"({chan_strerror(rc)})")
        if _debug():
            lib.shm_chan_set_debug(h, 1)
        # every handle can ring asyncio waiters' doorbells (shmarray.aio): a cache of their
        # FIFOs' descriptors, opened on first ring; nothing happens until one is armed
        nparts = seg.maxp
        self.db_fds = ffi.new("int[]", [-1] * nparts)
        self.db_prefix = ffi.new("char[]", _names.doorbell_prefix(seg.name, seg.nonce).encode())
        lib.shm_chan_set_doorbells(h, self.db_fds, nparts, self.db_prefix)
        self.h = h
        self.addr = int(ffi.cast("uintptr_t", h))
        self.held_bits = ffi.new("uint64_t[]", (seg.capacity + 63) // 64)
        try:
            self.lock_fd = _segment.reopen(seg.anchor_fd)
        except OSError as exc:  # EMFILE / ENFILE: a LimitError naming 'ulimit -n'
            raise oserror(exc, f"cannot open {what}") from exc
        if opener:
            self._take_opener_byte()
            lib.shm_chan_note_open(h)
        _open.add(self)

    def _take_opener_byte(self) -> None:
        n = int(lib.SHM_CHAN_MAX_OPENERS)
        base = int(lib.SHM_CHAN_LOCK_OPEN0)
        start = random.randrange(n)
        for k in range(n):
            byte = base + (start + k) % n
            got = lib.shm_seg_lock_try(self.lock_fd, byte)
            if got == 0:
                self.opener_byte = byte
                return
            if got < 0:
                raise LimitError(f"{self.what}: cannot take a liveness lock: {os.strerror(-got)}")
        raise LimitError(f"{self.what} is open in {n} handles already")

    # -- state ---------------------------------------------------------------------------------

    def self_info(self) -> Any:
        info = ffi.new("shm_chan_self_info *")
        lib.shm_chan_self(self.h, info)
        return info

    @property
    def role(self) -> int:
        info = self.self_info()
        return int(info.role) if info.registered else 0

    def participant(self, index: int) -> Any:
        """Participant entry ``index`` (a validated-state copy), or None if it is corrupt."""
        p = ffi.new("shm_chan_part_info *")
        return p if lib.shm_chan_participant(self.h, index, p) == 0 else None

    def states(self) -> list[int]:
        """The state of every participant entry (one C call)."""
        buf = ffi.new("uint32_t[]", self.seg.maxp)
        n = lib.shm_chan_states(self.h, buf, self.seg.maxp)
        return list(buf[0:max(0, n)])

    def status(self) -> Any:
        st = ffi.new("shm_chan_status_info *")
        lib.shm_chan_status(self.h, st)
        return st

    def alive(self, index: int) -> bool:
        """Whether participant ``index``'s liveness lock is held (by anyone but nobody: the
        anchor descriptor holds no lock, so it sees this process's handles too)."""
        return bool(lib.shm_seg_lock_probe(self.seg.anchor_fd, 1 + index) == 1)

    # -- registration --------------------------------------------------------------------------

    def register(self, role: int) -> None:
        """Take a participant entry for ``role`` (and its liveness lock), recovering a dead
        occupant's entry if that is what is free. Raises LimitError (table full; a live
        one-to-one peer or broadcast producer already holds the role), StreamEnded (a producer
        after end of stream)."""
        seg = self.seg
        bcast = seg.mode == "broadcast"
        if role == PRODUCER and self.status().eos:
            raise StreamEnded(f"{self.what} has ended: no producer may join it")
        if bcast and role == PRODUCER:
            candidates = [int(lib.SHM_CHAN_BCAST_PRODUCER)]
        else:
            first = 1 if bcast else 0
            # Never-used entries first: a dead participant's DEAD record is how its peers learn
            # that it died, so it is reused only when no free entry is left.
            states = self.states()[first:]
            free = [i for i, st in enumerate(states, first) if st == lib.SHM_CHAN_FREE]
            candidates = free + [i for i, st in enumerate(states, first)
                                 if st != lib.SHM_CHAN_FREE]
        for _attempt in range(4):
            for index in candidates:
                got = lib.shm_seg_lock_try(self.lock_fd, 1 + index)
                if got == 1:
                    continue
                if got < 0:
                    raise LimitError(f"{self.what}: cannot take a liveness lock: "
                                     f"{os.strerror(-got)}")
                _faults.point("channel.register")  # fault point (tests/faults)
                rc = self._register_at(index, role)
                if rc == 0:
                    return
                lib.shm_seg_lock_release(self.lock_fd, 1 + index)
                if rc == lib.SHM_CHAN_BUSY:
                    break  # the one-to-one role was taken by a live peer, or freed: retry
                if rc == lib.SHM_CHAN_ENDED:
                    raise StreamEnded(f"{self.what} has ended: no producer may join it")
                if rc == lib.SHM_CHAN_CORRUPT:
                    raise CorruptSegmentError(f"{self.what} is corrupt (register: "
                                              f"{chan_strerror(rc)})")
                raise LimitError(f"{self.what}: cannot register as {ROLE_NAMES[role]}: "
                                 f"{chan_strerror(rc)}")
            else:
                if bcast and role == PRODUCER:
                    p = self.participant(int(lib.SHM_CHAN_BCAST_PRODUCER))
                    raise LimitError(f"{self.what} already has a live producer (pid "
                                     f"{int(p.pid) if p is not None else '?'}); a broadcast "
                                     "channel has one")
                if bcast:
                    raise LimitError(f"{self.what} has {seg.maxp - 1} live subscribers already "
                                     "(create it with a larger max_subscribers)")
                raise LimitError(f"{self.what} has {seg.maxp} participants already (create it "
                                 "with a larger max_participants)")
            if seg.mode == "one-to-one":
                owner = int(lib.shm_chan_role_owner(self.h, role))
                if owner != lib.SHM_CHAN_NO_INDEX and self.reap(owner):  # alive: refuse
                    p = self.participant(owner)
                    raise LimitError(
                        f"{self.what} already has a live {ROLE_NAMES[role]} (pid "
                        f"{int(p.pid) if p is not None else '?'}); mode='one-to-one' allows one "
                        "at a time: create the channel with mode='work-queue' for several")
        raise LimitError(f"{self.what}: could not register as {ROLE_NAMES[role]}")

    def _register_at(self, index: int, role: int) -> int:
        """We hold the lock of entry ``index``: any previous occupant is dead."""
        pid = os.getpid()
        start = _segment.process_start_time(pid)
        words = len(self.held_bits)
        rc = int(lib.shm_chan_register(self.h, index, role, pid, start, self.held_bits, words))
        if rc == lib.SHM_CHAN_BUSY:
            p = self.participant(index)
            if p is not None and int(p.state) in _LIVE:
                self._recover(index)  # a dead occupant's stale entry: reclaim it, then retry
                rc = int(lib.shm_chan_register(self.h, index, role, pid, start, self.held_bits,
                                               words))
        return rc

    def _recover(self, index: int) -> None:
        """Reclaim dead participant ``index`` (its lock is held by this handle)."""
        dropped = ffi.new("uint64_t *")
        rc = lib.shm_chan_recover(self.h, index, dropped)
        if rc < 0:
            raise CorruptSegmentError(f"{self.what} is corrupt (recover a dead participant: "
                                      f"{chan_strerror(rc)})")

    def reap(self, index: int) -> bool:
        """True if participant ``index`` lives; else reclaim it (if nobody else is) -> False."""
        if self.alive(index):
            return True
        fd = self.lock_fd
        if lib.shm_seg_lock_try(fd, 1 + index) != 0:
            return True  # someone else just took it: alive (or being reclaimed)
        try:
            _faults.point("channel.recover")  # fault point (tests/faults)
            p = self.participant(index)
            if p is not None and int(p.state) in _LIVE:
                self._recover(index)
        finally:
            lib.shm_seg_lock_release(fd, 1 + index)
        return False

    def peers(self) -> tuple[dict[int, int], dict[int, int], list[int]]:
        """Probe every other participant, reclaiming dead ones: (live, dead counts by role,
        pids of the dead)."""
        live = {PRODUCER: 0, CONSUMER: 0}
        dead = {PRODUCER: 0, CONSUMER: 0}
        pids: list[int] = []
        me = int(self.self_info().index)
        for i in range(self.seg.maxp):
            if i == me:
                continue
            p = self.participant(i)
            if p is None:
                continue
            state, role = int(p.state), int(p.role)
            if role not in live:
                continue
            if state in _LIVE:
                if self.reap(i):
                    live[role] += 1
                    continue
                state = lib.SHM_CHAN_DEAD
            if state == lib.SHM_CHAN_DEAD:
                dead[role] += 1
                pids.append(int(p.pid))
        return live, dead, pids

    def others_all_died(self, opener_fd: int | None = None) -> bool:
        """Whether someone else opened the channel and every such handle vanished without a
        clean close (its opener lock is free): the peer this waiter waits for died before it
        registered. ``opener_fd``: the descriptor holding this process's opener byte (default:
        ours)."""
        st = self.status()
        others = int(st.opens) - int(st.closes) - 1
        if others <= 0:
            return False
        fd = self.lock_fd if opener_fd is None else opener_fd
        held = lib.shm_seg_lock_probe_range(fd, int(lib.SHM_CHAN_LOCK_OPEN0),
                                            int(lib.SHM_CHAN_MAX_OPENERS))
        return bool(held == 0)

    def count_active(self) -> int:
        return sum(1 for st in self.states() if st in _LIVE)

    # -- life ----------------------------------------------------------------------------------

    def forked(self) -> None:
        lib.shm_chan_forked(self.h)
        _close_fd(self.lock_fd)
        self.lock_fd = -1
        self.closed = True

    def abandon(self) -> None:
        """Leave as a dead process does: no unregistering, no clean-close count; the liveness
        and opener locks go (peers reap the entry as a dead one). Idempotent; never blocks."""
        if self.closed:
            return
        self.closed = True
        if self.opener_byte >= 0:
            lib.shm_seg_lock_release(self.lock_fd, self.opener_byte)
            self.opener_byte = -1
        self.forked()  # forget the entry here; its lock goes with the descriptor
        _open.discard(self)

    def close(self, clean: bool = True) -> None:
        """Leave: unregister now, or (a consumer whose frames are still viewed) when the last
        view dies; give up the opener byte. ``clean``: counted as a clean close (a handle
        dropped without close(), or left by an exception, counts as one that died, for peers
        waiting on a process that never registered). Idempotent; never blocks."""
        if self.closed:
            return
        self.closed = True
        _faults.point("channel.close")  # fault point (tests/faults)
        idle = lib.shm_chan_close_when_idle(self.h)
        if self.opener_byte >= 0:
            if clean:
                lib.shm_chan_note_close(self.h)
            lib.shm_seg_lock_release(self.lock_fd, self.opener_byte)
            self.opener_byte = -1
        if idle == 1:
            _close_fd(self.lock_fd)
            self.lock_fd = -1
        # else: the liveness lock stays with this object until the last lease lets it go
        _open.discard(self)

    def __del__(self) -> None:
        try:
            if not self.closed:
                self.close(clean=False)
            _close_fd(self.lock_fd)
            self.lock_fd = -1
            if self.db_fds is not None:
                for fd in self.db_fds:
                    _close_fd(int(fd))
        except Exception:
            pass


def unique_name() -> str:
    return _names.unique("chan")
