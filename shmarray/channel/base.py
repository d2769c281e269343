"""``Channel``: numpy arrays between processes through a lock-free ring in shared memory.

The public base of every channel kind, and everything they share: creating and opening the
segment, the producer side (``send``, ``send_many``, ``loan``, ``end``: the same C calls for
every mode), the control queue, statistics, closing and unlinking. The kinds differ only where
their protocols do: the ring modes (``"one-to-one"``, ``"work-queue"``: shmarray/channel/ring.py)
receive on the channel handle itself; ``"broadcast"`` (shmarray/channel/broadcast.py) receives
through subscribers. ``Channel.create`` / ``Channel.open`` dispatch on the mode to the kind
that registered it (each kind names its modes when it subclasses Channel).

One segment holds the channel (csrc/chan.h): a header, cursors in their own 128-byte blocks, a
participant table, a slot table and the slot payloads. A producer loans a slot and writes the
array in place (``loan``: zero copy) or copies an existing array in (``send``: one copy).

Waiting: spin briefly, then sleep on a futex word in the segment; the other side wakes only
when a waiter is announced, so a stream that keeps up makes no system call (_os/wait.py).
Liveness: see shmarray/channel/handle.py.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, ClassVar

import numpy as np

from .._os import faults as _faults
from .._os import names as _names
from .._os import segment as _segment
from .._os.native import CODE_OF, chan_strerror, ffi, lease, lib
from .._os.wait import Spin, wait
from ..errors import (
    ClosedError,
    CorruptSegmentError,
    FrameTooLargeError,
    InternalError,
    InvalidArgumentError,
    LimitError,
    NotFoundError,
    PeerDiedError,
    StreamEnded,
    WaitTimeoutError,
    WouldBlockError,
)
from .control import DEFAULT_MESSAGE_SIZE, DEFAULT_MESSAGES, ControlQueue
from .handle import CONSUMER, HEADER, PRODUCER, ROLE_NAMES, Handle, Segment
from .lease import Loan

__all__ = ["Channel"]

_FULL = lib.SHM_CHAN_FULL
_SPACE = lib.SHM_CHAN_WAIT_SPACE
_MAX_SCHEMAS = 64  # cached loan view sets per handle
_MAX_TAG = (1 << 64) - 1
_send_c = lib.shm_chan_send
_claim = lease.claim
_from_buffer = ffi.from_buffer


def dtype_code(dt: np.dtype[Any]) -> int:
    code = CODE_OF.get(dt.str)
    if code is None:
        raise TypeError(
            f"dtype {dt} cannot travel through a channel (supported: bool, int/uint 8-64, "
            "float16/32/64, complex64/128, datetime64/timedelta64 in s/ms/us/ns, either byte "
            "order); send arr.view(np.uint8) and reinterpret it on the other side")
    return code


def as_array(obj: Any) -> np.ndarray[Any, Any]:
    """An ndarray over ``obj``: a buffer keeps its format (bytes -> uint8), else np.asarray."""
    if isinstance(obj, np.ndarray):
        return obj
    try:
        return np.asarray(memoryview(obj))
    except TypeError:
        return np.asarray(obj)


def check_tag(tag: Any, what: str) -> int:
    if not isinstance(tag, (int, np.integer)) or not 0 <= int(tag) <= _MAX_TAG:
        raise InvalidArgumentError(f"{what}: a tag is an int in 0..2**64-1, not {tag!r}")
    return int(tag)


class Channel:
    """A channel handle (see the module docstring). A handle is used by one thread at a time;
    ``Channel.create`` / ``Channel.open`` return the kind of channel the mode names."""

    #: "one-to-one", "work-queue" or "broadcast"
    mode: str
    _kinds: ClassVar[dict[str, type[Channel]]] = {}

    def __init_subclass__(cls, modes: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for m in modes:
            Channel._kinds[m] = cls

    # ------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def create(cls, name: str | None = None, slot_bytes: int = 1 << 20, capacity: int = 8,
               mode: str = "one-to-one", *, max_participants: int = 64, perm: int = 0o600,
               control_messages: int = DEFAULT_MESSAGES,
               control_message_size: int = DEFAULT_MESSAGE_SIZE,
               spin_us: float | None = None, max_subscribers: int = 8,
               policy: str = "block") -> Any:
        """Create channel ``name`` (a unique name if None), owned by this process: it is
        unlinked at ``unlink()``, at the end of a ``with`` block, or at exit.

        ``slot_bytes`` is the largest frame in bytes (1 .. 2**40); ``capacity`` (a power of two
        in 2 .. 2**20) the number of slots. ``mode``: ``"one-to-one"`` (one producer and one
        consumer at a time), ``"work-queue"`` (many of each, every frame to exactly one
        consumer; up to ``max_participants``, 1..1024) or ``"broadcast"`` (one producer, up to
        ``max_subscribers`` subscribers, 1..1024, each seeing every frame; ``policy="block"``:
        the producer waits for the slowest live subscriber, ``"drop"``: it never waits). The
        ring's pages are reserved at create, so a full /dev/shm fails here (LimitError) rather
        than with SIGBUS mid-stream. ``perm`` is the mode of the segment and control queue,
        applied exactly (the umask does not narrow it). Does not block.

        Raises ExistsError, LimitError (/dev/shm, message-queue limits), InvalidNameError,
        ValueError (bad sizes, mode or policy). Whatever it created is removed again when it
        fails or is interrupted.
        """
        kind = Channel._kinds.get(mode)
        if kind is None:
            raise ValueError(f"mode must be one of {sorted(Channel._kinds)}, not {mode!r}")
        if not issubclass(kind, cls):
            raise ValueError(f"{cls.__name__}.create: mode {mode!r} makes a {kind.__name__}; "
                             f"use shmarray.Channel.create(..., mode={mode!r})")
        if name is None:
            name = _names.unique("chan")
        _names.validate(name)
        for what, v in (("slot_bytes", slot_bytes), ("capacity", capacity)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"{what} must be an int, not {type(v).__name__}")
        cmax = int(lib.SHM_CHAN_MAX_CAPACITY)
        if capacity < 2 or capacity & (capacity - 1) or capacity > cmax:
            raise InvalidArgumentError(f"channel {name!r}: capacity must be a power of two in "
                                       f"2..{cmax}, not {capacity}")
        smax = int(lib.SHM_CHAN_MAX_SLOT_BYTES)
        if not 1 <= slot_bytes <= smax:
            raise InvalidArgumentError(f"channel {name!r}: slot_bytes must be 1..{smax:,} "
                                       f"(2**40), not {slot_bytes:,}")
        params = ffi.new("shm_chan_params *")
        params.mode, params.policy, params.max_participants = kind._layout_params(
            mode, policy, max_participants, max_subscribers)
        params.capacity = capacity
        params.slot_bytes = slot_bytes
        ring_len = int(lib.shm_chan_size(params))
        if ring_len == 0:
            raise ValueError(f"channel {name!r}: the ring parameters are out of range")
        size = HEADER + ring_len

        def init(mapping: _segment.Mapping, nonce: int) -> None:
            ctl = _names.sub_object(name, nonce, "ctl")
            info = ffi.new("shm_seg_info *")
            info.kind = lib.SHM_SEG_KIND_RING
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
            rc = lib.shm_chan_format(mapping.ptr(HEADER), ring_len, params)
            if rc != 0:
                raise InternalError(f"channel {name!r}: cannot format its ring: "
                                    f"{chan_strerror(rc)}")
            _faults.point("channel.header")  # fault point (tests/faults)
            ControlQueue(ctl, name, create=True, mode=perm, max_messages=control_messages,
                         max_message_size=control_message_size).close()
            try:
                _faults.point("channel.objects")  # fault point (tests/faults)
            except BaseException:
                _segment.unlink_objects([ctl])
                raise
            lib.shm_seg_publish(mapping.ptr())

        mapping, nonce = _segment.create(name, size, mode=perm, reserve=True, init=init)
        try:
            rc, info = _segment.read_header(mapping)
            if rc != 0:
                raise InternalError(f"channel {name!r}: its own header fails validation (rc {rc})")
            seg = Segment(mapping, info, _segment.reopen(_segment.owned_fd(name, nonce)))
            return kind(seg, owner=True, spin_us=spin_us)
        except BaseException:
            # every creation step is undone: the segment and its queue
            try:
                _segment.unlink(name, nonce)
            except (NotFoundError, OSError):
                pass
            raise

    @classmethod
    def _layout_params(cls, mode: str, policy: str, max_participants: int,
                       max_subscribers: int) -> tuple[int, int, int]:
        """(mode code, policy code, participant entries) for ``create``."""
        raise NotImplementedError

    @classmethod
    def open(cls, name: str, timeout: float | None = 0, *, spin_us: float | None = None) -> Any:
        """Open channel ``name`` created by another process (or this one).

        Fails at once with NotFoundError when it does not exist (``timeout=0``, the default,
        as multiprocessing.shared_memory does); ``timeout=None`` or seconds waits that long for
        its creator to create and finish it. Raises NotFoundError, AccessDeniedError,
        CorruptSegmentError (also: a shared array of that name, or a channel of another kind
        than ``cls``)."""
        mapping, info, fd = _segment.open_segment(name, False, timeout, "channel")
        try:
            if int(info.kind) == lib.SHM_SEG_KIND_ARRAY:
                raise CorruptSegmentError(f"segment {name!r} is a shared array, not a channel: "
                                          f"attach it with shmarray.attach({name!r})")
            seg = Segment(mapping, info, fd)
        except BaseException:
            os.close(fd)
            raise
        kind = Channel._kinds[seg.mode]
        if not issubclass(kind, cls):
            raise CorruptSegmentError(f"channel {name!r} is a {seg.mode} channel, not a "
                                      f"{cls.__name__}: open it with shmarray.Channel.open")
        return kind(seg, owner=False, spin_us=spin_us)

    def __init__(self, seg: Segment, *, owner: bool, spin_us: float | None = None) -> None:
        self.name: str = seg.name
        self.mode = seg.mode
        self.capacity: int = seg.capacity
        self.slot_bytes: int = seg.slot_bytes
        self._seg = seg
        self._mask = seg.capacity - 1
        self._owner_pid = os.getpid() if owner else 0
        self._h = Handle(seg, self._what(), opener=True)
        self._spin_us = spin_us
        self._spin: Spin = Spin(None if spin_us is None else int(spin_us * 1000))
        self._control: ControlQueue | None = None
        self._closed = False
        self._shape_buf = ffi.new("uint64_t[8]")
        self._send_key: tuple[Any, ...] = ()  # the (dtype, shape) set in C, by send or loan
        self._send_nbytes = 0
        self._loan_last: tuple[Any, ...] | None = None
        self._loan_views: dict[tuple[str, tuple[int, ...]], list[Any]] = {}
        self._next_reap: float | None = None  # broadcast: when to look for dead subscribers
        self._tx_ready: bool = False  # registered as producer (the C handle is the record)
        self._rx_ready: bool = False  # registered as consumer (ring modes)

    # ------------------------------------------------------------------------------------------
    # errors

    def _what(self) -> str:
        return f"channel {self.name!r}"

    def _check_open(self) -> None:
        if self._closed or self._h.closed:
            why = "is closed" if self._closed else "was opened by the parent of this forked process"
            raise ClosedError(f"{self._what()} {why}; open it again with "
                              f"shmarray.Channel.open({self.name!r})")

    def _raise_rc(self, rc: int, op: str) -> None:
        self._check_open()  # a handle closed (or inherited through fork) says so, first
        msg = chan_strerror(rc)
        if rc in (lib.SHM_CHAN_CORRUPT, lib.SHM_CHAN_BUSY):
            raise CorruptSegmentError(f"{self._what()} is corrupt ({op}: {msg}); 'shmarray "
                                      f"clean {self.name}' removes it once its owner is dead")
        if rc == lib.SHM_CHAN_TOO_LARGE:
            raise FrameTooLargeError(f"{self._what()}: {op}: {msg}")
        if rc == lib.SHM_CHAN_ENDED:
            raise StreamEnded(f"{self._what()}: end of stream")
        if rc == lib.SHM_CHAN_STALE:
            raise ClosedError(f"{self._what()}: {op}: this handle no longer holds it (closed?)")
        raise InternalError(f"{self._what()}: {op} failed: {msg} (rc {rc}; a bug, please "
                            "report it)")

    # ------------------------------------------------------------------------------------------
    # producer side

    def _producer(self) -> Handle:
        """Register as producer on first use (once: the C handle is the record)."""
        h = self._h
        self._check_open()
        role = h.role
        if role == CONSUMER:
            raise ValueError(
                f"this handle of {self._what()} is a consumer; a handle is either producer "
                f"or consumer: open another handle (shmarray.Channel.open({self.name!r})) "
                "for the other role")
        if role != PRODUCER:
            h.register(PRODUCER)
            self._spin.crowded(h.count_active())
        self._tx_ready = True
        return h

    def _set_schema(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> int:
        if len(shape) > lib.SHM_CHAN_MAX_NDIM:
            raise ValueError(f"{len(shape)} dimensions; a channel frame has at most "
                             f"{lib.SHM_CHAN_MAX_NDIM}")
        code = dtype_code(dtype)
        buf = self._shape_buf
        for i, s in enumerate(shape):
            if not 0 <= s < 1 << 63:
                raise FrameTooLargeError(
                    f"a frame of shape {list(shape)} ({dtype}) does not fit the "
                    f"{self.slot_bytes:,}-byte slots of {self._what()}: create the channel with "
                    "a larger slot_bytes")
            buf[i] = s
        nbytes = int(lib.shm_chan_set_schema(self._h.h, code, len(shape), buf))
        if nbytes < 0:
            if nbytes == lib.SHM_CHAN_TOO_LARGE:
                size = math.prod(shape) * dtype.itemsize
                raise FrameTooLargeError(
                    f"a frame of {size:,} bytes ({dtype}{list(shape)}) does not fit the "
                    f"{self.slot_bytes:,}-byte slots of {self._what()}: create the channel "
                    "with a larger slot_bytes")
            self._raise_rc(nbytes, "set the frame schema")
        return nbytes

    def _full_error(self, immediate: bool) -> BaseException:
        if immediate:
            return WouldBlockError(f"{self._what()} is full ({self.capacity} frames): no "
                                   "slot was released")
        return WaitTimeoutError(f"{self._what()} stayed full: no slot was released in time")

    def _between_send(self) -> BaseException | None:
        """Between wait slices of a blocked producer: the exception to raise if the ring is
        still full afterwards (its consumers died), or None."""
        return None

    def _after_commit(self) -> None:
        if self._next_reap is not None and time.monotonic() >= self._next_reap:
            self._reap()

    def _reap(self) -> None:
        pass

    def _wait_space(self, op: Any, timeout: float | None) -> Any:
        return wait(op, _FULL, self._h.h, _SPACE, timeout, self._spin, self._between_send,
                    self._full_error)

    def send(self, frame: Any, timeout: float | None = None, tag: int = 0) -> None:
        """Copy ``frame`` (any array or buffer) into a slot and publish it.

        Blocks while the ring is full, up to ``timeout`` (None: forever; 0: WouldBlockError;
        expiry: WaitTimeoutError). A Fortran-ordered or strided array is sent as its C-ordered
        copy (it arrives C-contiguous with the same values). ``tag``: a 64-bit int the frame
        carries. Raises FrameTooLargeError, PeerDiedError (every consumer died and the ring is
        full), StreamEnded (this handle called end()), TypeError (a dtype channels cannot
        carry), ValueError (a tag beyond 64 bits)."""
        h = self._h if self._tx_ready else self._producer()
        arr = frame if type(frame) is np.ndarray else as_array(frame)
        key = (arr.dtype, arr.shape)
        if key != self._send_key:
            self._send_nbytes = self._set_schema(arr.dtype, arr.shape)
            self._send_key = key
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        if type(tag) is not int or tag < 0 or tag > _MAX_TAG:
            tag = check_tag(tag, f"{self._what()}: send")
        src = _from_buffer(arr)
        rc = _send_c(h.h, src, self._send_nbytes, tag, 0)
        if rc < 0:
            if rc != _FULL:
                self._send_error(rc)
            hh, n = h.h, self._send_nbytes
            rc = self._wait_space(lambda spin: int(_send_c(hh, src, n, tag, spin)), timeout)
            if rc < 0:
                self._send_error(rc)
        if self._next_reap is not None:
            self._after_commit()

    def _send_error(self, rc: int) -> None:
        if rc == lib.SHM_CHAN_BAD_ARG and self._h.self_info().claimed:
            raise LimitError(f"{self._what()}: this handle has a loan outstanding; commit or "
                             "abort it first (one loan at a time per handle)")
        self._raise_rc(rc, "send")

    def send_many(self, frames: Any, timeout: float | None = None, tag: int = 0) -> None:
        """Send each row of ``frames`` (shape ``(n, *frame_shape)``) as its own frame, in order,
        with one C call per run of free slots; frame i carries ``tag + i``. The fast path for
        small frames.

        Blocks while the ring is full, up to ``timeout`` for each wait (as send); on a timeout
        the frames sent so far stay sent. Raises as send()."""
        h = self._producer()
        arr = as_array(frames)
        if arr.ndim < 1:
            raise ValueError("send_many needs an array of frames (one per row), not a 0-d array")
        n = int(arr.shape[0])
        if n == 0:
            return
        tag = check_tag(tag, f"{self._what()}: send_many")
        key = (arr.dtype, arr.shape[1:])
        if key != self._send_key:
            self._send_nbytes = self._set_schema(arr.dtype, arr.shape[1:])
            self._send_key = key
        arr = np.ascontiguousarray(arr)
        nbytes = self._send_nbytes
        base = ffi.cast("char *", _from_buffer(arr))
        hh = h.h
        sent = 0
        while sent < n:
            src = base + sent * nbytes
            t = (tag + sent) & _MAX_TAG
            left = n - sent
            rc = int(lib.shm_chan_send_many(hh, src, nbytes, left, t, 0))
            if rc < 0:
                if rc != _FULL:
                    self._send_error(rc)

                def op(spin: int, src: Any = src, left: int = left, t: int = t) -> int:
                    return int(lib.shm_chan_send_many(hh, src, nbytes, left, t, spin))

                rc = self._wait_space(op, timeout)
                if rc < 0:
                    self._send_error(rc)
            sent += rc
            if self._next_reap is not None:
                self._after_commit()

    def loan(self, shape: Any, dtype: Any = np.uint8, timeout: float | None = None,
             tag: int = 0) -> Loan:
        """Loan a free slot as a writable ``dtype`` array of ``shape``, to fill in place (zero
        copy): ``with ch.loan(shape, dtype) as out: out[...] = ...`` commits at the end of the
        block, or aborts on an exception (and a Loan dropped uncommitted aborts). One loan at a
        time per handle. Under broadcast policy "drop" the slot's previous frame is gone from
        the moment of the loan.

        Blocks while the ring is full, up to ``timeout`` (as send). Raises as send, and
        LimitError when this handle has a loan outstanding."""
        h = self._h if self._tx_ready else self._producer()
        shp: tuple[int, ...]
        last = self._loan_last
        if (last is not None and last[1] is dtype and type(shape) in (tuple, int)
                and last[0] == shape):
            dt, shp, nbytes, views, key2 = last[2], last[3], last[4], last[5], last[6]
            if self._send_key is not key2:
                # send() set another schema since: set ours again
                self._send_nbytes = self._set_schema(dt, shp)
                self._send_key = key2
        else:
            dt = np.dtype(dtype)
            if isinstance(shape, (int, np.integer)):
                shp = (int(shape),)
            else:
                shp = tuple(int(s) for s in shape)
            key = (dt.str, shp)
            views = self._loan_views.get(key)
            if views is None:
                if len(self._loan_views) >= _MAX_SCHEMAS:
                    self._loan_views.clear()
                views = self._loan_views[key] = [None] * self.capacity
            nbytes = self._set_schema(dt, shp)
            key2 = (dt, shp)
            self._send_key = key2
            self._send_nbytes = nbytes
            self._loan_last = (shape, dtype, dt, shp, nbytes, views, key2)
        if type(tag) is not int or tag < 0 or tag > _MAX_TAG:
            tag = check_tag(tag, f"{self._what()}: loan")
        # The claim comes back wrapped in its lease (one C call): dropped uncommitted, by any
        # exception at any point from here on, it is aborted.
        claim = _claim(h.addr, h, 0)
        if type(claim) is int:
            claim = self._claim_wait(claim, h, timeout)
        slot = claim.pos & self._mask
        if _faults.ENABLED:
            _faults.point("channel.loan")  # fault point (tests/faults)
        view = views[slot]
        if view is None:
            view = views[slot] = self._seg.slots[slot][:nbytes].view(dt).reshape(shp)
        return Loan(self, claim, view, tag)

    def _claim_wait(self, rc: int, h: Handle, timeout: float | None) -> Any:
        if rc == _FULL:
            addr = h.addr
            claim = self._wait_space(lambda spin: _claim(addr, h, spin), timeout)
            if type(claim) is not int:
                return claim
            rc = claim
        if rc == lib.SHM_CHAN_BAD_ARG and h.self_info().claimed:
            raise LimitError(f"{self._what()}: this handle already has a loan outstanding; "
                             "commit or abort it first (one loan at a time per handle)")
        self._raise_rc(rc, "loan")
        raise AssertionError("unreachable")

    def end(self) -> None:
        """End of stream: once every frame committed before it is received, consumers' recv()
        raises StreamEnded and iteration stops. In a work queue the stream ends when every
        registered producer has called end(). Sticky; never blocks. Raises LimitError while a
        loan of this handle is outstanding."""
        h = self._producer()
        if h.self_info().claimed:
            raise LimitError(f"{self._what()}: commit or abort the outstanding loan before end()")
        rc = lib.shm_chan_end(h.h)
        if rc < 0:
            self._raise_rc(rc, "end")
        _faults.point("channel.end")  # fault point (tests/faults)

    def count_dropped(self, n: int) -> None:
        """Record that ``n`` frames were lost before they reached this channel (e.g. by a
        bridge from another host): ``stats()["dropped"]`` grows by ``n``. Never blocks."""
        self._check_open()
        if not 0 <= n < 1 << 64:
            raise InvalidArgumentError(f"{self._what()}: count_dropped(n) needs 0 <= n < 2**64, "
                                       f"not {n}")
        lib.shm_chan_count_dropped(self._h.h, n)

    # ------------------------------------------------------------------------------------------
    # the rest

    @property
    def control(self) -> ControlQueue:
        """The channel's control queue (the owner's inbox); opened on first use."""
        self._check_open()
        if self._control is None:
            self._control = ControlQueue(self._seg.control_name, self.name)
        return self._control

    def _participants(self) -> list[dict[str, Any]]:
        """Every used participant entry with its liveness and counters."""
        from .describe import participants

        return participants(self._h)

    def stats(self) -> dict[str, Any]:
        """Counters: this handle's (role, sent, received, waits, held) and the channel's
        (committed, consumed, fill, dropped, ended) and its participants ("peers") with
        liveness, frames, bytes and waits."""
        self._check_open()
        from .describe import channel_stats

        return channel_stats(self)

    def close(self) -> None:
        """Leave the channel: an outstanding loan is aborted, and this process's descriptors are
        closed. Frames this handle still holds are given back now, or (while views of them are
        alive) when the last view dies. The channel lives on until unlink(). Idempotent; never
        blocks."""
        self._close(clean=True)

    def _close(self, clean: bool, abandon: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self._tx_ready = self._rx_ready = False  # every call checks again, and finds it closed
        self._close_parts()
        if abandon:
            self._h.abandon()
        else:
            self._h.close(clean)
        if self._control is not None:
            self._control.close()

    def _abandon(self) -> None:
        """Leave the way a process that dies does (for shmarray.bridge, whose producer relays
        a sender it lost): the entry stays for peers to reap, so consumers drain what was
        committed and then get PeerDiedError, where a close() would leave them waiting for a
        producer that may come. Idempotent; never blocks."""
        self._close(clean=False, abandon=True)

    def _close_parts(self) -> None:
        """Close what belongs to this handle besides itself (broadcast: its subscribers)."""

    def unlink(self) -> None:
        """Remove the channel (its segment and the queue its header lists); processes that have
        it open keep working on their mapping. Works after close(); a second unlink raises
        NotFoundError."""
        _segment.unlink(self.name, self._seg.nonce)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """Close (left by an exception: as a handle that died); the creating process also
        unlinks."""
        self._close(clean=exc_type is None)
        if (self._owner_pid == os.getpid()
                and _segment.owned_nonce(self.name) == self._seg.nonce):
            try:
                self.unlink()
            except Exception:
                pass

    def __del__(self) -> None:
        try:
            self._close(clean=False)  # dropped unclosed: as a handle that died
        except Exception:
            pass

    def __repr__(self) -> str:
        role = self._h.role if not self._closed else 0
        state = "closed" if self._closed else ROLE_NAMES.get(role, "unregistered")
        return (f"<{type(self).__name__} {self.name!r} {self.mode} capacity={self.capacity} "
                f"slot_bytes={self.slot_bytes} {state}>")

    # ------------------------------------------------------------------------------------------
    # liveness checks shared by the kinds

    def _peer_died_before_registering(self, opener_fd: int | None = None) -> BaseException | None:
        """PeerDiedError when nobody registered the other role yet and every other process that
        opened the channel died (a waiter would wait for someone who will never come)."""
        if self._h.others_all_died(opener_fd):
            return PeerDiedError(
                f"every other process that opened {self._what()} died before it sent or "
                "received anything; a new peer may still open it: wait again (or re-open) if "
                "one is coming")
        return None
