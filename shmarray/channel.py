"""``Channel``: numpy arrays between processes through a lock-free ring in shared memory.

One segment holds the ring (csrc/ring.h): a header, cursors in their own 128-byte blocks, a
participant table, a slot table and the slot payloads. A producer loans a slot and writes the
array in place (``loan``: zero copy) or copies an existing array in (``send``: one copy); a
consumer gets a read-only numpy view of the slot (``recv``), valid until it releases it.

Modes: ``"one-to-one"`` (one producer, one consumer at a time: no CAS on the hot path) and
``"work-queue"`` (many producers, many consumers, each frame to exactly one consumer).

Waiting: spin briefly, then sleep on a named semaphore; the other side posts only when a waiter
is announced, so a stream that keeps up makes no system call (see _signal.py).

Liveness: a handle registers as producer on its first send/loan/end and as consumer on its
first recv, and holds an open-file-description lock on its own byte of the segment while
registered; the kernel drops it when the process dies. A waiter probes its peers between wait
slices: a dead consumer's leased frames are reclaimed (dropped and counted, never delivered
twice), a dead producer's unfinished loan is voided, and a wait whose peers are all dead ends
with PeerDiedError.
"""

from __future__ import annotations

import math
import os
import weakref
from typing import Any, Iterator

import numpy as np
import posix_ipc

from . import _faults, _names, _registry, _segment
from ._native import ffi, lib, oserror
from ._signal import Spin, wait
from .control import DEFAULT_MESSAGE_SIZE, DEFAULT_MESSAGES, ControlQueue
from .errors import (
    ClosedError,
    CorruptSegmentError,
    FrameTooLargeError,
    InternalError,
    LimitError,
    PeerDiedError,
    StreamEnded,
    WaitTimeoutError,
    WouldBlockError,
)

__all__ = ["Channel", "Frame", "FrameBatch", "Loan"]

MODES = {"one-to-one": lib.SHM_RING_MODE_ONE_TO_ONE, "work-queue": lib.SHM_RING_MODE_WORK_QUEUE}
_MODE_NAMES = {v: k for k, v in MODES.items()}
_PRODUCER = lib.SHM_RING_ROLE_PRODUCER
_CONSUMER = lib.SHM_RING_ROLE_CONSUMER
_EMPTY = lib.SHM_RING_EMPTY
_FULL = lib.SHM_RING_FULL
_ENDED = lib.SHM_RING_ENDED
_HEADER = lib.SHM_SEG_RING_HEADER
_FLAGS = lib.SHM_RING_RECV_SCHEMA  # the lowest flag bit of shm_ring_recv's result
_SLOT_MASK = _FLAGS - 1
_recv = lib.shm_ring_recv
_release_c = lib.shm_ring_release
_send_c = lib.shm_ring_send
_from_buffer = ffi.from_buffer
_FAULTS = _faults.ENABLED  # fault points (tests/faults): hot paths test this constant first
_ROLE_NAMES = {_PRODUCER: "producer", _CONSUMER: "consumer"}
_STATE_NAMES = {lib.SHM_RING_PART_FREE: "free", lib.SHM_RING_PART_ACTIVE: "active",
                lib.SHM_RING_PART_ENDED: "ended", lib.SHM_RING_PART_DEAD: "dead"}
_MAX_SCHEMAS = 64  # cached view sets per handle

# dtype codes: the C allowlist is the single source of truth.
_CODE_OF: dict[str, int] = {}
_DTYPE_OF: dict[int, np.dtype[Any]] = {}
for _code in range(1, int(lib.shm_ring_dtype_count()) + 1):
    _s = ffi.string(lib.shm_ring_dtype_str(_code)).decode()
    _CODE_OF[_s] = _code
    _DTYPE_OF[_code] = np.dtype(_s)


def _dtype_code(dt: np.dtype[Any]) -> int:
    code = _CODE_OF.get(dt.str)
    if code is None:
        raise TypeError(
            f"dtype {dt} cannot travel through a channel (supported: bool, int/uint 8-64, "
            "float16/32/64, complex64/128, datetime64/timedelta64 in s/ms/us/ns, either byte "
            "order); send arr.view(np.uint8) and reinterpret it on the other side")
    return code


def _as_array(obj: Any) -> np.ndarray:  # type: ignore[type-arg]
    """An ndarray over ``obj``: a buffer keeps its format (bytes -> uint8), else np.asarray."""
    if isinstance(obj, np.ndarray):
        return obj
    try:
        return np.asarray(memoryview(obj))
    except TypeError:
        return np.asarray(obj)


def _debug() -> bool:
    return os.environ.get("SHMARRAY_DEBUG", "") not in ("", "0")


_open_handles: weakref.WeakSet[Channel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child must not keep its parent's liveness locks alive (an OFD lock lives while
    # any descriptor of it is open): drop the descriptors and disable the inherited handles.
    for ch in list(_open_handles):
        ch._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Lease:
    """What Frame and FrameBatch share: ``with lease as array:`` releases at the end of the
    block, and a lease collected unreleased releases itself. Subclasses hold ``_ch`` (None once
    released) and ``array``, and define ``release()``."""

    __slots__ = ()
    _ch: Any
    array: np.ndarray  # type: ignore[type-arg]

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> np.ndarray:  # type: ignore[type-arg]
        return self.array

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        if self._ch is not None:
            try:
                self.release()
            except Exception:
                pass


class Frame(_Lease):
    """A received frame: a lease on one ring slot.

    ``with frame as view:`` yields a read-only ndarray view of the slot (no copy) and releases
    the slot at the end of the block; so do ``release()`` and the Frame being collected. The
    view must not be used after release (SHMARRAY_DEBUG=1 poisons released slots).
    """

    __slots__ = ("_ch", "_slot", "seq", "timestamp_ns", "tag", "array")

    def __init__(self, ch: Channel, slot: int, seq: int, timestamp_ns: int, tag: int,
                 array: np.ndarray) -> None:  # type: ignore[type-arg]
        self._ch: Channel | None = ch
        self._slot = slot
        #: position of the frame in the channel: 0 for the first frame, +1 per frame (in a
        #: work queue an aborted loan leaves a gap)
        self.seq = seq
        #: CLOCK_MONOTONIC at commit, ns (time.monotonic_ns() in any process)
        self.timestamp_ns = timestamp_ns
        #: the producer's 64-bit tag
        self.tag = tag
        #: read-only view of the frame in the slot
        self.array = array

    @property
    def released(self) -> bool:
        return self._ch is None

    def release(self) -> None:
        """Give the slot back to the producer (idempotent). Never blocks."""
        ch = self._ch
        if ch is not None:
            self._ch = None
            ch._release(self._slot, self.seq)

    def __repr__(self) -> str:
        state = "released" if self._ch is None else "held"
        return (f"<Frame seq={self.seq} {self.array.dtype}{list(self.array.shape)} tag={self.tag}"
                f" {state}>")


class Loan:
    """A slot loaned for writing in place: ``with ch.loan(shape, dtype) as out:``.

    Leaving the ``with`` normally commits the frame; an exception aborts it (the frame is never
    seen). ``commit()`` / ``abort()`` do the same explicitly. Writing to the view after commit
    is a bug (the consumer may be reading it).
    """

    __slots__ = ("_ch", "array", "tag")

    def __init__(self, ch: Channel, array: np.ndarray, tag: int) -> None:  # type: ignore[type-arg]
        self._ch: Channel | None = ch
        self.array = array
        self.tag = tag

    def __enter__(self) -> np.ndarray:  # type: ignore[type-arg]
        return self.array

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        """Publish the frame to the consumer(s). Never blocks."""
        ch = self._ch
        if ch is None:
            raise ClosedError("this loan was already committed or aborted")
        self._ch = None
        ch._commit(self.tag)

    def abort(self) -> None:
        """Give the slot back unpublished (idempotent). Never blocks."""
        ch = self._ch
        if ch is not None:
            self._ch = None
            ch._abort()

    def __del__(self) -> None:
        if self._ch is not None:
            try:
                self.abort()
            except Exception:
                pass


_FRAME_DTYPE = np.dtype([
    ("pos", "<u8"), ("timestamp_ns", "<u8"), ("tag", "<u8"), ("nbytes", "<u8"),
    ("shape", "<u8", (8,)), ("slot", "<u4"), ("dtype", "<u4"), ("ndim", "<u4"),
    ("schema_changed", "<u4"), ("wake_producers", "<u4"), ("reserved", "<u4")])
if _FRAME_DTYPE.itemsize != ffi.sizeof("shm_ring_frame"):  # pragma: no cover
    raise ImportError("shmarray: shm_ring_frame layout changed; rebuild the package")


class FrameBatch(_Lease):
    """A run of frames received by one call (``Channel.recv_many``): consecutive slots of one
    schema, seen as ONE zero-copy read-only array of shape ``(n, *frame_shape)``.

    ``with ch.recv_many(256) as block:`` yields that array and releases every frame at the end
    of the block (one C call); so do ``release()`` and collection. ``seqs``, ``tags`` and
    ``timestamps_ns`` are arrays with one entry per frame.
    """

    __slots__ = ("_ch", "_buf", "_n", "array", "seqs", "tags", "timestamps_ns")

    def __init__(self, ch: Channel, buf: Any, n: int, array: np.ndarray,  # type: ignore[type-arg]
                 meta: np.ndarray) -> None:  # type: ignore[type-arg]
        self._ch: Channel | None = ch
        self._buf = buf
        self._n = n
        self.array = array
        self.seqs = meta["pos"]
        self.tags = meta["tag"]
        self.timestamps_ns = meta["timestamp_ns"]

    def __len__(self) -> int:
        return self._n

    def release(self) -> None:
        """Give every slot of the run back (idempotent). Never blocks."""
        ch = self._ch
        if ch is not None:
            self._ch = None
            ch._release_many(self._buf, self._n)


class Channel:
    """A channel handle (see the module docstring). Handles are not thread-safe."""

    # ------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def create(cls, name: str | None = None, slot_bytes: int = 1 << 20, capacity: int = 8,
               mode: str = "one-to-one", *, max_participants: int = 64, perm: int = 0o600,
               control_messages: int = DEFAULT_MESSAGES,
               control_message_size: int = DEFAULT_MESSAGE_SIZE,
               spin_us: float | None = None, max_subscribers: int = 8,
               policy: str = "block") -> Channel:
        """Create channel ``name`` (a unique name if None), owned by this process: it is
        unlinked at ``unlink()``, at the end of a ``with`` block, or at exit.

        ``slot_bytes`` is the largest frame in bytes; ``capacity`` (a power of two >= 2) the
        number of slots. The ring's pages are reserved at create, so a full /dev/shm fails here
        (LimitError) rather than with SIGBUS mid-stream. ``perm`` is the mode of the segment,
        semaphores and queue. Does not block.

        ``mode="broadcast"`` (one producer, up to ``max_subscribers`` subscribers, each sees
        every frame; ``policy="block" | "drop"``) returns a BroadcastChannel: see
        shmarray/broadcast.py.

        Raises ExistsError, LimitError (/dev/shm, message-queue limits), InvalidNameError,
        ValueError (bad sizes).
        """
        if mode == "broadcast":
            from .broadcast import BroadcastChannel

            return BroadcastChannel.create(
                name, slot_bytes, capacity, mode, max_subscribers=max_subscribers, policy=policy,
                perm=perm, control_messages=control_messages,
                control_message_size=control_message_size, spin_us=spin_us)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES) + ['broadcast']}, not {mode!r}")
        if policy != "block":
            raise ValueError(f"policy={policy!r} is for mode='broadcast' only")
        if name is None:
            name = _names.unique("chan")
        _names.validate(name)
        if capacity < 2 or capacity & (capacity - 1) or capacity > lib.SHM_RING_MAX_CAPACITY:
            raise ValueError(f"capacity must be a power of two in 2..{lib.SHM_RING_MAX_CAPACITY},"
                             f" not {capacity}")
        if not 1 <= slot_bytes <= lib.SHM_RING_MAX_SLOT_BYTES:
            raise ValueError(f"slot_bytes must be 1..{lib.SHM_RING_MAX_SLOT_BYTES}, "
                             f"not {slot_bytes}")
        if not 1 <= max_participants <= lib.SHM_RING_MAX_PARTICIPANTS:
            raise ValueError(f"max_participants must be 1..{lib.SHM_RING_MAX_PARTICIPANTS}")
        params = ffi.new("shm_ring_params *")
        params.mode = MODES[mode]
        params.policy = lib.SHM_RING_POLICY_BLOCK
        params.capacity = capacity
        params.max_participants = max_participants
        params.slot_bytes = slot_bytes
        ring_len = int(lib.shm_ring_size(params))
        if ring_len == 0:
            raise ValueError(f"channel {name!r}: the ring parameters are out of range")
        size = _HEADER + ring_len

        def init(mapping: _segment.Mapping, nonce: int) -> None:
            objects = [_names.sub_object(name, nonce, r) for r in ("data", "space", "ctl")]
            info = ffi.new("shm_seg_info *")
            info.kind = lib.SHM_SEG_KIND_RING
            info.total_size = size
            info.creator_pid = os.getpid()
            info.mode = perm
            info.creator_start = _segment.process_start_time(os.getpid())
            import time

            info.created_ns = time.time_ns()
            info.nonce = nonce
            info.name = name.encode()
            text = "\n".join(objects).encode()
            info.objects = text
            info.objects_len = len(text)
            rc = lib.shm_seg_write(mapping.ptr(), mapping.size, info)
            if rc != 0:
                raise InternalError(f"channel {name!r}: cannot write its header (rc {rc})")
            rc = lib.shm_ring_format(mapping.ptr(_HEADER), ring_len, params)
            if rc != 0:
                raise InternalError(f"channel {name!r}: cannot format its ring: "
                                    f"{ffi.string(lib.shm_ring_strerror(rc)).decode()}")
            _faults.point("channel.header")  # fault point (tests/faults)
            created: list[str] = []
            try:
                for osname in objects[:2]:
                    posix_ipc.Semaphore(osname, posix_ipc.O_CREX, mode=perm,
                                        initial_value=0).close()
                    created.append(osname)
                ControlQueue(objects[2], name, create=True, mode=perm,
                             max_messages=control_messages,
                             max_message_size=control_message_size).close()
            except posix_ipc.ExistentialError as exc:
                _segment.unlink_objects(created)
                raise LimitError(f"channel {name!r}: a semaphore of that incarnation already "
                                 "exists ('shmarray clean' removes orphans)") from exc
            except BaseException:
                _segment.unlink_objects(created)
                raise
            _faults.point("channel.objects")  # fault point (tests/faults)
            lib.shm_seg_publish(mapping.ptr())

        mapping, _nonce = _segment.create(name, size, mode=perm, reserve=True, init=init)
        rc, info = _segment.read_header(mapping)
        if rc != 0:
            raise InternalError(f"channel {name!r}: its own header fails validation (rc {rc})")
        return cls(mapping, info, owner=True, spin_us=spin_us)

    @classmethod
    def open(cls, name: str, timeout: float | None = None, *,
             spin_us: float | None = None) -> Channel:
        """Open channel ``name`` created by another process (or this one).

        Blocks until the channel exists and its creator has finished it, up to ``timeout``
        (None: forever; 0: not at all). Raises NotFoundError, AccessDeniedError,
        CorruptSegmentError.
        """
        mapping, info = _segment.open_mapping(name, False, timeout, "channel")
        if int(info.kind) == lib.SHM_SEG_KIND_BCAST:
            from .broadcast import BroadcastChannel

            return BroadcastChannel(mapping, info, owner=False, spin_us=spin_us)
        if int(info.kind) != lib.SHM_SEG_KIND_RING:
            raise CorruptSegmentError(f"segment {name!r} is a shared array, not a channel: "
                                      f"attach it with shmarray.attach({name!r})")
        return cls(mapping, info, owner=False, spin_us=spin_us)

    def __init__(self, mapping: _segment.Mapping, info: Any, *, owner: bool,
                 spin_us: float | None = None) -> None:
        fields = _segment.header_fields(info)
        self.name: str = fields["name"]
        self._nonce: int = fields["nonce"]
        self._owner_pid = os.getpid() if owner else 0
        self._mapping = mapping
        objects = fields["objects"]
        if len(objects) != 3 or [o.rsplit(".", 1)[-1] for o in objects] != ["data", "space",
                                                                             "ctl"]:
            raise CorruptSegmentError(f"channel {self.name!r} is corrupt: header field 'objects' "
                                      f"lists {objects!r}")
        self._objects = objects
        r = ffi.new("shm_ring_t *")
        rinfo = ffi.new("shm_ring_info *")
        rc = lib.shm_ring_attach(r, mapping.ptr(_HEADER), mapping.size - _HEADER, rinfo)
        if rc != 0:
            raise CorruptSegmentError(
                f"channel {self.name!r} is corrupt: its ring fails validation "
                f"({ffi.string(lib.shm_ring_strerror(rc)).decode()}); 'shmarray clean "
                f"{self.name}' removes it if its owner is dead")
        if _debug():
            lib.shm_ring_set_debug(r, 1)
        self._r = r
        self.mode: str = _MODE_NAMES.get(int(rinfo.mode), "?")
        self.capacity: int = int(rinfo.capacity)
        self.slot_bytes: int = int(rinfo.slot_bytes)
        self._maxp = int(rinfo.max_participants)
        stride = int(rinfo.slot_stride)
        base = _HEADER + int(rinfo.payload_off)
        self._stride = stride
        self._payload_base = base
        payload = np.frombuffer(mapping.mm, np.uint8, count=self.capacity * stride, offset=base)
        self._slots = [payload[i * stride:i * stride + self.slot_bytes]
                       for i in range(self.capacity)]
        try:
            self._data_sem = posix_ipc.Semaphore(objects[0])
            self._space_sem = posix_ipc.Semaphore(objects[1])
            self._lock_fd = os.open(_names.segment_path(self.name), os.O_RDWR | os.O_CLOEXEC)
        except posix_ipc.ExistentialError as exc:
            raise CorruptSegmentError(f"channel {self.name!r}: its semaphores are gone (was it "
                                      "unlinked while being opened?)") from exc
        except OSError as exc:  # EMFILE / ENFILE: a LimitError naming 'ulimit -n'
            raise oserror(exc, f"cannot open channel {self.name!r}") from exc
        self._control: ControlQueue | None = None
        self._role = 0
        self._index = -1
        self._f = ffi.new("shm_ring_frame *")
        self._pinfo = ffi.new("shm_ring_participant_info *")
        self._dropped_out = ffi.new("uint64_t *")
        self._shape_buf = ffi.new("uint64_t[8]")
        # consumer: views per schema; producer: the send schema and loan views
        self._views: list[Any] = [None] * self.capacity
        self._schemas: dict[tuple[int, tuple[int, ...]], list[Any]] = {}
        self._send_key: tuple[Any, ...] = ()  # the (dtype, shape) set in C, by send or loan
        self._loan_last: tuple[Any, ...] | None = None
        self._send_nbytes = 0
        self._loan_views: dict[tuple[str, tuple[int, ...]], list[Any]] = {}
        self._held = 0
        self._loaned = False
        self._closed = False
        self._waits = 0
        self._ended = False
        self._spin = Spin(None if spin_us is None else int(spin_us * 1000))
        _open_handles.add(self)

    # ------------------------------------------------------------------------------------------
    # participants and liveness

    def _what(self) -> str:
        return f"channel {self.name!r}"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self._what()} is closed in this process; open it again with "
                              f"shmarray.Channel.open({self.name!r})")

    def _register(self, role: int) -> None:
        self._check_open()
        if self._role:
            raise ValueError(
                f"this handle of {self._what()} is a {_ROLE_NAMES[self._role]}; a handle is "
                f"either producer or consumer: open another handle "
                f"(shmarray.Channel.open({self.name!r})) for the other role")
        r = self._r
        for _attempt in range(4):
            # Never-used entries first: a dead participant's DEAD record is how its peers learn
            # that it died, so it is reused only when no free entry is left.
            free = [i for i in range(self._maxp)
                    if lib.shm_ring_participant(r, i, self._pinfo) == 0
                    and int(self._pinfo.state) == lib.SHM_RING_PART_FREE]
            order = free + [i for i in range(self._maxp) if i not in set(free)]
            for index in order:
                got = lib.shm_seg_lock_try(self._lock_fd, 1 + index)
                if got == 1:
                    continue
                if got < 0:
                    raise LimitError(f"{self._what()}: cannot take a liveness lock: "
                                     f"{os.strerror(-got)}")
                _faults.point("channel.register")  # fault point (tests/faults)
                rc = self._register_at(index, role)
                if rc == 0:
                    self._role = role
                    self._index = index
                    self._spin.crowded(self._count_active())
                    return
                lib.shm_seg_lock_release(self._lock_fd, 1 + index)
                if rc == lib.SHM_RING_BUSY:
                    break  # the one-to-one role was taken by a live peer, or freed: retry
                if rc == _ENDED:
                    raise StreamEnded(f"{self._what()} has ended: no producer may join it")
                self._raise_rc(rc, "register")
            else:
                raise LimitError(f"{self._what()} has {self._maxp} participants already "
                                 "(create it with a larger max_participants)")
            owner = int(lib.shm_ring_role_owner(r, role))
            if owner != lib.SHM_RING_NO_INDEX and self._reap_one(owner):  # alive: refuse
                lib.shm_ring_participant(r, owner, self._pinfo)
                raise LimitError(
                    f"{self._what()} already has a live {_ROLE_NAMES[role]} (pid "
                    f"{int(self._pinfo.pid)}); mode='one-to-one' allows one at a time: create "
                    "the channel with mode='work-queue' for several")
        raise LimitError(f"{self._what()}: could not register as {_ROLE_NAMES[role]}")

    def _register_at(self, index: int, role: int) -> int:
        """We hold the lock of entry ``index``: any previous occupant is dead."""
        r = self._r
        pid = os.getpid()
        rc = lib.shm_ring_register(r, index, role, pid, _segment.process_start_time(pid))
        if rc == lib.SHM_RING_BUSY and lib.shm_ring_participant(r, index, self._pinfo) == 0 \
                and int(self._pinfo.state) == lib.SHM_RING_PART_ACTIVE:
            self._recover(index)  # a dead occupant's stale entry: reclaim it, then retry
            rc = lib.shm_ring_register(r, index, role, pid, _segment.process_start_time(pid))
        return int(rc)

    def _recover(self, index: int) -> None:
        """Reclaim dead participant ``index`` (its lock is held by this handle)."""
        rc = lib.shm_ring_recover(self._r, index, self._dropped_out)
        if rc < 0:
            self._raise_rc(rc, "recover a dead participant")
        self._post_bits(rc)

    def _post_bits(self, bits: int) -> None:
        if bits & lib.SHM_RING_POST_DATA:
            self._data_sem.release()
        if bits & lib.SHM_RING_POST_SPACE:
            self._space_sem.release()

    def _reap_one(self, index: int) -> bool:
        """True if participant ``index`` lives; else reclaim it (if nobody else is) -> False."""
        fd = self._lock_fd
        held = lib.shm_seg_lock_probe(fd, 1 + index)
        if held == 1:
            return True
        if lib.shm_seg_lock_try(fd, 1 + index) != 0:
            return True  # someone else just took it: alive (or being reclaimed)
        try:
            _faults.point("channel.recover")  # fault point (tests/faults)
            if lib.shm_ring_participant(self._r, index, self._pinfo) == 0 and \
                    int(self._pinfo.state) == lib.SHM_RING_PART_ACTIVE:
                self._recover(index)
        finally:
            lib.shm_seg_lock_release(fd, 1 + index)
        return False

    def _peers(self) -> tuple[dict[int, int], dict[int, int], list[int]]:
        """Probe every other participant, reclaiming dead ones: (live, dead counts by role,
        pids of the dead)."""
        live = {_PRODUCER: 0, _CONSUMER: 0}
        dead = {_PRODUCER: 0, _CONSUMER: 0}
        pids: list[int] = []
        p = self._pinfo
        for i in range(self._maxp):
            if i == self._index or lib.shm_ring_participant(self._r, i, p) != 0:
                continue
            state, role = int(p.state), int(p.role)
            if role not in live:
                continue
            if state == lib.SHM_RING_PART_ACTIVE:
                if self._reap_one(i):
                    live[role] += 1
                    continue
                state = lib.SHM_RING_PART_DEAD
            if state == lib.SHM_RING_PART_DEAD:
                dead[role] += 1
                pids.append(int(p.pid))
        return live, dead, pids

    def _count_active(self) -> int:
        n = 0
        for i in range(self._maxp):
            if lib.shm_ring_participant(self._r, i, self._pinfo) == 0 and \
                    int(self._pinfo.state) == lib.SHM_RING_PART_ACTIVE:
                n += 1
        return n

    def _between_recv(self) -> BaseException | None:
        live, dead, pids = self._peers()
        if live[_PRODUCER] == 0 and dead[_PRODUCER] > 0:
            return PeerDiedError(
                f"the producer of {self._what()} died without end() (pid "
                f"{', '.join(map(str, pids))}); every frame it committed was received")
        return None

    def _between_send(self) -> BaseException | None:
        live, dead, pids = self._peers()
        if live[_CONSUMER] == 0 and dead[_CONSUMER] > 0:
            return PeerDiedError(
                f"every consumer of {self._what()} died (pid {', '.join(map(str, pids))}) and "
                "the ring is full; open a new consumer, or unlink the channel")
        return None

    def _raise_rc(self, rc: int, op: str) -> None:
        msg = ffi.string(lib.shm_ring_strerror(rc)).decode()
        if rc == lib.SHM_RING_CORRUPT:
            raise CorruptSegmentError(f"{self._what()} is corrupt ({op}: {msg}); 'shmarray "
                                      f"clean {self.name}' removes it once its owner is dead")
        if rc == lib.SHM_RING_TOO_LARGE:
            raise FrameTooLargeError(f"{self._what()}: {op}: {msg}")
        if rc == lib.SHM_RING_LIMIT:
            raise LimitError(
                f"{self._what()}: this consumer already holds {self._held} frames, the most a "
                f"ring of capacity {self.capacity} allows (capacity - 1): release some (leave "
                "their with blocks), or use recv_copy()")
        if rc == _ENDED:
            raise StreamEnded(f"{self._what()}: end of stream")
        if rc == lib.SHM_RING_BAD_ARG and op == "release":
            # A Frame releases its slot once (release() is idempotent), so a slot that no longer
            # shows our hold was overwritten by another process.
            raise CorruptSegmentError(
                f"{self._what()} is corrupt (release: the slot of a frame this handle held was "
                f"overwritten); 'shmarray clean {self.name}' removes it once its owner is dead")
        raise InternalError(f"{self._what()}: {op} failed: {msg} (rc {rc})")

    # ------------------------------------------------------------------------------------------
    # producer side

    def _set_schema(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> int:
        if len(shape) > lib.SHM_RING_MAX_NDIM:
            raise ValueError(f"{len(shape)} dimensions; a channel frame has at most "
                             f"{lib.SHM_RING_MAX_NDIM}")
        code = _dtype_code(dtype)
        buf = self._shape_buf
        for i, s in enumerate(shape):
            buf[i] = s
        nbytes = int(lib.shm_ring_set_schema(self._r, code, len(shape), buf))
        if nbytes < 0:
            if nbytes == lib.SHM_RING_TOO_LARGE:
                size = math.prod(shape) * dtype.itemsize
                raise FrameTooLargeError(
                    f"a frame of {size:,} bytes ({dtype}{list(shape)}) does not fit the "
                    f"{self.slot_bytes:,}-byte slots of {self._what()}: create the channel "
                    "with a larger slot_bytes")
            self._raise_rc(nbytes, "set the frame schema")
        return nbytes

    def _full_error(self, immediate: bool) -> BaseException:
        if immediate:
            return WouldBlockError(f"{self._what()} is full ({self.capacity} frames): the "
                                   "consumer has not released any")
        return WaitTimeoutError(f"{self._what()} stayed full: the consumer did not release a "
                                "slot in time")

    def send(self, frame: Any, timeout: float | None = None, tag: int = 0) -> None:
        """Copy ``frame`` (any array or buffer) into a slot and publish it.

        Blocks while the ring is full, up to ``timeout`` (None: forever; 0: WouldBlockError;
        expiry: WaitTimeoutError). A Fortran-ordered or strided array is sent as its C-ordered
        copy (it arrives C-contiguous with the same values). Raises FrameTooLargeError,
        PeerDiedError (every consumer died and the ring is full), StreamEnded (this handle
        called end()), TypeError (a dtype channels cannot carry)."""
        if self._role != _PRODUCER:
            self._register(_PRODUCER)
        arr = frame if type(frame) is np.ndarray else _as_array(frame)
        key = (arr.dtype, arr.shape)
        if key != self._send_key:
            self._send_nbytes = self._set_schema(arr.dtype, arr.shape)
            self._send_key = key
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        src = _from_buffer(arr)
        rc = _send_c(self._r, src, self._send_nbytes, tag, 0)
        if rc < 0:
            rc = self._send_wait(rc, src, tag, timeout)
        if rc & 1:
            if _FAULTS:
                _faults.point("channel.commit.post")  # fault point (tests/faults)
            self._data_sem.release()

    def _send_wait(self, rc: int, src: Any, tag: int, timeout: float | None) -> int:
        if rc != _FULL:
            self._raise_rc(rc, "send")
        r, n = self._r, self._send_nbytes
        self._waits += 1
        rc = wait(lambda spin: int(lib.shm_ring_send(r, src, n, tag, spin)), _FULL,
                  lambda: lib.shm_ring_arm(r, lib.SHM_RING_WAIT_SPACE),
                  lambda: lib.shm_ring_disarm(r, lib.SHM_RING_WAIT_SPACE),
                  self._space_sem, timeout, self._spin, self._between_send, self._full_error)
        if rc < 0:
            self._raise_rc(rc, "send")
        return rc

    def send_many(self, frames: Any, timeout: float | None = None, tag: int = 0) -> None:
        """Send each row of ``frames`` (shape ``(n, *frame_shape)``) as its own frame, in order,
        with one C call per run of free slots; frame i carries ``tag + i``. The fast path for
        small frames.

        Blocks while the ring is full, up to ``timeout`` for each wait (as send); on a timeout
        the frames sent so far stay sent. Raises as send()."""
        if self._role != _PRODUCER:
            self._register(_PRODUCER)
        arr = _as_array(frames)
        if arr.ndim < 1:
            raise ValueError("send_many needs an array of frames (one per row), not a 0-d array")
        n = int(arr.shape[0])
        if n == 0:
            return
        key = (arr.dtype, arr.shape[1:])
        if key != self._send_key:
            self._send_nbytes = self._set_schema(arr.dtype, arr.shape[1:])
            self._send_key = key
        arr = np.ascontiguousarray(arr)
        nbytes = self._send_nbytes
        base = ffi.cast("char *", _from_buffer(arr))
        r = self._r
        sent = 0
        while sent < n:
            src = base + sent * nbytes
            t = (tag + sent) & 0xFFFFFFFFFFFFFFFF
            left = n - sent
            rc = int(lib.shm_ring_send_many(r, src, nbytes, left, t, 0))
            if rc < 0:
                if rc != _FULL:
                    self._raise_rc(rc, "send_many")
                self._waits += 1

                def op(spin: int, src: Any = src, left: int = left, t: int = t) -> int:
                    return int(lib.shm_ring_send_many(r, src, nbytes, left, t, spin))

                rc = wait(op,
                          _FULL, lambda: lib.shm_ring_arm(r, lib.SHM_RING_WAIT_SPACE),
                          lambda: lib.shm_ring_disarm(r, lib.SHM_RING_WAIT_SPACE),
                          self._space_sem, timeout, self._spin, self._between_send,
                          self._full_error)
                if rc < 0:
                    self._raise_rc(rc, "send_many")
            sent += rc >> 1
            if rc & 1:
                self._data_sem.release()

    def loan(self, shape: Any, dtype: Any = np.uint8, timeout: float | None = None,
             tag: int = 0) -> Loan:
        """Loan a free slot as a writable ``dtype`` array of ``shape``, to fill in place (zero
        copy): ``with ch.loan(shape, dtype) as out: out[...] = ...`` commits at the end of the
        block, or aborts on an exception. One loan at a time per handle.

        Blocks while the ring is full, up to ``timeout`` (as send). Raises as send."""
        if self._role != _PRODUCER:
            self._register(_PRODUCER)
        if self._loaned:
            raise LimitError(f"{self._what()}: this handle already has a loan outstanding; "
                             "commit or abort it first (one loan at a time per handle)")
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
        r = self._r
        try:
            slot = int(lib.shm_ring_claim(r))
            if slot < 0:
                if slot != _FULL:
                    self._raise_rc(slot, "loan")
                self._waits += 1
                slot = wait(lambda spin: int(lib.shm_ring_claim_spin(r, spin)), _FULL,
                            lambda: lib.shm_ring_arm(r, lib.SHM_RING_WAIT_SPACE),
                            lambda: lib.shm_ring_disarm(r, lib.SHM_RING_WAIT_SPACE),
                            self._space_sem, timeout, self._spin, self._between_send,
                            self._full_error)
                if slot < 0:
                    self._raise_rc(slot, "loan")
            if _FAULTS:
                _faults.point("channel.loan")  # fault point (tests/faults)
            view = views[slot]
            if view is None:
                view = views[slot] = self._slots[slot][:nbytes].view(dt).reshape(shp)
            loan = Loan(self, view, tag)
            self._loaned = True
            return loan
        except BaseException:
            # e.g. KeyboardInterrupt from a signal handler after the claim: give the slot back,
            # or this handle keeps a claim it does not know of (every later loan/send fails and,
            # in a work queue, consumers stall at that position)
            if not self._loaned and lib.shm_ring_abort(r) > 0:
                self._data_sem.release()
            raise

    def _commit(self, tag: int) -> None:
        self._loaned = False
        rc = lib.shm_ring_commit(self._r, tag)
        if rc < 0:
            self._raise_rc(rc, "commit")
        if rc:
            if _FAULTS:
                _faults.point("channel.commit.post")  # fault point (tests/faults)
            self._data_sem.release()

    def _abort(self) -> None:
        self._loaned = False
        if self._closed:
            return
        rc = lib.shm_ring_abort(self._r)
        if rc > 0:
            self._data_sem.release()  # a tombstone was published: wake a consumer to skip it

    def end(self) -> None:
        """End of stream: once every frame committed before it is received, consumers' recv()
        raises StreamEnded and iteration stops. In a work queue the stream ends when every
        registered producer has called end(). Sticky; never blocks."""
        if self._role != _PRODUCER:
            self._register(_PRODUCER)
        if self._loaned:
            raise LimitError(f"{self._what()}: commit or abort the outstanding loan before end()")
        n = lib.shm_ring_end(self._r)
        if n < 0:
            self._raise_rc(n, "end")
        _faults.point("channel.end")  # fault point (tests/faults)
        for _ in range(n):  # wake every sleeping consumer: each will find the end
            self._data_sem.release()
        self._ended = True

    # ------------------------------------------------------------------------------------------
    # consumer side

    def _empty_error(self, immediate: bool) -> BaseException:
        if immediate:
            return WouldBlockError(f"{self._what()} is empty")
        return WaitTimeoutError(f"no frame arrived on {self._what()} in time")

    def _schema_views(self, f: Any = None) -> list[Any]:
        if f is None:
            f = self._f
        shape = tuple(int(f.shape[i]) for i in range(int(f.ndim)))
        key = (int(f.dtype), shape)
        views = self._schemas.get(key)
        if views is None:
            if len(self._schemas) >= _MAX_SCHEMAS:
                self._schemas.clear()
            views = self._schemas[key] = [None] * self.capacity
        self._views = views
        return views

    def _view(self, slot: int) -> Any:
        f = self._f
        dt = _DTYPE_OF[int(f.dtype)]
        shape = tuple(int(f.shape[i]) for i in range(int(f.ndim)))
        v = self._slots[slot][:int(f.nbytes)].view(dt).reshape(shape)
        v.flags.writeable = False
        self._views[slot] = v
        return v

    def recv(self, timeout: float | None = None) -> Frame:
        """Receive the next frame as a Frame lease (zero copy; see Frame).

        Blocks while the ring is empty, up to ``timeout`` (None: forever; 0: WouldBlockError;
        expiry: WaitTimeoutError). Raises StreamEnded once the stream has ended and every frame
        was received, PeerDiedError when the producer(s) died without end() and the ring is
        drained, LimitError when this handle already holds capacity - 1 frames."""
        if self._role != _CONSUMER:
            self._register(_CONSUMER)
        f = self._f
        rc = _recv(self._r, f, 0)
        if not 0 <= rc < _FLAGS:
            rc = self._recv_slow(rc, timeout)
        view = self._views[rc]
        if view is None:
            view = self._view(rc)
        self._held += 1
        return Frame(self, rc, f.pos, f.timestamp_ns, f.tag, view)

    def _recv_slow(self, rc: int, timeout: float | None) -> int:
        """recv() off the fast path: wait, post, switch schema, or raise. Returns the slot."""
        f = self._f
        if rc == _EMPTY:
            if timeout == 0:
                raise self._empty_error(True)
            r = self._r
            self._waits += 1
            rc = wait(lambda spin: int(_recv(r, f, spin)), _EMPTY,
                      lambda: lib.shm_ring_arm(r, lib.SHM_RING_WAIT_DATA),
                      lambda: lib.shm_ring_disarm(r, lib.SHM_RING_WAIT_DATA),
                      self._data_sem, timeout, self._spin, self._between_recv,
                      self._empty_error)
        if rc < 0:
            if f.wake_producers:
                self._space_sem.release()
            self._raise_rc(rc, "recv")
        if rc & lib.SHM_RING_RECV_WAKE:
            self._space_sem.release()
        if rc & _FLAGS:
            self._schema_views()
        return int(rc & _SLOT_MASK)

    def recv_many(self, max_frames: int = 64, timeout: float | None = None) -> FrameBatch:
        """Receive up to ``max_frames`` frames in one call, as a FrameBatch: one zero-copy
        array ``(n, *frame_shape)`` over consecutive slots. The fast path for small frames.

        Waits (as recv()) only for the first frame; then takes what is already committed, up
        to the ring's wrap point or a change of schema (so n may be less than asked). Raises as
        recv()."""
        if self._role != _CONSUMER:
            self._register(_CONSUMER)
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, not {max_frames}")
        k = min(max_frames, self.capacity - 1 - self._held)
        if k < 1:
            self._raise_rc(lib.SHM_RING_LIMIT, "recv_many")
        r = self._r
        buf = ffi.new("shm_ring_frame[]", k)
        n = int(lib.shm_ring_acquire_many(r, buf, k, 0))
        if n == _EMPTY and timeout != 0:
            self._waits += 1
            n = wait(lambda spin: int(lib.shm_ring_acquire_many(r, buf, k, spin)), _EMPTY,
                     lambda: lib.shm_ring_arm(r, lib.SHM_RING_WAIT_DATA),
                     lambda: lib.shm_ring_disarm(r, lib.SHM_RING_WAIT_DATA),
                     self._data_sem, timeout, self._spin, self._between_recv,
                     self._empty_error)
        f0 = buf[0]
        if f0.wake_producers:
            self._space_sem.release()
        if n < 0:
            if n == _EMPTY:
                raise self._empty_error(True)
            self._raise_rc(n, "recv_many")
        self._held += n
        if f0.schema_changed:
            self._schema_views(f0)  # keep recv()'s view cache in step with the C side
        dt = _DTYPE_OF[int(f0.dtype)]
        shape = tuple(int(f0.shape[i]) for i in range(int(f0.ndim)))
        inner = []
        step = dt.itemsize
        for dim in reversed(shape):
            inner.append(step)
            step *= dim
        block = np.ndarray((n, *shape), dt, buffer=self._mapping.mm,
                           offset=self._payload_base + int(f0.slot) * self._stride,
                           strides=(self._stride, *reversed(inner)))
        block.flags.writeable = False
        meta = np.frombuffer(ffi.buffer(buf, n * _FRAME_DTYPE.itemsize), _FRAME_DTYPE)
        return FrameBatch(self, buf, n, block, meta)

    def _release_many(self, buf: Any, n: int) -> None:
        if self._closed:
            return
        rc = lib.shm_ring_release_many(self._r, buf, n)
        if rc < 0:
            self._raise_rc(rc, "release")
        self._held -= n
        if rc:
            self._space_sem.release()

    def try_recv(self) -> Frame | None:
        """recv() that never waits: the next frame, or None when the ring is empty. Raises
        StreamEnded once ended and drained, PeerDiedError as recv()."""
        try:
            return self.recv(timeout=0)
        except WouldBlockError:
            return None

    def recv_copy(self, timeout: float | None = None) -> np.ndarray:  # type: ignore[type-arg]
        """Receive the next frame as an ordinary array of your own (one copy); the slot is
        released at once. Blocks and raises as recv()."""
        frame = self.recv(timeout)
        try:
            return frame.array.copy()
        finally:
            frame.release()

    def recv_into(self, out: np.ndarray, timeout: float | None = None) -> Frame:  # type: ignore[type-arg]
        """Copy the next frame into ``out`` (same shape and dtype, or a C-contiguous buffer of
        exactly the frame's byte size) and release its slot. Returns the released Frame (for
        seq, tag, timestamp_ns). Blocks and raises as recv(); ValueError if ``out`` does not
        fit (the frame is then released unread, and lost)."""
        frame = self.recv(timeout)
        try:
            src = frame.array
            if out.shape == src.shape and out.dtype == src.dtype:
                np.copyto(out, src)
            elif out.flags.c_contiguous and out.nbytes == src.nbytes:
                out.reshape(-1).view(np.uint8)[:] = src.reshape(-1).view(np.uint8)
            else:
                raise ValueError(f"recv_into: frame {src.dtype}{list(src.shape)} does not fit "
                                 f"out {out.dtype}{list(out.shape)}")
            return frame
        finally:
            frame.release()

    def _release(self, slot: int, pos: int) -> None:
        if self._closed:
            return
        rc = _release_c(self._r, slot, pos)
        self._held -= 1
        if rc:
            if rc < 0:
                self._held += 1
                self._raise_rc(rc, "release")
            if _FAULTS:
                _faults.point("channel.release.post")  # fault point (tests/faults)
            self._space_sem.release()

    def __iter__(self) -> Iterator[np.ndarray]:  # type: ignore[type-arg]
        """Iterate over frames as plain read-only views, each released at the next step (or
        when the loop ends). Stops at end of stream."""
        while True:
            try:
                frame = self.recv()
            except StreamEnded:
                return
            try:
                yield frame.array
            finally:
                frame.release()

    # ------------------------------------------------------------------------------------------
    # the rest

    @property
    def control(self) -> ControlQueue:
        """The channel's control queue (the owner's inbox); opened on first use."""
        self._check_open()
        if self._control is None:
            self._control = ControlQueue(self._objects[2], self.name)
        return self._control

    def stats(self) -> dict[str, Any]:
        """Counters: this handle's (sent, received, waits, held) and the channel's (committed,
        consumed, dropped, fill, ended) and its participants with liveness."""
        self._check_open()
        st = ffi.new("shm_ring_status_info *")
        lib.shm_ring_status(self._r, st)
        peers = []
        p = self._pinfo
        for i in range(self._maxp):
            if lib.shm_ring_participant(self._r, i, p) != 0 or int(p.state) == 0:
                continue
            state = _STATE_NAMES.get(int(p.state), "?")
            alive = i == self._index or lib.shm_seg_lock_probe(self._lock_fd, 1 + i) == 1
            peers.append({"index": i, "role": _ROLE_NAMES.get(int(p.role), "?"),
                          "pid": int(p.pid), "state": state, "alive": bool(alive),
                          "frames": int(p.frames), "self": i == self._index})
        mine = next((p["frames"] for p in peers if p["self"]), 0)
        enq, deq = int(st.enqueue_pos), int(st.dequeue_pos)
        return {
            "name": self.name, "mode": self.mode, "capacity": self.capacity,
            "slot_bytes": self.slot_bytes,
            "role": _ROLE_NAMES.get(self._role, "none"),
            "sent": mine if self._role == _PRODUCER else 0,
            "received": mine if self._role == _CONSUMER else 0, "waits": self._waits,
            "held": self._held,
            "committed": enq, "consumed": deq, "fill": max(0, min(enq - deq, self.capacity)),
            "dropped": int(st.dropped), "ended": bool(st.eos), "peers": peers,
        }

    def _forked(self) -> None:
        try:
            os.close(self._lock_fd)
        except OSError:
            pass
        self._closed = True
        self._role = 0

    def close(self) -> None:
        """Leave the channel: frames this handle still holds are released (and counted as
        dropped if unread), an outstanding loan is aborted, and this process's descriptors are
        closed. The channel lives on until unlink(). Views of slots stay mapped (never a
        segfault) but their contents may change. Idempotent; never blocks."""
        if self._closed:
            return
        _faults.point("channel.close")  # fault point (tests/faults)
        if self._role:
            rc = lib.shm_ring_unregister(self._r)
            if rc > 0:
                self._post_bits(rc)
            self._role = 0
        self._closed = True
        for sem in (self._data_sem, self._space_sem):
            try:
                sem.close()
            except posix_ipc.Error:
                pass
        if self._control is not None:
            self._control.close()
        try:
            os.close(self._lock_fd)
        except OSError:
            pass
        _open_handles.discard(self)

    def unlink(self) -> None:
        """Remove the channel (its segment and every semaphore and queue its header lists);
        processes that have it open keep working on their mapping. Works after close(); a
        second unlink raises NotFoundError."""
        _segment.unlink(self.name, self._nonce)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: Any) -> None:
        """Close; the creating process also unlinks."""
        self.close()
        if self._owner_pid == os.getpid() and _segment.owned_nonce(self.name) == self._nonce:
            try:
                self.unlink()
            except Exception:
                pass

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else _ROLE_NAMES.get(self._role, "unregistered")
        return (f"<Channel {self.name!r} {self.mode} capacity={self.capacity} "
                f"slot_bytes={self.slot_bytes} {state}>")


def _describe(mapping: Any, info: Any) -> str:
    """Detail text for `shmarray ls`: mode, capacity, slot size, fill, participants."""
    r = ffi.new("shm_ring_t *")
    rinfo = ffi.new("shm_ring_info *")
    rc = lib.shm_ring_attach(r, mapping.ptr(_HEADER), mapping.size - _HEADER, rinfo)
    if rc != 0:
        return f"ring corrupt ({ffi.string(lib.shm_ring_strerror(rc)).decode()})"
    st = ffi.new("shm_ring_status_info *")
    lib.shm_ring_status(r, st)
    fill = max(0, min(int(st.enqueue_pos) - int(st.dequeue_pos), int(rinfo.capacity)))
    parts = []
    p = ffi.new("shm_ring_participant_info *")
    fd = os.open(_names.segment_path(mapping.name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        for i in range(int(rinfo.max_participants)):
            if lib.shm_ring_participant(r, i, p) != 0:
                continue
            state = int(p.state)
            if state in (lib.SHM_RING_PART_FREE,):
                continue
            role = _ROLE_NAMES.get(int(p.role), "?")
            if state == lib.SHM_RING_PART_ACTIVE:
                alive = lib.shm_seg_lock_probe(fd, 1 + i) == 1
                status = "alive" if alive else "dead"
            else:
                status = _STATE_NAMES.get(state, "?")
                if state == lib.SHM_RING_PART_ENDED:
                    continue
            parts.append(f"{role} {int(p.pid)} {status}")
    finally:
        os.close(fd)
    mode = _MODE_NAMES.get(int(rinfo.mode), "?")
    slot = int(rinfo.slot_bytes)
    ended = ", ended" if int(st.eos) else ""
    return (f"{mode} cap {int(rinfo.capacity)} x {slot:,} B, fill {fill}{ended}; "
            + (", ".join(parts) if parts else "no participants"))


_registry.describers[lib.SHM_SEG_KIND_RING] = _describe
