"""Pool frames: a pickled header with every array out of band, in one buffer.

A frame (task or result) is one ring slot laid out as::

    0   16-byte prefix: magic b"SHP1" (inline) or b"SHP2" (named), header length, data length
    16  header: a pickle of (fn, args, kwargs), or of the outcome, in which every array is a
        reference (offset, dtype, shape, order) into the data area
    ..  data area (64-byte aligned): each array's bytes, each at a 64-byte aligned offset

A frame larger than its slot goes whole through a one-off named shared array; the slot then
carries only its name (b"SHP2"). Pickle is used only between a pool's parent and the workers it
started (as multiprocessing does); nothing else is ever unpickled.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import traceback
from typing import Any

import numpy as np

from .._os import names as _names
from .._os import segment as _segment
from .._os.native import lib
from ..array import SharedArray, create
from ..array import unlink as _unlink_segment
from ..errors import CorruptSegmentError, ShmArrayError

ALIGN = 64
PREFIX = struct.Struct("<4sIQ")  # magic, header length, data length
INLINE = b"SHP1"
NAMED = b"SHP2"
OK, ERR = 0, 1  # outcome tuples: (OK, value) or (ERR, exception, traceback text)


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Packer(pickle.Pickler):
    """Pickles an object with each plain ndarray replaced by a reference into the data area."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.arrays: list[tuple[np.ndarray[Any, Any], int]] = []  # (source, offset)
        self.size = 0
        self._refs: dict[int, tuple[Any, ...]] = {}

    def persistent_id(self, obj: Any) -> Any:  # noqa: D102 (pickle's hook)
        t = type(obj)
        if t is not np.ndarray and not (t is SharedArray and obj.name is None):
            return None  # named SharedArrays pickle by name; everything else in the header
        dt = obj.dtype
        if dt.hasobject or dt.itemsize == 0:
            return None
        ref = self._refs.get(id(obj))
        if ref is not None:  # the same array twice: one copy, one object on the other side
            return ref
        off = align(self.size)
        fortran = obj.ndim > 1 and obj.flags.f_contiguous and not obj.flags.c_contiguous
        src = obj.T if fortran else obj  # an F-ordered array travels as its C-ordered transpose
        self.size = off + obj.nbytes
        simple = dt.fields is None and dt.subdtype is None and dt.metadata is None
        ref = (off, dt.str if simple else dt, obj.shape, fortran)
        self.arrays.append((src, off))  # keeps obj alive, so its id stays unique
        self._refs[id(obj)] = ref
        return ref


class Payload:
    """A packed object, ready to be written into a slot or a one-off segment."""

    __slots__ = ("header", "arrays", "data_len", "data_start", "total")

    def __init__(self, obj: Any) -> None:
        buf = io.BytesIO()
        p = _Packer(buf)
        p.dump(obj)
        self.header = buf.getvalue()
        self.arrays = p.arrays
        self.data_len = p.size
        self.data_start = align(PREFIX.size + len(self.header))
        self.total = self.data_start + self.data_len

    def write(self, out: np.ndarray[Any, Any]) -> None:
        """Write into ``out`` (writable uint8, at least ``total`` bytes): one copy per array."""
        h = len(self.header)
        PREFIX.pack_into(out, 0, INLINE, h, self.data_len)  # type: ignore[arg-type]
        out[PREFIX.size:PREFIX.size + h] = np.frombuffer(self.header, np.uint8)
        base = self.data_start
        for src, off in self.arrays:
            n = src.nbytes
            if n:
                dst = out[base + off:base + off + n].view(src.dtype).reshape(src.shape)
                np.copyto(dst, src, casting="no")


class Ref:
    """A frame that only names the one-off segment holding the real payload."""

    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name = name.encode()
        self.size = size

    def write(self, out: np.ndarray[Any, Any]) -> None:
        n = len(self.name)
        PREFIX.pack_into(out, 0, NAMED, n, self.size)  # type: ignore[arg-type]
        out[PREFIX.size:PREFIX.size + n] = np.frombuffer(self.name, np.uint8)


def spill(payload: Payload, name: str) -> Ref:
    """Write ``payload`` into a new one-off shared array ``name``; the caller owns it."""
    seg = create(name, shape=(payload.total,), dtype=np.uint8, reserve=True)
    try:
        payload.write(seg.view(np.ndarray))
    except BaseException:
        unlink_quietly(name)
        raise
    return Ref(name, payload.total)


class _Unpacker(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, data: np.ndarray[Any, Any], copy: bool,
                 made: list[Any] | None) -> None:
        super().__init__(file)
        self._data = data
        self._copy = copy
        self._made = made
        self._seen: dict[Any, Any] = {}

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 (pickle's hook)
        got = self._seen.get(pid)
        if got is not None:
            return got
        try:
            off, code, shape, fortran = pid
            dt = np.dtype(code)
            n = math.prod(shape) * dt.itemsize
        except (TypeError, ValueError) as exc:
            raise pickle.UnpicklingError(f"bad array reference {pid!r} in a pool frame") from exc
        if off < 0 or off + n > len(self._data):
            raise CorruptSegmentError(f"a pool frame references bytes {off}..{off + n} beyond its "
                                      f"data area ({len(self._data)} bytes)")
        flat = self._data[off:off + n].view(dt)
        arr = flat.reshape(tuple(shape)[::-1]).T if fortran else flat.reshape(shape)
        if self._copy:
            arr = arr.copy(order="K")
            if self._made is not None:
                self._made.append(arr)
        self._seen[pid] = arr
        return arr


def unpack(buf: np.ndarray[Any, Any], *, copy: bool, unlink_named: bool,
           made: list[Any] | None = None) -> Any:
    """Rebuild the object in frame ``buf``. Arrays are views of the frame (as writable as
    ``buf``), or copies with ``copy`` (appended to ``made``); a named payload is attached (and
    unlinked at once with ``unlink_named``: the mapping outlives the name, so its arrays need
    no copy)."""
    magic, hlen, dlen = PREFIX.unpack_from(buf, 0)  # type: ignore[arg-type, call-overload]
    if magic == NAMED:
        if PREFIX.size + hlen > len(buf):
            raise CorruptSegmentError("a pool frame names a payload beyond its slot")
        name = bytes(buf[PREFIX.size:PREFIX.size + hlen]).decode()
        try:
            buf = map_spill(name)
        finally:
            if unlink_named:
                unlink_quietly(name)
        copy = False  # a one-off segment is nobody else's once its name is gone
        magic, hlen, dlen = PREFIX.unpack_from(buf, 0)  # type: ignore[arg-type, call-overload]
    if magic != INLINE:
        raise CorruptSegmentError(f"a pool frame starts with {magic!r}, not a pool header")
    start = align(PREFIX.size + hlen)
    if start + dlen > len(buf):
        raise CorruptSegmentError(f"a pool frame of {len(buf)} bytes claims {start + dlen}")
    header = bytes(buf[PREFIX.size:PREFIX.size + hlen])
    return _Unpacker(io.BytesIO(header), buf[start:start + dlen], copy, made).load()


def map_spill(name: str) -> np.ndarray[Any, Any]:
    """Map one-off segment ``name`` as writable uint8. Not attach(): that warns when the
    creator has died, and a worker that died right after sending its result is no reason to
    warn (or, under -W error, to fail) about a result that is complete."""
    mapping, info = _segment.open_mapping(name, False, 0, "pool payload")
    off, n = int(info.data_offset), int(info.nbytes)
    if int(info.kind) != lib.SHM_SEG_KIND_ARRAY or off + n > mapping.size:
        raise CorruptSegmentError(f"pool payload {name!r} is not a one-off pool segment")
    return np.ndarray((n,), np.uint8, buffer=mapping.mm, offset=off)  # keeps the mmap alive


def named_in_frame(buf: np.ndarray[Any, Any]) -> str | None:
    """The one-off segment a frame names, if any (for frames dropped unread)."""
    try:
        magic, hlen, _ = PREFIX.unpack_from(buf, 0)  # type: ignore[arg-type, call-overload]
        if magic == NAMED and PREFIX.size + hlen <= len(buf):
            return bytes(buf[PREFIX.size:PREFIX.size + hlen]).decode()
    except (struct.error, UnicodeDecodeError):
        pass
    return None


def unlink_quietly(name: str) -> None:
    try:
        _unlink_segment(name)
    except (ShmArrayError, OSError):
        pass


def sweep(stem: str) -> None:
    """Unlink every segment whose name starts with ``stem`` (with what its header lists)."""
    try:
        files = os.listdir(_names.SHM_DIR)
    except OSError:
        return
    for f in files:
        name = _names.from_segment_file(f)
        if name is not None and name.startswith(stem):
            unlink_quietly(name)


class RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` (as concurrent.futures does)."""

    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def format_tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def result_of(value: Any) -> Any:
    """The caller's side of a worker's outcome tuple: the value, or raise the exception."""
    if value[0] == OK:
        return value[1]
    exc, tb = value[1], value[2]
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    raise exc
