"""How SharedArrays and the Executor's payloads cross a Dask comm: by name to a peer proven to
share our /dev/shm (see ``_beacon``), as bytes to everyone else.

Registered with Dask's class-based serialization (``dask_serialize``), which hands each call
the comm's ``context``: the recipient's handshake, where a peer that runs shmarray.dask
announces its beacon.

- ``SharedArray``: to a proven peer, a header naming the segment (name, incarnation, offset,
  shape, strides, dtype, read-only flag) and no frames; the receiver attaches it (zero copy:
  its array maps the same segment). Otherwise -- an unproven peer, a segment whose name is
  gone (its owner unlinked it or died and was cleaned), a mapping closed here, a structured
  dtype -- exactly what Dask sends for a plain ndarray, so even a receiver without shmarray.dask
  reads it (as a plain ndarray, a private copy).
- ``Payload``: a value (tuple, list, dict, nested) whose arrays travel out of band: each
  SharedArray as above; each plain ndarray of ``MOVE_BYTES`` or more, for a proven peer,
  through a one-off segment of the sender (written once; recycled for the sender's next
  Payload once this one dies, unlinked after 2 s unused), which the receiver maps and sees as
  a plain writable ndarray, valid while the sender holds the Payload (the Executor copies
  results out, as Pool does); smaller arrays and everything else as Dask sends them (its
  numpy path, pickle for the rest).

Nothing here unpickles: headers are msgpack data that Dask decodes, every field is checked
before use, and attaching validates the segment as ``shmarray.attach`` does.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import weakref
from typing import Any, Iterator

import numpy as np
from distributed.protocol.serialize import (
    dask_deserialize,
    dask_serialize,
    deserialize,
    serialize,
)

import shmarray

from . import _beacon
from ._internals import rebuild, segment_exists

__all__ = ["Payload", "MOVE_BYTES", "arrays_in", "has_arrays"]

MOVE_BYTES = 256 * 1024  # a plain ndarray this large goes through shared memory when it can
_REF = "shmarray-ref"  # marks a by-name header
_CONTAINERS = (tuple, list, dict)

_numpy_dumps = dask_serialize.dispatch(np.ndarray)
_numpy_loads = dask_deserialize.dispatch(np.ndarray)


def _proven(context: Any) -> bool:
    if not isinstance(context, dict):
        return False
    recipient = context.get("recipient")
    if not isinstance(recipient, dict):
        return False
    return _beacon.shares_shm(recipient.get(_beacon.FIELD))


def _reference(x: shmarray.SharedArray) -> dict[str, Any] | None:
    """The by-name header of ``x``, or None when ``x`` cannot travel by name."""
    rebuilder, args = x.__reduce__()[:2]
    if rebuilder is not rebuild:
        return None  # a private copy, or a mapping closed in this process
    name, nonce, offset, shape, strides, dtype, readonly = args
    if dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        return None
    if not segment_exists(name):
        return None  # owner gone: the receiver could not attach it, send what we still map
    return {_REF: 1, "name": name, "nonce": int(nonce), "offset": int(offset),
            "shape": [int(s) for s in shape], "strides": [int(s) for s in strides],
            "dtype": dtype.str, "readonly": bool(readonly)}


def _attach(h: dict[str, Any]) -> shmarray.SharedArray:
    """Rebuild a by-name header (fields checked: they come from the network)."""
    name, nonce, offset, shape, strides = (h.get(k) for k in
                                           ("name", "nonce", "offset", "shape", "strides"))
    dt, ro = h.get("dtype"), h.get("readonly")
    if not (isinstance(name, str) and isinstance(nonce, int) and isinstance(offset, int)
            and offset >= 0 and isinstance(shape, (list, tuple))
            and isinstance(strides, (list, tuple)) and len(shape) == len(strides) <= 32
            and all(isinstance(s, int) and s >= 0 for s in shape)
            and all(isinstance(s, int) for s in strides)
            and isinstance(dt, str) and len(dt) <= 16 and isinstance(ro, bool)):
        raise shmarray.CorruptSegmentError(f"a SharedArray reference received through Dask is "
                                           f"malformed: {h!r:.200}")
    dtype = np.dtype(dt)
    if dtype.hasobject:
        raise shmarray.CorruptSegmentError("a SharedArray reference names an object dtype")
    arr: shmarray.SharedArray = rebuild(name, nonce, offset, tuple(shape), tuple(strides),
                                        dtype, ro)
    return arr


@dask_serialize.register(shmarray.SharedArray)
def _dump_shared(x: shmarray.SharedArray, context: Any = None) -> tuple[dict[str, Any], list[Any]]:
    if _proven(context):
        ref = _reference(x)
        if ref is not None:
            return ref, []
    header, frames = _numpy_dumps(x.view(np.ndarray), context=context)
    return header, frames


@dask_deserialize.register(shmarray.SharedArray)
def _load_shared(header: dict[str, Any], frames: list[Any]) -> Any:
    if header.get(_REF):
        return _attach(header)
    return _numpy_loads(header, frames)


# ---------------------------------------------------------------------------------------------
# Payloads: a value with its arrays out of band


class _Leaf:
    """Where the i-th array sits in a payload's skeleton."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> Any:
        return (_Leaf, (self.i,))


def _is_array(x: Any) -> bool:
    t = type(x)
    return (t is shmarray.SharedArray or t is np.ndarray) and not x.dtype.hasobject


def _split(value: Any, leaves: list[Any]) -> Any:
    """``value`` with each array in tuples, lists and dict values replaced by a _Leaf."""
    if _is_array(value):
        leaves.append(value)
        return _Leaf(len(leaves) - 1)
    t = type(value)
    if t is tuple or t is list:
        return t(_split(v, leaves) for v in value)
    if t is dict:
        return {k: _split(v, leaves) for k, v in value.items()}
    return value


def _join(skeleton: Any, leaves: list[Any]) -> Any:
    if type(skeleton) is _Leaf:
        return leaves[skeleton.i]
    t = type(skeleton)
    if t is tuple or t is list:
        return t(_join(v, leaves) for v in skeleton)
    if t is dict:
        return {k: _join(v, leaves) for k, v in skeleton.items()}
    return skeleton


def arrays_in(value: Any) -> Iterator[Any]:
    """The arrays a Payload takes out of band: top level, in tuples, lists and dict values."""
    if _is_array(value):
        yield value
        return
    t = type(value)
    if t is tuple or t is list:
        for v in value:
            yield from arrays_in(v)
    elif t is dict:
        for v in value.values():
            yield from arrays_in(v)


def has_arrays(value: Any, min_bytes: int = MOVE_BYTES) -> bool:
    """Whether ``value`` holds a SharedArray, or a plain ndarray of ``min_bytes`` or more, where
    a Payload finds them."""
    return any(type(a) is shmarray.SharedArray or a.nbytes >= min_bytes
               for a in arrays_in(value))


class _Segments:
    """One-off segments for moved arrays, recycled: a fresh tmpfs page costs a fault and a
    zeroing on first touch (7 ms for 8 MiB on the reference VM, against 0.6 ms to rewrite
    one), so a Payload's segments come back here when it dies and the next Payload of a
    similar size rewrites them. At most ``limit`` bytes wait here, none longer than ``idle``
    seconds (a timer unlinks them): a quiet process holds no /dev/shm for long."""

    def __init__(self, limit: int = 512 << 20, idle: float = 2.0) -> None:
        self.limit = limit
        self.idle = idle
        self.lock = threading.Lock()
        self.free: list[tuple[float, shmarray.SharedArray]] = []  # (returned at, segment)
        self.timer: threading.Timer | None = None
        self.pid = os.getpid()

    def _forget_after_fork(self) -> None:
        if self.pid != os.getpid():  # a forked child owns none of these
            self.free, self.timer, self.pid = [], None, os.getpid()

    def take(self, nbytes: int) -> shmarray.SharedArray:
        """An owned flat uint8 segment of at least ``nbytes`` (new ones in 1 MiB steps).
        Raises what shmarray.create raises."""
        with self.lock:
            self._forget_after_fork()
            best = None
            for entry in self.free:
                size = entry[1].nbytes
                if nbytes <= size <= 2 * nbytes + (1 << 20) and (
                        best is None or size < best[1].nbytes):
                    best = entry
            if best is not None:
                self.free.remove(best)
                return best[1]
        size = -(-nbytes // (1 << 20)) * (1 << 20)
        return shmarray.create(f"dask-{secrets.token_hex(8)}", shape=(size,), dtype=np.uint8)

    def give(self, segs: list[shmarray.SharedArray]) -> None:
        now = time.monotonic()
        with self.lock:
            self._forget_after_fork()
            self.free.extend((now, s) for s in segs)
            total = sum(s.nbytes for _, s in self.free)
            drop = []
            while self.free and total > self.limit:
                _, old = self.free.pop(0)
                total -= old.nbytes
                drop.append(old)
            if self.free and self.timer is None:
                self.timer = threading.Timer(self.idle, self.evict)
                self.timer.daemon = True
                self.timer.start()
        _unlink_all(drop)

    def evict(self) -> None:
        """Unlink what has waited ``idle`` seconds (the timer's job)."""
        limit = time.monotonic() - self.idle
        with self.lock:
            if self.pid != os.getpid():
                return
            drop = [s for t, s in self.free if t <= limit]
            self.free = [(t, s) for t, s in self.free if t > limit]
            self.timer = None
            if self.free:
                self.timer = threading.Timer(self.idle, self.evict)
                self.timer.daemon = True
                self.timer.start()
        _unlink_all(drop)


def _unlink_all(segs: list[shmarray.SharedArray]) -> None:
    for seg in segs:
        try:
            seg.unlink()
        except shmarray.ShmArrayError:
            pass


_segments = _Segments()


class Payload:
    """``value`` packed for Dask with its arrays out of band (see the module docstring).

    The one-off segments made for a proven recipient belong to this object: when it dies they
    go back to this process's recycling list (or are unlinked), so a receiver must not keep
    views of a moved array past the task (as with shmarray.Pool's slots); the Executor copies
    results out."""

    __slots__ = ("value", "_moved", "_segs", "_received", "__weakref__")

    def __init__(self, value: Any, received: tuple[int, ...] = ()) -> None:
        self.value = value
        self._moved: dict[int, shmarray.SharedArray] = {}  # leaf index -> its moved view
        self._segs: list[shmarray.SharedArray] = []  # recycled when this Payload dies
        self._received = received  # leaves that arrived as views of the sender's segments

    def private(self) -> Any:
        """The value, with each array that arrived through a sender's one-off segment copied
        into private memory (the sender recycles its segments once the Payload is released)."""
        if not self._received:
            return self.value
        leaves: list[Any] = []
        skeleton = _split(self.value, leaves)
        for i in self._received:
            leaves[i] = np.array(leaves[i], copy=True, order="K")
        return _join(skeleton, leaves)

    def _moved_ref(self, i: int, arr: np.ndarray[Any, Any]) -> dict[str, Any] | None:
        view = self._moved.get(i)
        if view is None:
            if arr.dtype.fields is not None or arr.dtype.subdtype is not None:
                return None
            try:
                seg = _segments.take(arr.nbytes)
            except (shmarray.LimitError, OSError):
                return None  # /dev/shm is full: bytes it is
            if not self._segs:
                weakref.finalize(self, _segments.give, self._segs)
            self._segs.append(seg)
            view = seg[:arr.nbytes].view(arr.dtype).reshape(arr.shape)
            np.copyto(view, arr, casting="no")
            self._moved[i] = view
        return _reference(view)

    def __repr__(self) -> str:
        return f"<shmarray.dask Payload of {type(self.value).__name__}>"


@dask_serialize.register(Payload)
def _dump_payload(p: Payload, context: Any = None) -> tuple[dict[str, Any], list[Any]]:
    leaves: list[Any] = []
    skeleton = _split(p.value, leaves)
    proven = _proven(context)
    subs: list[dict[str, Any]] = []
    frames: list[Any] = []
    lengths: list[int] = []
    compressions: list[Any] = []

    def add(header: dict[str, Any], fs: list[Any]) -> None:
        subs.append(header)
        frames.extend(fs)
        lengths.append(len(fs))
        compressions.extend(header.get("compression") or [None] * len(fs))

    add(*serialize(skeleton, on_error="raise", context=context))
    for i, a in enumerate(leaves):
        ref = None
        if proven:
            if type(a) is shmarray.SharedArray:
                ref = _reference(a)
            elif a.nbytes >= MOVE_BYTES:
                ref = p._moved_ref(i, a)
                if ref is not None:
                    ref["moved"] = True
        if ref is not None:
            add(ref, [])
        else:
            add(*serialize(a.view(np.ndarray), on_error="raise", context=context))
    header: dict[str, Any] = {"subs": subs, "lengths": lengths}
    if any(c is not None for c in compressions):
        header["compression"] = compressions
    return header, frames


@dask_deserialize.register(Payload)
def _load_payload(header: dict[str, Any], frames: list[Any]) -> Payload:
    subs, lengths = header.get("subs"), header.get("lengths")
    if not (isinstance(subs, (list, tuple)) and isinstance(lengths, (list, tuple))
            and len(subs) == len(lengths) >= 1 and sum(lengths) == len(frames)):
        raise shmarray.CorruptSegmentError("a shmarray.dask payload header is malformed")
    parts: list[Any] = []
    received: list[int] = []
    start = 0
    for sub, n in zip(subs, lengths):
        fs = frames[start:start + n]
        start += n
        if isinstance(sub, dict) and sub.get(_REF):
            arr = _attach(sub)
            if sub.get("moved"):
                received.append(len(parts) - 1)
                parts.append(arr.view(np.ndarray))
            else:
                parts.append(arr)
        else:
            parts.append(deserialize(sub, fs))
    return Payload(_join(parts[0], parts[1:]), tuple(received))
