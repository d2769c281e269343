"""The consuming half of a channel, shared by the ring modes (which receive on the channel
handle itself) and broadcast subscribers: ``recv`` (a zero-copy Frame lease, or a private
copy), ``try_recv``, ``recv_copy``, ``recv_into``, iteration, and ``recv_many`` / ``latest``
where the protocol has them.

A zero-copy receive is one C call that takes the frame and wraps it in its lease (csrc/lease.c),
so the frame can never be held by nobody. The lifetime rule is the Frame's: its slot goes back
when the frame is released and no view of it is alive.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from .._os.native import DTYPE_OF, ffi, lease, lib
from .._os.wait import Spin, wait
from ..errors import LimitError, StreamEnded, WaitTimeoutError, WouldBlockError
from .handle import CONSUMER, PRODUCER, Handle
from .lease import Frame, copied

_EMPTY = lib.SHM_CHAN_EMPTY
_RESIZE = lib.SHM_CHAN_RESIZE
_DATA = lib.SHM_CHAN_WAIT_DATA
_recv = lease.recv
_recv_c = lib.shm_chan_recv
_latest_c = lib.shm_chan_latest
_refcount = sys.getrefcount

#: numpy mirror of shm_chan_frame (csrc/chan.h)
FRAME_DTYPE = np.dtype([
    ("pos", "<u8"), ("timestamp_ns", "<u8"), ("tag", "<u8"), ("nbytes", "<u8"),
    ("shape", "<u8", (8,)), ("lost", "<u8"), ("skipped", "<u8"), ("gen", "<u8"),
    ("slot", "<u4"), ("dtype", "<u4"), ("ndim", "<u4"), ("held", "<u4")])
if FRAME_DTYPE.itemsize != ffi.sizeof("shm_chan_frame"):  # pragma: no cover
    raise ImportError("shmarray: shm_chan_frame layout changed; rebuild the package")


class Receiver:
    """Mixin: receive frames through ``self._rx`` (a Handle registered as consumer).

    The class using it provides ``_rx``, ``_spin``, ``_what()``, ``_raise_rc()``, the
    liveness hook ``_between_recv()`` and the frame type; ``_copy_default`` says whether
    ``recv()`` copies by default (broadcast policy "drop")."""

    _rx: Handle
    _spin: Spin
    _frame_type: Any = Frame
    _copy_default = False
    _rx_ready = False
    _copy_key: tuple[Any, ...] = ()
    _scratch: np.ndarray[Any, Any] | None = None
    _dummy: Any = None

    if TYPE_CHECKING:  # provided by the class using the mixin
        def _what(self) -> str: ...

        def _raise_rc(self, rc: int, op: str) -> None: ...

        def _between_recv(self) -> BaseException | None: ...

        def _check_open(self) -> None: ...

    def _consumer(self) -> Handle:
        """Register as consumer on first use (once: the C handle is the record)."""
        rx = self._rx
        self._check_open()
        role = rx.role
        if role == PRODUCER:
            raise ValueError(
                f"this handle of {self._what()} is a producer; a handle is either producer or "
                "consumer: open another handle (shmarray.Channel.open) for the other role")
        if role != CONSUMER:
            rx.register(CONSUMER)
            self._spin.crowded(rx.count_active())
        self._rx_ready = True
        return rx

    def _empty_error(self, immediate: bool) -> BaseException:
        if immediate:
            return WouldBlockError(f"{self._what()} has no frame for this consumer now")
        return WaitTimeoutError(f"no frame arrived on {self._what()} in time")

    def _recv_error(self, rc: int, op: str) -> None:
        self._check_open()  # a handle closed (or inherited through fork) says so, first
        if rc == _EMPTY:
            raise self._empty_error(True)
        if rc == lib.SHM_CHAN_ENDED:
            raise StreamEnded(f"{self._what()}: end of stream")
        if rc == lib.SHM_CHAN_LIMIT:
            held = int(self._rx.self_info().held)
            raise LimitError(
                f"{self._what()}: this consumer holds {held} frames; a ring of "
                f"{self._rx.seg.capacity} slots lets it hold at most capacity - 1, none a full "
                "lap old (the oldest keeps the slot the next frame needs): release some (leave "
                "their with blocks), and mind that views keep their frames: copy what you keep "
                "(recv_copy(), np.array(view))")
        self._raise_rc(rc, op)

    def _wait_data(self, op: Any, timeout: float | None) -> Any:
        return wait(op, _EMPTY, self._rx.h, _DATA, timeout, self._spin, self._between_recv,
                    self._empty_error)

    # -- zero copy -------------------------------------------------------------------------

    def _take(self, timeout: float | None, latest: bool, writable: bool = False) -> Any:
        """The next (or newest) frame as a Frame lease over the slot."""
        rx = self._rx if self._rx_ready else self._consumer()
        seg = rx.seg
        payload = seg.rw_payload if writable else seg.ro_payload
        ft = self._frame_type
        f = _recv(rx.addr, rx, ft, payload, writable, 0, latest)
        if type(f) is int:
            if f == _EMPTY and timeout != 0:
                addr = rx.addr
                f = self._wait_data(lambda spin: _recv(addr, rx, ft, payload, writable, spin,
                                                       latest), timeout)
            if type(f) is int:
                self._recv_error(f, "latest" if latest else "recv")
        return f

    def _try_step(self) -> Callable[[], Any]:
        """The zero-copy receive's one C step with timeout=0, bound to this handle (which it
        registers first): a Frame, or an int status that ``_recv_error(status, "recv")``
        raises as (WouldBlockError for "nothing now"). The asyncio twin's try: nothing runs
        in Python between the call and the C receive. Safe after close: the C core refuses
        an unregistered handle (a status), and this keeps the handle alive."""
        rx = self._rx if self._rx_ready else self._consumer()
        return partial(_recv, rx.addr, rx, self._frame_type, rx.seg.ro_payload, False, 0,
                       False)

    # -- copies ----------------------------------------------------------------------------

    def _copy_into(self, buf: np.ndarray[Any, Any], fr: Any, timeout: float | None,
                   latest: bool) -> int:
        """One C receive (with its wait) copying into ``buf``: the slot, or RESIZE (nothing
        taken; ``fr`` then describes the frame)."""
        rx = self._rx if self._rx_ready else self._consumer()
        h = rx.h
        if buf.nbytes:
            dst = ffi.from_buffer(buf)
        else:
            if self._dummy is None:
                self._dummy = ffi.new("char[1]")
            dst = self._dummy
        n = buf.nbytes
        fn = _latest_c if latest else _recv_c
        rc = int(fn(h, fr, dst, n, 0))
        if rc == _EMPTY and timeout != 0:
            rc = self._wait_data(lambda spin: int(fn(h, fr, dst, n, spin)), timeout)
        if rc < 0 and rc != _RESIZE:
            self._recv_error(rc, "latest" if latest else "recv")
        return rc

    def _received_copy(self, timeout: float | None, latest: bool = False,
                       scratch: bool = False) -> Any:
        """The next (or newest) frame as a Frame holding a private copy (validated: never
        torn). ``scratch``: into the iteration buffer (``_scratch``) when it fits."""
        fr = ffi.new("shm_chan_frame *")
        key = self._copy_key
        while True:
            buf = self._scratch if scratch else None
            if buf is None or (buf.dtype, buf.shape) != key:
                buf = np.empty(key[1], key[0]) if key else np.empty(0, np.uint8)
            rc = self._copy_into(buf, fr, timeout, latest)
            if rc != _RESIZE:
                break
            key = self._copy_key = self._frame_key(fr)
        got = self._frame_key(fr)
        if (buf.dtype, buf.shape) != got:  # same byte size, another shape or dtype
            buf = buf.reshape(-1).view(np.uint8).view(got[0]).reshape(got[1])
            self._copy_key = got
        if scratch:
            self._scratch = buf
        return copied(self._frame_type, buf, int(fr.pos), int(fr.timestamp_ns), int(fr.tag))

    @staticmethod
    def _frame_key(fr: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
        return DTYPE_OF[int(fr.dtype)], tuple(int(fr.shape[i]) for i in range(int(fr.ndim)))

    # -- the public calls ----------------------------------------------------------------------

    def recv(self, timeout: float | None = None, *, copy: bool | None = None) -> Any:
        """Receive the next frame as a Frame.

        By default a zero-copy lease on the slot (read-only view; ``with ch.recv() as view:``;
        a view keeps its frame), under broadcast policy "drop" a private copy, validated (never
        torn). ``copy=True`` always copies; ``copy=False`` under "drop" gives a zero-copy view
        that must be checked with ``frame.valid()`` after use.

        Blocks while there is nothing to receive, up to ``timeout`` (None: forever; 0:
        WouldBlockError; expiry: WaitTimeoutError). Raises StreamEnded once the stream ended
        and every frame owed was received, PeerDiedError when the producer(s) died without
        end() (after the same drain), LimitError when this consumer holds capacity - 1 frames
        (views keep their frames), ClosedError."""
        if copy if copy is not None else self._copy_default:
            self._check_open()
            return self._received_copy(timeout)
        return self._take(timeout, False)

    def try_recv(self, *, copy: bool | None = None) -> Any:
        """recv() that never waits: the next frame, or None when there is none now. Raises
        StreamEnded once ended and drained, PeerDiedError as recv()."""
        try:
            return self.recv(timeout=0, copy=copy)
        except WouldBlockError:
            return None

    def recv_copy(self, timeout: float | None = None) -> np.ndarray[Any, Any]:
        """Receive the next frame as an ordinary array of your own (one copy, validated; the
        slot is released at once). Blocks and raises as recv()."""
        self._check_open()
        arr: np.ndarray[Any, Any] = self._received_copy(timeout).array
        return arr

    def recv_into(self, out: np.ndarray[Any, Any], timeout: float | None = None) -> Any:
        """Copy the next frame into ``out`` and release its slot: ``out`` is a writeable
        C-contiguous array of exactly the frame's byte size (its shape and dtype are not
        imposed), or any writeable array of the frame's shape and dtype. Returns the released
        Frame (for seq, tag, timestamp_ns), whose ``array`` is ``out``. Blocks and raises as
        recv(); ValueError when ``out`` does not fit (the frame is not consumed)."""
        self._check_open()
        if not isinstance(out, np.ndarray) or not out.flags.writeable:
            raise ValueError("recv_into needs a writeable numpy array")
        if not out.flags.c_contiguous:
            frame = self._take(timeout, False)
            try:
                src = frame.array
                if out.shape != src.shape or out.dtype != src.dtype:
                    raise ValueError(f"recv_into: frame {src.dtype}{list(src.shape)} does not "
                                     f"fit out {out.dtype}{list(out.shape)} (a non-contiguous "
                                     "out must have the frame's shape and dtype; the frame is "
                                     "lost)")
                np.copyto(out, src)
                return copied(self._frame_type, out, frame.seq, frame.timestamp_ns, frame.tag)
            finally:
                frame.release()
        fr = ffi.new("shm_chan_frame *")
        rc = self._copy_into(out, fr, timeout, False)
        if rc == _RESIZE:
            dt, shape = self._frame_key(fr)
            raise ValueError(f"recv_into: frame {dt}{list(shape)} ({int(fr.nbytes):,} bytes) "
                             f"does not fit out {out.dtype}{list(out.shape)} ({out.nbytes:,} "
                             "bytes); the frame was not consumed")
        return copied(self._frame_type, out, int(fr.pos), int(fr.timestamp_ns), int(fr.tag))

    def __iter__(self) -> Iterator[np.ndarray[Any, Any]]:
        """Iterate over frames as read-only arrays, each let go at the next step (or when the
        loop ends): a view kept past its step keeps its frame (zero copy), or its own copy
        (broadcast "drop": frames are copied, into one buffer reused from step to step while
        nobody keeps what it yielded). Stops at end of stream."""
        if self._copy_default:
            yield from self._iter_copies()
            return
        while True:
            try:
                frame = self._take(None, False)
            except StreamEnded:
                return
            try:
                yield frame.array
            finally:
                frame._step()  # the loop variable may still name the array: allowed for

    def _iter_copies(self) -> Iterator[np.ndarray[Any, Any]]:
        prev: np.ndarray[Any, Any] | None = None
        while True:
            self._check_open()
            # Reuse the buffer only if nothing but the loop variable refers to the view it was
            # last handed out as: `prev` here, the loop variable, getrefcount's argument; the
            # buffer: `_scratch`, `prev`'s base, `s`, the argument.
            s = self._scratch
            if s is not None and not (prev is not None and _refcount(prev) <= 3
                                      and _refcount(s) <= 4):
                self._scratch = None
            del s
            prev = None
            try:
                frame = self._received_copy(None, scratch=True)
            except StreamEnded:
                return
            view = frame.array.view()
            view.flags.writeable = False
            del frame
            prev = view
            yield view
            del view
