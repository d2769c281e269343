"""Broadcast channels: one producer, many subscribers, every subscriber sees every frame.

``Channel.create(name, ..., mode="broadcast", max_subscribers=N, policy="block" | "drop")``
returns a :class:`BroadcastChannel` (the producer side: ``send``, ``loan``, ``end``,
``stats``, ``control``, ``close``, ``unlink`` as for any Channel); ``Channel.open(name)`` of a
broadcast segment returns one too. ``ch.subscribe()`` joins as a :class:`Subscriber` with its
own cursor (``recv``, ``recv_copy``, ``recv_into``, ``try_recv``, iteration, ``latest``,
``stats``, ``close``). A subscriber joins at the newest frame (at the first frame if it joins
before any was sent) and may join and leave while the stream runs.

Slow subscribers, chosen at create:

- ``policy="block"``: the producer reuses a slot only when every live subscriber has released
  it, so ``send`` blocks (with its timeout) while the slowest subscriber lags a full ring.
  ``recv()`` returns a zero-copy Frame lease whose view stays intact until released.
- ``policy="drop"``: the producer never waits. A subscriber that falls a full ring behind skips
  to the oldest intact frame and counts what it lost in ``stats()["lost"]``. Since a slot can be
  overwritten while it is read, ``recv()``, ``recv_copy()``, ``latest()`` and iteration COPY the
  frame out and check that the copy is intact (a seqlock), so no subscriber ever sees a torn
  frame. ``recv(copy=False)`` / ``latest(copy=False)`` return a zero-copy view instead, which
  may be overwritten while you use it: call ``frame.valid()`` AFTER using it and discard what
  you computed when it returns False.

Waiting is a futex on a word of the segment, waited inside the C call (the GIL is released):
spin briefly, then sleep in slices of at most 100 ms; between slices a subscriber checks that
the producer lives (a producer that died without ``end()`` gives PeerDiedError once every
committed frame was read) and a blocked producer evicts dead subscribers. Liveness is the
kernel's word: each participant holds an open-file-description lock on its own byte of the
segment (producer: byte 1, subscriber i: byte 2 + i). A dead subscriber is evicted by the
producer (at the latest within about 0.1 s while it sends) or by a joiner that needs its
entry: it stops gating the producer and its holds are void.

Nothing but the segment and the control queue exists per channel: no semaphores.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Any, Iterator, cast

import numpy as np
import posix_ipc

from . import _names, _registry, _segment
from ._native import ffi, lib
from ._signal import Spin, wait
from .channel import _DTYPE_OF, Channel, Frame, Loan, _as_array, _dtype_code
from .control import DEFAULT_MESSAGE_SIZE, DEFAULT_MESSAGES, ControlQueue
from .errors import (
    ClosedError,
    CorruptSegmentError,
    FrameTooLargeError,
    InternalError,
    LimitError,
    PeerDiedError,
    ShmArrayError,
    StreamEnded,
    WaitTimeoutError,
    WouldBlockError,
)

__all__ = ["BroadcastChannel", "BroadcastFrame", "Subscriber", "POLICIES"]

POLICIES = {"block": lib.SHM_BCAST_POLICY_BLOCK, "drop": lib.SHM_BCAST_POLICY_DROP}
_POLICY_NAMES = {v: k for k, v in POLICIES.items()}
#: Bumped whenever csrc/bcast.* and this module must change together.
BCAST_ABI_VERSION = 1
if int(lib.shm_bcast_abi_version()) != BCAST_ABI_VERSION:  # pragma: no cover
    raise InternalError(f"shmarray._ring has broadcast ABI {int(lib.shm_bcast_abi_version())}, "
                        f"the Python package expects {BCAST_ABI_VERSION}: reinstall shmarray")
_HEADER = lib.SHM_SEG_RING_HEADER
_EMPTY = lib.SHM_BCAST_EMPTY
_FULL = lib.SHM_BCAST_FULL
_ENDED = lib.SHM_BCAST_ENDED
_LIMIT = lib.SHM_BCAST_LIMIT
_RESIZE = lib.SHM_BCAST_RESIZE
_TIMEOUT = lib.SHM_BCAST_TIMEOUT
_CORRUPT = lib.SHM_BCAST_CORRUPT
_FREE = lib.SHM_BCAST_FREE
_JOINING = lib.SHM_BCAST_JOINING
_ACTIVE = lib.SHM_BCAST_ACTIVE
_ENDED_STATE = lib.SHM_BCAST_ENDED_STATE
_DATA = lib.SHM_BCAST_WAIT_DATA
_SPACE = lib.SHM_BCAST_WAIT_SPACE
_LOCK_PRODUCER = lib.SHM_BCAST_LOCK_PRODUCER
_LOCK_SUB0 = lib.SHM_BCAST_LOCK_SUB0
_REAP_EVERY = 0.1  # seconds: how often a sending producer looks for dead subscribers
_MAX_SCHEMAS = 64
_NULL = ffi.NULL
_recv_c = lib.shm_bcast_recv
_latest_c = lib.shm_bcast_latest
_send_c = lib.shm_bcast_send
_release_c = lib.shm_bcast_release
_from_buffer = ffi.from_buffer
_monotonic = time.monotonic


def _strerror(rc: int) -> str:
    return str(ffi.string(lib.shm_bcast_strerror(rc)).decode())


class _Futex:
    """What _signal.wait sleeps on: a futex on the segment's epoch word for ``which``, waited
    inside the C call. ``acquire(timeout)`` raises posix_ipc.BusyError on expiry, like a
    semaphore; a wake (or a signal) returns, and the caller re-checks."""

    __slots__ = ("_h", "_which")

    def __init__(self, h: Any, which: int) -> None:
        self._h = h
        self._which = which

    def acquire(self, timeout: float) -> None:
        rc = lib.shm_bcast_sleep(self._h, self._which, max(1, int(timeout * 1e9)))
        if rc == _TIMEOUT:
            raise posix_ipc.BusyError("futex wait timed out")


_open_objects: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child must not keep its parent's liveness locks alive (an OFD lock lives while
    # any descriptor of it is open): drop the descriptors and disable the inherited objects.
    for obj in list(_open_objects):
        obj._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_fd(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


class BroadcastFrame(Frame):
    """A frame received from a broadcast channel (see Frame): ``seq``, ``timestamp_ns``,
    ``tag``, ``array``; ``with frame as view:``; ``release()``.

    ``valid()`` says whether the frame is still intact in its slot. It is always True for a
    copy (policy "drop" by default) and for a held view under policy "block"; a zero-copy view
    under policy "drop" (``recv(copy=False)``) must be checked AFTER use: False means the
    producer overwrote the slot meanwhile, and what was read from it must be discarded.
    """

    __slots__ = ("_sub", "_counted", "copied")

    def __init__(self, sub: Subscriber | None, slot: int, seq: int, timestamp_ns: int,
                 tag: int, array: np.ndarray, copied: bool) -> None:  # type: ignore[type-arg]
        # Frame's fields, set here directly (the hot path); a copy holds no slot: it starts
        # out released
        self._ch = None if copied else cast(Any, sub)
        self._slot = slot
        self.seq = seq
        self.timestamp_ns = timestamp_ns
        self.tag = tag
        self.array = array
        self._sub = sub
        self._counted = False
        #: True when ``array`` is a private copy (yours to keep)
        self.copied = copied

    def valid(self) -> bool:
        """True while the frame is intact (see the class docstring). Never blocks."""
        sub = self._sub
        if self.copied or sub is None or not sub._drop:
            return True
        if not sub._closed and lib.shm_bcast_valid(sub._h, self._slot, self.seq):
            return True
        if not self._counted:  # once per frame, in the subscriber's stats()["invalid"]
            self._counted = True
            sub._invalid += 1
        return False

    def __repr__(self) -> str:
        kind = "copy" if self.copied else ("released" if self.released else "held")
        return (f"<BroadcastFrame seq={self.seq} {self.array.dtype}{list(self.array.shape)} "
                f"tag={self.tag} {kind}>")


class BroadcastChannel(Channel):
    """The producer side of a broadcast channel, and the handle subscribers join through
    (``subscribe()``). See the module docstring. Handles are not thread-safe."""

    mode = "broadcast"

    # ------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def create(cls, name: str | None = None, slot_bytes: int = 1 << 20,  # type: ignore[override]
               capacity: int = 8, mode: str = "broadcast", *, max_subscribers: int = 8,
               policy: str = "block", perm: int = 0o600,
               control_messages: int = DEFAULT_MESSAGES,
               control_message_size: int = DEFAULT_MESSAGE_SIZE,
               spin_us: float | None = None) -> BroadcastChannel:
        """Create broadcast channel ``name`` (a unique name if None), owned by this process:
        unlinked at ``unlink()``, at the end of a ``with`` block, or at exit.

        ``slot_bytes`` is the largest frame; ``capacity`` (a power of two >= 2) the number of
        slots; ``max_subscribers`` (1..1024) the most subscribers at once; ``policy`` "block"
        (the producer waits for the slowest live subscriber) or "drop" (it never waits; lapped
        subscribers skip and count their losses). Pages are reserved at create. Does not block.

        Raises ExistsError, LimitError (/dev/shm, message-queue limits), InvalidNameError,
        ValueError (bad sizes or policy).
        """
        if mode != "broadcast":
            raise ValueError(f"BroadcastChannel.create: mode must be 'broadcast', not {mode!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, not {policy!r}")
        if name is None:
            name = _names.unique("bcast")
        _names.validate(name)
        if capacity < 2 or capacity & (capacity - 1) or capacity > lib.SHM_BCAST_MAX_CAPACITY:
            raise ValueError(f"capacity must be a power of two in 2..{lib.SHM_BCAST_MAX_CAPACITY},"
                             f" not {capacity}")
        if not 1 <= slot_bytes <= lib.SHM_BCAST_MAX_SLOT_BYTES:
            raise ValueError(f"slot_bytes must be 1..{lib.SHM_BCAST_MAX_SLOT_BYTES}, "
                             f"not {slot_bytes}")
        if not 1 <= max_subscribers <= lib.SHM_BCAST_MAX_SUBSCRIBERS:
            raise ValueError(f"max_subscribers must be 1..{lib.SHM_BCAST_MAX_SUBSCRIBERS}, "
                             f"not {max_subscribers}")
        params = ffi.new("shm_bcast_params *")
        params.policy = POLICIES[policy]
        params.capacity = capacity
        params.max_subscribers = max_subscribers
        params.slot_bytes = slot_bytes
        ring_len = int(lib.shm_bcast_size(params))
        if ring_len == 0:
            raise ValueError(f"channel {name!r}: the broadcast parameters are out of range")
        size = _HEADER + ring_len

        def init(mapping: _segment.Mapping, nonce: int) -> None:
            ctl = _names.sub_object(name, nonce, "ctl")
            info = ffi.new("shm_seg_info *")
            info.kind = lib.SHM_SEG_KIND_BCAST
            info.total_size = size
            info.creator_pid = os.getpid()
            info.mode = perm
            info.creator_start = _segment.process_start_time(os.getpid())
            info.created_ns = time.time_ns()
            info.nonce = nonce
            info.name = name.encode()
            info.objects = ctl.encode()
            info.objects_len = len(ctl)
            rc = lib.shm_seg_write(mapping.ptr(), mapping.size, info)
            if rc != 0:
                raise InternalError(f"channel {name!r}: cannot write its header (rc {rc})")
            rc = lib.shm_bcast_format(mapping.ptr(_HEADER), ring_len, params)
            if rc != 0:
                raise InternalError(f"channel {name!r}: cannot format its ring: {_strerror(rc)}")
            ControlQueue(ctl, name, create=True, mode=perm, max_messages=control_messages,
                         max_message_size=control_message_size).close()
            lib.shm_seg_publish(mapping.ptr())

        mapping, _nonce = _segment.create(name, size, mode=perm, reserve=True, init=init)
        rc, info = _segment.read_header(mapping)
        if rc != 0:
            raise InternalError(f"channel {name!r}: its own header fails validation (rc {rc})")
        return cls(mapping, info, owner=True, spin_us=spin_us)

    @classmethod
    def open(cls, name: str, timeout: float | None = None, *,
             spin_us: float | None = None) -> BroadcastChannel:
        """Open broadcast channel ``name`` (``Channel.open`` does the same for any channel).

        Blocks until the channel exists and its creator has finished it, up to ``timeout``.
        Raises NotFoundError, AccessDeniedError, CorruptSegmentError."""
        mapping, info = _segment.open_mapping(name, False, timeout, "channel")
        return cls(mapping, info, owner=False, spin_us=spin_us)

    def __init__(self, mapping: _segment.Mapping, info: Any, *, owner: bool,
                 spin_us: float | None = None) -> None:
        fields = _segment.header_fields(info)
        self.name: str = fields["name"]
        if fields["kind"] != lib.SHM_SEG_KIND_BCAST:
            what = "a shared array" if fields["kind"] == lib.SHM_SEG_KIND_ARRAY else \
                "a one-to-one or work-queue channel"
            raise CorruptSegmentError(f"segment {self.name!r} is {what}, not a broadcast "
                                      f"channel: open it with shmarray.Channel.open or attach")
        self._nonce: int = fields["nonce"]
        self._owner_pid = os.getpid() if owner else 0
        self._mapping = mapping
        objects = fields["objects"]
        if len(objects) != 1 or not objects[0].endswith(".ctl"):
            raise CorruptSegmentError(f"channel {self.name!r} is corrupt: header field 'objects' "
                                      f"lists {objects!r}")
        self._objects = objects
        h = ffi.new("shm_bcast_t *")
        binfo = ffi.new("shm_bcast_info *")
        rc = lib.shm_bcast_attach(h, mapping.ptr(_HEADER), mapping.size - _HEADER, binfo)
        if rc != 0:
            raise CorruptSegmentError(
                f"channel {self.name!r} is corrupt: its broadcast ring fails validation "
                f"({_strerror(rc)}); 'shmarray clean {self.name}' removes it if its owner is "
                "dead")
        self._h = h
        self._binfo = binfo
        self.policy: str = _POLICY_NAMES[int(binfo.policy)]
        self._drop = self.policy == "drop"
        self.capacity: int = int(binfo.capacity)
        self.slot_bytes: int = int(binfo.slot_bytes)
        self.max_subscribers: int = int(binfo.max_subscribers)
        stride = int(binfo.slot_stride)
        base = _HEADER + int(binfo.payload_off)
        payload = np.frombuffer(mapping.mm, np.uint8, count=self.capacity * stride, offset=base)
        self._slots = [payload[i * stride:i * stride + self.slot_bytes]
                       for i in range(self.capacity)]
        self._path = _names.segment_path(self.name)
        # Probing never locks, so it sees every holder, this process's included.
        self._probe_fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self._lock_fd = -1  # the producer's, once registered
        self._evict_fd = -1
        self._control: ControlQueue | None = None
        self._producer = False
        self._closed = False
        self._ended = False
        self._loaned = False
        self._loan_views: dict[tuple[str, tuple[int, ...]], list[Any]] = {}
        self._send_key: tuple[Any, ...] = ()
        self._send_nbytes = 0
        self._shape_buf = ffi.new("uint64_t[8]")
        self._sinfo = ffi.new("shm_bcast_sub_info *")
        self._status = ffi.new("shm_bcast_status_info *")
        self._sent = 0
        self._waits = 0
        self._evicted = 0
        self._next_reap = 0.0
        self._spin_us = spin_us
        self._spin = Spin(None if spin_us is None else int(spin_us * 1000))
        self._space = _Futex(h, _SPACE)
        self._subscribers: weakref.WeakSet[Subscriber] = weakref.WeakSet()
        _open_objects.add(self)

    # ------------------------------------------------------------------------------------------
    # participants and liveness

    def _what(self) -> str:
        return f"broadcast channel {self.name!r}"

    def _open_lock_fd(self) -> int:
        try:
            return os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            from ._native import oserror

            raise oserror(exc, f"{self._what()}: cannot open its segment") from exc

    def _register_producer(self) -> None:
        self._check_open()
        lib.shm_bcast_status(self._h, self._status)
        if self._status.eos:
            raise StreamEnded(f"{self._what()} has ended: no producer may join it")
        fd = self._open_lock_fd()
        got = lib.shm_seg_lock_try(fd, _LOCK_PRODUCER)
        if got != 0:
            _close_fd(fd)
            if got < 0:
                raise LimitError(f"{self._what()}: cannot take a liveness lock: "
                                 f"{os.strerror(-got)}")
            lib.shm_bcast_status(self._h, self._status)
            raise LimitError(f"{self._what()} already has a live producer (pid "
                             f"{int(self._status.prod_pid)}); a broadcast channel has one")
        pid = os.getpid()
        rc = lib.shm_bcast_register(self._h, pid, _segment.process_start_time(pid))
        if rc != 0:
            _close_fd(fd)
            if rc == _ENDED:
                raise StreamEnded(f"{self._what()} has ended: no producer may join it")
            self._raise_rc(rc, "register")
        self._lock_fd = fd
        self._producer = True
        self._spin.crowded(1 + self._count_subscribers())

    def _count_subscribers(self) -> int:
        n = 0
        for i in range(self.max_subscribers):
            if lib.shm_bcast_subscriber(self._h, i, self._sinfo) == 0 and \
                    int(self._sinfo.state) != _FREE:
                n += 1
        return n

    def _reap(self) -> int:
        """Evict every subscriber whose process died (its lock byte is free); returns how many.
        Never waits on a lock: a byte held by anyone is alive (or being reaped)."""
        if self._closed:
            return 0
        n = 0
        for i in range(self.max_subscribers):
            if lib.shm_bcast_subscriber(self._h, i, self._sinfo) != 0 or \
                    int(self._sinfo.state) == _FREE:
                continue
            if lib.shm_seg_lock_probe(self._probe_fd, _LOCK_SUB0 + i) != 0:
                continue  # held (alive), or cannot tell
            if self._evict_fd < 0:
                self._evict_fd = self._open_lock_fd()
            fd = self._evict_fd
            if lib.shm_seg_lock_try(fd, _LOCK_SUB0 + i) != 0:
                continue  # just taken by a joiner or another reaper
            try:
                n += max(0, int(lib.shm_bcast_evict(self._h, i)))
            finally:
                lib.shm_seg_lock_release(fd, _LOCK_SUB0 + i)
        self._evicted += n
        self._next_reap = _monotonic() + _REAP_EVERY
        return n

    def _producer_alive(self) -> tuple[bool, int]:
        """(False, pid) when a producer registered and died without end(), else (True, pid)."""
        lib.shm_bcast_status(self._h, self._status)
        st, pid = int(self._status.prod_state), int(self._status.prod_pid)
        if st != _ACTIVE:
            return True, pid
        held = lib.shm_seg_lock_probe(self._probe_fd, _LOCK_PRODUCER)
        return held != 0, pid

    def _raise_rc(self, rc: int, op: str) -> None:
        msg = _strerror(rc)
        if rc in (_CORRUPT, lib.SHM_BCAST_BUSY):
            raise CorruptSegmentError(f"{self._what()} is corrupt ({op}: {msg}); 'shmarray "
                                      f"clean {self.name}' removes it once its owner is dead")
        if rc == lib.SHM_BCAST_TOO_LARGE:
            raise FrameTooLargeError(f"{self._what()}: {op}: {msg}")
        if rc == _ENDED:
            raise StreamEnded(f"{self._what()}: end of stream")
        raise InternalError(f"{self._what()}: {op} failed: {msg} (rc {rc})")

    # ------------------------------------------------------------------------------------------
    # producer side

    def _set_schema(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> int:
        if len(shape) > lib.SHM_BCAST_MAX_NDIM:
            raise ValueError(f"{len(shape)} dimensions; a channel frame has at most "
                             f"{lib.SHM_BCAST_MAX_NDIM}")
        code = _dtype_code(dtype)
        buf = self._shape_buf
        for i, s in enumerate(shape):
            buf[i] = s
        nbytes = int(lib.shm_bcast_set_schema(self._h, code, len(shape), buf))
        if nbytes < 0:
            if nbytes == lib.SHM_BCAST_TOO_LARGE:
                size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                raise FrameTooLargeError(
                    f"a frame of {size:,} bytes ({dtype}{list(shape)}) does not fit the "
                    f"{self.slot_bytes:,}-byte slots of {self._what()}: create the channel "
                    "with a larger slot_bytes")
            self._raise_rc(nbytes, "set the frame schema")
        return nbytes

    def _full_error(self, immediate: bool) -> BaseException:
        if immediate:
            return WouldBlockError(f"{self._what()} is full ({self.capacity} frames): a "
                                   "subscriber has not released the oldest frame")
        return WaitTimeoutError(f"{self._what()} stayed full: a subscriber did not release the "
                                "oldest frame in time (policy 'block' waits for the slowest)")

    def _between_send(self) -> BaseException | None:
        self._reap()  # dead subscribers stop gating us; the wait then retries
        return None

    def _after_commit(self) -> None:
        self._sent += 1
        if _monotonic() >= self._next_reap:
            self._reap()

    def send(self, frame: Any, timeout: float | None = None, tag: int = 0) -> None:
        """Copy ``frame`` (any array or buffer) into a slot and publish it to every subscriber.

        Policy "block": blocks while the slowest live subscriber still holds the slot, up to
        ``timeout`` (None: forever; 0: WouldBlockError; expiry: WaitTimeoutError); dead
        subscribers are evicted meanwhile. Policy "drop": never blocks. Raises
        FrameTooLargeError, StreamEnded (this handle called end()), TypeError (a dtype channels
        cannot carry), LimitError (another live producer)."""
        if not self._producer:
            self._register_producer()
        arr = frame if type(frame) is np.ndarray else _as_array(frame)
        key = (arr.dtype, arr.shape)
        if key != self._send_key:
            self._send_nbytes = self._set_schema(arr.dtype, arr.shape)
            self._send_key = key
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        src = _from_buffer(arr)
        rc = _send_c(self._h, src, self._send_nbytes, tag, 0)
        if rc < 0:
            if rc != _FULL:
                self._raise_rc(rc, "send")
            h, n = self._h, self._send_nbytes
            self._waits += 1
            rc = wait(lambda spin: int(_send_c(h, src, n, tag, spin)), _FULL,
                      lambda: lib.shm_bcast_arm(h, _SPACE),
                      lambda: lib.shm_bcast_disarm(h, _SPACE),
                      self._space, timeout, self._spin, self._between_send, self._full_error)
            if rc < 0:
                self._raise_rc(rc, "send")
        self._after_commit()

    def send_many(self, frames: Any, timeout: float | None = None, tag: int = 0) -> None:
        """Send each row of ``frames`` as its own frame (frame i tagged ``tag + i``), in
        order. Blocks and raises as send() (for each frame)."""
        arr = _as_array(frames)
        if arr.ndim < 1:
            raise ValueError("send_many needs an array of frames (one per row), not a 0-d array")
        for i in range(int(arr.shape[0])):
            self.send(arr[i], timeout, (tag + i) & 0xFFFFFFFFFFFFFFFF)

    def loan(self, shape: Any, dtype: Any = np.uint8, timeout: float | None = None,
             tag: int = 0) -> Loan:
        """Loan a slot as a writable ``dtype`` array of ``shape`` to fill in place (zero
        copy): ``with ch.loan(shape, dtype) as out: out[...] = ...`` publishes it at the end
        of the block, or aborts on an exception. One loan at a time per handle. Under policy
        "drop" the slot's previous frame is gone from the moment of the loan.

        Blocks and raises as send()."""
        if not self._producer:
            self._register_producer()
        if self._loaned:
            raise LimitError(f"{self._what()}: this handle already has a loan outstanding; "
                             "commit or abort it first (one loan at a time per handle)")
        dt = np.dtype(dtype)
        shp = ((int(shape),) if isinstance(shape, (int, np.integer))
               else tuple(int(s) for s in shape))
        key = (dt.str, shp)
        views = self._loan_views.get(key)
        if views is None:
            if len(self._loan_views) >= _MAX_SCHEMAS:
                self._loan_views.clear()
            views = self._loan_views[key] = [None] * self.capacity
        nbytes = self._set_schema(dt, shp)  # every loan: send() may have set another schema
        self._send_key = ()
        h = self._h
        slot = int(lib.shm_bcast_claim(h, 0))
        if slot < 0:
            if slot != _FULL:
                self._raise_rc(slot, "loan")
            self._waits += 1
            slot = wait(lambda spin: int(lib.shm_bcast_claim(h, spin)), _FULL,
                        lambda: lib.shm_bcast_arm(h, _SPACE),
                        lambda: lib.shm_bcast_disarm(h, _SPACE),
                        self._space, timeout, self._spin, self._between_send, self._full_error)
            if slot < 0:
                self._raise_rc(slot, "loan")
        view = views[slot]
        if view is None:
            view = views[slot] = self._slots[slot][:nbytes].view(dt).reshape(shp)
        self._loaned = True
        return Loan(self, view, tag)

    def _commit(self, tag: int) -> None:
        self._loaned = False
        self._check_open()
        rc = lib.shm_bcast_commit(self._h, tag)
        if rc < 0:
            self._raise_rc(rc, "commit")
        self._after_commit()

    def _abort(self) -> None:
        self._loaned = False
        if not self._closed:
            lib.shm_bcast_abort(self._h)

    def end(self) -> None:
        """End of stream (sticky): every subscriber's recv() raises StreamEnded once it has
        read every frame it is owed, and iteration stops. Never blocks."""
        if not self._producer:
            self._register_producer()
        if self._loaned:
            raise LimitError(f"{self._what()}: commit or abort the outstanding loan before end()")
        rc = lib.shm_bcast_end(self._h)
        if rc < 0:
            self._raise_rc(rc, "end")
        self._ended = True

    # ------------------------------------------------------------------------------------------
    # subscribers

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

    def recv(self, timeout: float | None = None) -> Frame:
        """Not on the channel handle: use ``ch.subscribe().recv()``. Raises LimitError."""
        raise self._not_here("recv()")

    def try_recv(self) -> Frame | None:
        """Not on the channel handle: use ``ch.subscribe().try_recv()``."""
        raise self._not_here("try_recv()")

    def recv_copy(self, timeout: float | None = None) -> np.ndarray:  # type: ignore[type-arg]
        """Not on the channel handle: use ``ch.subscribe().recv_copy()``."""
        raise self._not_here("recv_copy()")

    def recv_into(self, out: np.ndarray, timeout: float | None = None) -> Frame:  # type: ignore[type-arg]
        """Not on the channel handle: use ``ch.subscribe().recv_into()``."""
        raise self._not_here("recv_into()")

    def recv_many(self, max_frames: int = 64, timeout: float | None = None) -> Any:
        """Not on the channel handle: use a subscriber."""
        raise self._not_here("recv_many()")

    def __iter__(self) -> Iterator[np.ndarray]:  # type: ignore[type-arg]
        raise self._not_here("iteration")

    # ------------------------------------------------------------------------------------------
    # the rest

    @property
    def control(self) -> ControlQueue:
        """The channel's control queue (the owner's inbox); opened on first use."""
        self._check_open()
        if self._control is None:
            self._control = ControlQueue(self._objects[0], self.name)
        return self._control

    def _subscriber_rows(self) -> list[dict[str, Any]]:
        lib.shm_bcast_status(self._h, self._status)
        head = int(self._status.head)
        mine = {s._index for s in list(self._subscribers) if not s._closed}
        rows = []
        si = self._sinfo
        for i in range(self.max_subscribers):
            if lib.shm_bcast_subscriber(self._h, i, si) != 0 or int(si.state) == _FREE:
                continue
            alive = lib.shm_seg_lock_probe(self._probe_fd, _LOCK_SUB0 + i) == 1
            cursor = int(si.cursor)
            rows.append({"index": i, "pid": int(si.pid), "alive": bool(alive),
                         "state": "joining" if int(si.state) == _JOINING else "active",
                         "received": int(si.received), "lost": int(si.lost),
                         "skipped": int(si.skipped),
                         "lag": max(0, min(head - cursor, 1 << 62)), "self": i in mine})
        return rows

    def stats(self) -> dict[str, Any]:
        """Counters: this handle's (sent, waits, evicted) and the channel's (committed, fill:
        frames the slowest live subscriber has not released, ended, evicted, joins) with every
        subscriber's counts and liveness. Evicts dead subscribers first."""
        self._check_open()
        self._reap()
        subs = self._subscriber_rows()
        st = self._status
        head = int(st.head)
        live = [s["lag"] for s in subs if s["alive"]]
        prod_state = int(st.prod_state)
        prod_alive = prod_state == _ACTIVE and (
            self._producer or lib.shm_seg_lock_probe(self._probe_fd, _LOCK_PRODUCER) == 1)
        return {
            "name": self.name, "mode": "broadcast", "policy": self.policy,
            "capacity": self.capacity, "slot_bytes": self.slot_bytes,
            "max_subscribers": self.max_subscribers,
            "role": "producer" if self._producer else "none",
            "sent": self._sent, "waits": self._waits, "evicted_here": self._evicted,
            "committed": head, "fill": min(max(live, default=0), self.capacity),
            "ended": bool(st.eos), "evicted": int(st.evicted), "joins": int(st.joins),
            "producer": {"pid": int(st.prod_pid), "alive": bool(prod_alive),
                         "state": {_FREE: "none", _ACTIVE: "active",
                                   _ENDED_STATE: "ended"}.get(prod_state, "?")},
            "subscribers": subs,
        }

    def _forked(self) -> None:
        for fd in (self._lock_fd, self._evict_fd, self._probe_fd):
            _close_fd(fd)
        self._lock_fd = self._evict_fd = self._probe_fd = -1
        self._closed = True
        self._producer = False

    def close(self) -> None:
        """Leave the channel: the producer role is given up (an outstanding loan aborted; the
        stream does not end: call end() for that), this handle's subscribers are closed, and
        this process's descriptors are closed. The channel lives on until unlink(). Views stay
        mapped (never a segfault). Idempotent; never blocks."""
        if self._closed:
            return
        for sub in list(self._subscribers):
            sub.close()
        if self._producer:
            lib.shm_bcast_unregister(self._h)
            self._producer = False
        self._closed = True
        if self._control is not None:
            self._control.close()
        for fd in (self._lock_fd, self._evict_fd, self._probe_fd):
            _close_fd(fd)
        self._lock_fd = self._evict_fd = self._probe_fd = -1
        _open_objects.discard(self)

    def __enter__(self) -> BroadcastChannel:
        return self

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("producer" if self._producer else "unregistered")
        return (f"<BroadcastChannel {self.name!r} policy={self.policy} capacity={self.capacity} "
                f"slot_bytes={self.slot_bytes} {state}>")


class Subscriber:
    """One subscriber of a broadcast channel: ``sub = ch.subscribe()`` (see the module
    docstring). Its own cursor, counts and liveness lock; not thread-safe."""

    def __init__(self, ch: BroadcastChannel, spin_us: float | None = None) -> None:
        self._ch = ch
        self.name = ch.name
        self.policy = ch.policy
        self._drop = ch._drop
        self.capacity = ch.capacity
        self._closed = True  # until joined
        self._lock_fd = -1
        h = ffi.new("shm_bcast_t *")
        rc = lib.shm_bcast_attach(h, ch._mapping.ptr(_HEADER), ch._mapping.size - _HEADER, _NULL)
        if rc != 0:
            ch._raise_rc(rc, "attach")
        self._h = h
        words = (self.capacity + 63) // 64
        self._bits = ffi.new("uint64_t[]", words)
        self._f = ffi.new("shm_bcast_frame *")
        self._self = ffi.new("shm_bcast_sub_info *")
        self._status = ffi.new("shm_bcast_status_info *")
        self._views: list[Any] = [None] * self.capacity
        self._schemas: dict[tuple[str, tuple[int, ...]], list[Any]] = {}
        # (dtype, shape) of the last frame received (any way), and of the last copy buffer
        self._last_key: tuple[Any, ...] = ()
        self._copy_key: tuple[Any, ...] = ()
        self._scratch: np.ndarray | None = None  # type: ignore[type-arg]
        self._dummy = ffi.new("char[1]")
        self._held = 0
        self._waits = 0
        self._invalid = 0
        self._spin = Spin(None if spin_us is None else int(spin_us * 1000))
        self._data = _Futex(h, _DATA)
        fd = ch._open_lock_fd()
        try:
            self._index = self._join(fd, words)
        except BaseException:
            _close_fd(fd)
            raise
        self._lock_fd = fd
        self._closed = False
        self._spin.crowded(1 + ch._count_subscribers())
        _open_objects.add(self)
        self._note("join")

    def _join(self, fd: int, words: int) -> int:
        ch, h = self._ch, self._h
        pid = os.getpid()
        start = _segment.process_start_time(pid)
        # Free entries first; an occupied entry whose lock is free is a dead subscriber's, and
        # taking its lock makes it ours (join counts it as evicted).
        free: list[int] = []
        taken: list[int] = []
        for i in range(ch.max_subscribers):
            ok = lib.shm_bcast_subscriber(h, i, ch._sinfo) == 0
            (free if ok and int(ch._sinfo.state) == _FREE else taken).append(i)
        for index in free + taken:
            got = lib.shm_seg_lock_try(fd, _LOCK_SUB0 + index)
            if got == 1:
                continue
            if got < 0:
                raise LimitError(f"{ch._what()}: cannot take a liveness lock: "
                                 f"{os.strerror(-got)}")
            rc = int(lib.shm_bcast_join(h, index, pid, start, self._bits, words))
            if rc == 0:
                return index
            lib.shm_seg_lock_release(fd, _LOCK_SUB0 + index)
            ch._raise_rc(rc, "join")
        raise LimitError(f"{ch._what()} has {ch.max_subscribers} live subscribers already "
                         "(create it with a larger max_subscribers)")

    def _note(self, event: str) -> None:
        """A join/leave note to the owner's control queue: best effort, never blocks."""
        try:
            self._ch.control.send({"event": event, "channel": self.name,
                                   "subscriber": self._index, "pid": os.getpid()}, timeout=0)
        except (ShmArrayError, OSError, ValueError):
            pass

    @property
    def index(self) -> int:
        """This subscriber's entry in the segment's subscriber table."""
        return self._index

    def _what(self) -> str:
        return f"subscriber {self._index} of broadcast channel {self.name!r}"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self._what()} is closed; subscribe again with ch.subscribe()")

    # ------------------------------------------------------------------------------------------
    # receiving

    def _empty_error(self, immediate: bool) -> BaseException:
        if immediate:
            return WouldBlockError(f"no new frame on {self._what()}")
        return WaitTimeoutError(f"no frame arrived on {self._what()} in time")

    def _between(self) -> BaseException | None:
        alive, pid = self._ch._producer_alive()
        if not alive:
            return PeerDiedError(
                f"the producer of broadcast channel {self.name!r} died without end() (pid "
                f"{pid}); every frame it committed was received")
        return None

    def _raise(self, rc: int, op: str) -> None:
        if rc == _LIMIT:
            raise LimitError(
                f"{self._what()}: it holds {self._held} frames and the oldest one blocks the "
                f"producer (a ring of capacity {self.capacity} lets a subscriber hold at most "
                "capacity - 1, within one ring of the newest): release some (leave their with "
                "blocks), or use recv_copy()")
        if rc == _CORRUPT:
            raise CorruptSegmentError(
                f"{self._what()}: a frame failed validation and was skipped ({op}); the "
                f"channel's memory is inconsistent ('shmarray clean {self.name}' removes it "
                "once its owner is dead)")
        self._ch._raise_rc(rc, op)

    def _call(self, c_fn: Any, dst: Any, n: int, timeout: float | None, op: str) -> int:
        """One C receive call, then the wait (spin, futex slices, liveness) while it says
        EMPTY. Returns the slot, or RESIZE (copy calls); raises for everything else."""
        rc: int = c_fn(self._h, self._f, dst, n, 0)
        if rc >= 0:
            return rc
        return self._call_slow(rc, c_fn, dst, n, timeout, op)

    def _call_slow(self, rc: int, c_fn: Any, dst: Any, n: int, timeout: float | None,
                   op: str) -> int:
        h, f = self._h, self._f
        if rc == _EMPTY:
            if timeout == 0:
                raise self._empty_error(True)
            self._waits += 1
            rc = wait(lambda spin: int(c_fn(h, f, dst, n, spin)), _EMPTY,
                      lambda: lib.shm_bcast_arm(h, _DATA), lambda: lib.shm_bcast_disarm(h, _DATA),
                      self._data, timeout, self._spin, self._between, self._empty_error)
        if rc < 0 and rc != _RESIZE:
            if rc == _ENDED:
                raise StreamEnded(f"broadcast channel {self.name!r}: end of stream")
            self._raise(rc, op)
        return rc

    def _frame_key(self) -> tuple[np.dtype[Any], tuple[int, ...]]:
        f = self._f
        return _DTYPE_OF[int(f.dtype)], tuple(int(f.shape[i]) for i in range(int(f.ndim)))

    def _got(self) -> None:
        """After every frame the C side returned: follow a change of schema (the C side
        reports it against this subscriber's previous frame, whichever way it was read)."""
        if self._f.schema_changed:
            dt, shape = key = self._frame_key()
            self._last_key = key
            vkey = (dt.str, shape)
            views = self._schemas.get(vkey)
            if views is None:
                if len(self._schemas) >= _MAX_SCHEMAS:
                    self._schemas.clear()
                views = self._schemas[vkey] = [None] * self.capacity
            self._views = views

    def _view(self, slot: int) -> Any:
        if self._f.schema_changed:
            self._got()
        view = self._views[slot]
        if view is None:
            dt, shape = self._last_key
            view = self._ch._slots[slot][:int(self._f.nbytes)].view(dt).reshape(shape)
            view.flags.writeable = False
            self._views[slot] = view
        return view

    def _copy(self, c_fn: Any, timeout: float | None, op: str,
              out: np.ndarray | None = None,  # type: ignore[type-arg]
              reuse: bool = False) -> tuple[int, np.ndarray]:  # type: ignore[type-arg]
        """Copy the next (or newest) frame out in one C call, validated (a torn copy is never
        returned). ``out``: into that buffer (a size mismatch raises ValueError, nothing is
        consumed); ``reuse``: into the iteration buffer; else into a fresh array."""
        if out is not None:
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise ValueError("recv_into needs a writeable C-contiguous array")
            rc = self._call(c_fn, _from_buffer(out), out.nbytes, timeout, op)
            if rc == _RESIZE:
                dt, shape = self._frame_key()
                raise ValueError(f"recv_into: frame {dt}{list(shape)} does not fit out "
                                 f"{out.dtype}{list(out.shape)} (the frame was not consumed)")
            self._got()
            return rc, out
        key = self._copy_key
        while True:
            buf = self._scratch if reuse else None
            if buf is None or (buf.dtype, buf.shape) != key:
                buf = np.empty(key[1], key[0]) if key else np.empty(0, np.uint8)
            rc = self._call(c_fn, _from_buffer(buf) if buf.nbytes else self._dummy, buf.nbytes,
                            timeout, op)
            if rc != _RESIZE:
                break
            key = self._copy_key = self._frame_key()
        self._got()
        key = self._last_key
        if (buf.dtype, buf.shape) != key:  # same byte size, another shape or dtype
            buf = buf.reshape(-1).view(np.uint8).view(key[0]).reshape(key[1])
            self._copy_key = key
        if reuse:
            self._scratch = buf
        return rc, buf

    def _frame(self, rc: int, arr: Any, copied: bool) -> BroadcastFrame:
        f = self._f
        return BroadcastFrame(self, rc, f.pos, f.timestamp_ns, f.tag, arr, copied)

    def recv(self, timeout: float | None = None, *, copy: bool | None = None) -> BroadcastFrame:
        """Receive the next frame as a BroadcastFrame.

        ``copy`` defaults to the policy's safe choice: policy "block" gives a zero-copy lease
        (read-only view, intact until released: ``with sub.recv() as view:``); policy "drop"
        gives a private copy, validated (never torn). ``copy=False`` under "drop" gives a
        zero-copy view that must be checked with ``frame.valid()`` after use.

        Blocks until a frame arrives, up to ``timeout`` (None: forever; 0: WouldBlockError;
        expiry: WaitTimeoutError). Raises StreamEnded once the stream ended and this
        subscriber read every frame it is owed, PeerDiedError when the producer died without
        end() (after the same drain), LimitError (policy "block": too many frames held),
        ClosedError."""
        if self._closed:
            self._check_open()
        if copy if copy is not None else self._drop:
            rc, arr = self._copy(_recv_c, timeout, "recv")
            return self._frame(rc, arr, True)
        f = self._f
        rc = _recv_c(self._h, f, _NULL, 0, 0)
        if rc < 0:
            rc = self._call_slow(rc, _recv_c, _NULL, 0, timeout, "recv")
        view = self._views[rc] if not f.schema_changed else None
        if view is None:
            view = self._view(rc)
        if not self._drop:
            self._held += 1
        return BroadcastFrame(self, rc, f.pos, f.timestamp_ns, f.tag, view, False)

    def try_recv(self, *, copy: bool | None = None) -> BroadcastFrame | None:
        """recv() that never waits: the next frame, or None when there is none yet. Raises
        StreamEnded once ended and drained, PeerDiedError as recv()."""
        try:
            return self.recv(timeout=0, copy=copy)
        except WouldBlockError:
            return None

    def recv_copy(self, timeout: float | None = None) -> np.ndarray:  # type: ignore[type-arg]
        """Receive the next frame as an ordinary array of your own (one copy, validated: never
        torn; the slot is released at once). Blocks and raises as recv()."""
        self._check_open()
        return self._copy(_recv_c, timeout, "recv_copy")[1]

    def recv_into(self, out: np.ndarray, timeout: float | None = None) -> BroadcastFrame:  # type: ignore[type-arg]
        """Copy the next frame into ``out`` (a writeable C-contiguous array of exactly the
        frame's byte size; the frame's shape and dtype are not imposed) and release it.
        Returns the (released) frame, whose ``array`` is ``out``. Blocks and raises as recv();
        ValueError when ``out`` does not fit (the frame is not consumed)."""
        self._check_open()
        rc, arr = self._copy(_recv_c, timeout, "recv_into", out)
        return self._frame(rc, arr, True)

    def latest(self, timeout: float | None = 1.0, *,
               copy: bool | None = None) -> BroadcastFrame:
        """The newest complete frame, skipping the backlog (skipped frames are counted in
        stats()["skipped"], not as lost); if no frame arrived since the last one received,
        waits for the next, up to ``timeout``. ``copy`` as recv() (policy "drop" copies by
        default). Raises as recv()."""
        self._check_open()
        if copy if copy is not None else self._drop:
            rc, arr = self._copy(_latest_c, timeout, "latest")
            return self._frame(rc, arr, True)
        rc = self._call(_latest_c, _NULL, 0, timeout, "latest")
        view = self._view(rc)
        if not self._drop:
            self._held += 1
        return self._frame(rc, view, False)

    def _release(self, slot: int, pos: int) -> None:
        if self._closed or self._drop:
            return  # a drop view holds nothing
        if _release_c(self._h, slot, pos) < 0:
            self._raise(lib.SHM_BCAST_BAD_ARG, "release")
        self._held -= 1

    def __iter__(self) -> Iterator[np.ndarray]:  # type: ignore[type-arg]
        """Iterate over frames as plain read-only arrays, each valid until the next step (or
        the end of the loop). Policy "block": zero-copy views of the slots, released at the
        next step. Policy "drop": a copy into one buffer reused from step to step (validated,
        never torn). Stops at end of stream."""
        while True:
            try:
                if self._drop:
                    arr = self._iter_copy()
                    yield arr
                    continue
                frame = self.recv()
            except StreamEnded:
                return
            try:
                yield frame.array
            finally:
                frame.release()

    def _iter_copy(self) -> np.ndarray:  # type: ignore[type-arg]
        self._check_open()
        return self._readonly(self._copy(_recv_c, None, "iterate", reuse=True)[1])

    @staticmethod
    def _readonly(buf: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        v = buf.view()
        v.flags.writeable = False
        return v

    # ------------------------------------------------------------------------------------------
    # the rest

    def stats(self) -> dict[str, Any]:
        """This subscriber's counts: received, lost (frames it missed because the producer
        lapped it: policy "drop"), skipped (by latest()), invalid (zero-copy views that
        valid() found overwritten), waits, held, lag (frames published and not yet read),
        join_pos (the first frame it was owed), and the channel's ended flag."""
        self._check_open()
        lib.shm_bcast_self(self._h, self._self)
        lib.shm_bcast_status(self._h, self._status)
        me, st = self._self, self._status
        return {
            "name": self.name, "index": self._index, "policy": self.policy,
            "received": int(me.received), "lost": int(me.lost), "skipped": int(me.skipped),
            "invalid": self._invalid, "waits": self._waits, "held": self._held,
            "lag": max(0, int(st.head) - int(me.next)), "join_pos": int(me.join_pos),
            "ended": bool(st.eos),
        }

    def _forked(self) -> None:
        _close_fd(self._lock_fd)
        self._lock_fd = -1
        self._closed = True

    def close(self) -> None:
        """Leave the channel: held frames are released with the entry, and a leave note goes
        to the owner's control queue (best effort). Views stay mapped but may change.
        Idempotent; never blocks."""
        if self._closed:
            return
        lib.shm_bcast_leave(self._h)
        self._closed = True
        self._held = 0
        _close_fd(self._lock_fd)
        self._lock_fd = -1
        _open_objects.discard(self)
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


def _describe(mapping: Any, info: Any) -> str:
    """Detail text for `shmarray ls`: policy, capacity, slot size, fill, producer and
    subscribers with liveness."""
    h = ffi.new("shm_bcast_t *")
    binfo = ffi.new("shm_bcast_info *")
    rc = lib.shm_bcast_attach(h, mapping.ptr(_HEADER), mapping.size - _HEADER, binfo)
    if rc != 0:
        return f"broadcast ring corrupt ({_strerror(rc)})"
    st = ffi.new("shm_bcast_status_info *")
    lib.shm_bcast_status(h, st)
    head, cap = int(st.head), int(binfo.capacity)
    si = ffi.new("shm_bcast_sub_info *")
    fd = os.open(_names.segment_path(mapping.name), os.O_RDONLY | os.O_CLOEXEC)
    subs, lags = [], []
    try:
        prod_state = int(st.prod_state)
        if prod_state == _ACTIVE:
            alive = lib.shm_seg_lock_probe(fd, _LOCK_PRODUCER) == 1
            producer = f"producer {int(st.prod_pid)} {'alive' if alive else 'dead'}"
        elif prod_state == _ENDED_STATE:
            producer = f"producer {int(st.prod_pid)} ended"
        else:
            producer = "no producer"
        for i in range(int(binfo.max_subscribers)):
            if lib.shm_bcast_subscriber(h, i, si) != 0 or int(si.state) == _FREE:
                continue
            alive = lib.shm_seg_lock_probe(fd, _LOCK_SUB0 + i) == 1
            lag = max(0, min(head - int(si.cursor), 1 << 40))
            if alive:
                lags.append(lag)
            text = f"sub {int(si.pid)} {'alive' if alive else 'dead'} lag {lag}"
            if int(si.lost):
                text += f" lost {int(si.lost)}"
            subs.append(text)
    finally:
        os.close(fd)
    policy = _POLICY_NAMES.get(int(binfo.policy), "?")
    fill = min(max(lags, default=0), cap)
    ended = ", ended" if int(st.eos) else ""
    evicted = f", {int(st.evicted)} evicted" if int(st.evicted) else ""
    return (f"broadcast {policy} cap {cap} x {int(binfo.slot_bytes):,} B, {head} frames, "
            f"fill {fill}{ended}; {producer}; "
            + (", ".join(subs) if subs else "no subscribers") + evicted)


_registry.describers[lib.SHM_SEG_KIND_BCAST] = _describe
