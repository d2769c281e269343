"""``SharedArray``: a named POSIX shared-memory segment mapped as a numpy array.

The segment starts with a self-describing header (csrc/seg.h: magic, version, owner, dtype,
shape, order, data offset) that :func:`attach` validates field by field; the data follows at a
64-byte aligned offset (4096 for arrays over 1 MiB).

``SharedArray`` behaves like ``numpy.memmap``: slices and views stay ``SharedArray`` (and pickle
as a reference to the segment: name, offset, shape, strides — never the data), arithmetic
results and copies are plain ndarrays with no name.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
import weakref
from typing import Any

import numpy as np

from ._os import names as _names
from ._os import segment as _segment
from ._os.native import ffi, lib
from .errors import (
    AccessDeniedError,
    ClosedError,
    CorruptSegmentError,
    ExistsError,
    InvalidArgumentError,
    NotFoundError,
)

__all__ = ["SharedArray", "OwnerDiedWarning", "create", "from_array", "attach", "unlink"]

_SIMPLE_DTYPE = re.compile(r"[<>|=][?bBiufcmMSUV][0-9]{1,9}(\[[0-9]*[a-zA-Z]{1,3}\])?\Z")
_MAX_FIELDS = 1024


class OwnerDiedWarning(UserWarning):
    """An attached segment's creator is dead: nobody will unlink it at exit."""


# ---------------------------------------------------------------------------------------------
# dtype <-> header text. Structured dtypes are stored as JSON (names, formats, offsets,
# itemsize), parsed back with json and rebuilt with np.dtype: nothing is ever evaluated.

def _encode_dtype(dt: np.dtype[Any]) -> Any:
    if dt.hasobject:
        raise TypeError(
            f"dtype {dt} holds Python objects: pointers mean nothing in another process; "
            "store fixed-size data (e.g. a 'U'/'S' string dtype or integer codes)"
        )
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return {"base": _encode_dtype(base), "shape": list(shape)}
    if dt.names is not None:
        fields = dt.fields
        assert fields is not None
        out: dict[str, Any] = {
            "names": list(dt.names),
            "formats": [_encode_dtype(fields[n][0]) for n in dt.names],
            "offsets": [int(fields[n][1]) for n in dt.names],
            "itemsize": int(dt.itemsize),
        }
        titles = [_title(fields[n]) for n in dt.names]
        if any(t is not None for t in titles):
            if not all(t is None or isinstance(t, str) for t in titles):
                raise TypeError(f"dtype {dt}: field titles must be strings to be stored")
            out["titles"] = titles
        if dt.isalignedstruct:
            out["aligned"] = True
        return out
    return dt.str


def dtype_text(dt: np.dtype[Any]) -> str:
    enc = _encode_dtype(dt)
    text = enc if isinstance(enc, str) else json.dumps(enc, separators=(",", ":"))
    back = _decode_dtype(json.loads(text) if text.startswith("{") else text)
    if back != dt or _titles(back) != _titles(dt) or back.isalignedstruct != dt.isalignedstruct:
        # refuse what would attach as another dtype (never silently a different one)
        raise TypeError(f"dtype {dt} cannot be stored exactly in a segment header (it would "
                        f"come back as {back}); use a plain or structured dtype of numbers, "
                        "bytes and strings")
    if len(text.encode()) > lib.SHM_SEG_DTYPE_MAX:
        raise ValueError(f"dtype description is {len(text)} bytes; the limit is "
                         f"{lib.SHM_SEG_DTYPE_MAX} (a structured dtype with fewer fields fits)")
    return text


def _titles(dt: np.dtype[Any]) -> Any:
    if dt.names is None:
        return _titles(dt.subdtype[0]) if dt.subdtype is not None else None
    fields = dt.fields
    assert fields is not None
    return [(_title(fields[n]), _titles(fields[n][0])) for n in dt.names]


def _title(field: Any) -> Any:
    """The title of a ``dtype.fields`` entry (dtype, offset[, title]), or None."""
    return field[2] if len(field) > 2 else None


def _decode_dtype(obj: Any, depth: int = 0) -> np.dtype[Any]:
    if depth > 16:
        raise ValueError("nested too deeply")
    if isinstance(obj, str):
        if not _SIMPLE_DTYPE.match(obj):
            raise ValueError(f"not a plain dtype string: {obj[:40]!r}")
        dt = np.dtype(obj)
        if dt.hasobject:
            raise ValueError("object dtype")
        return dt
    if isinstance(obj, dict) and set(obj) == {"base", "shape"}:
        shape = obj["shape"]
        if (not isinstance(shape, list) or len(shape) > 32
                or not all(isinstance(s, int) and 0 <= s < 2**31 for s in shape)):
            raise ValueError("bad subarray shape")
        return np.dtype((_decode_dtype(obj["base"], depth + 1), tuple(shape)))
    keys = {"names", "formats", "offsets", "itemsize"}
    if isinstance(obj, dict) and keys <= set(obj) <= keys | {"titles", "aligned"}:
        names, formats, offsets, itemsize = obj["names"], obj["formats"], obj["offsets"], \
            obj["itemsize"]
        titles = obj.get("titles", [None] * len(names) if isinstance(names, list) else None)
        aligned = obj.get("aligned", False)
        if not (isinstance(names, list) and isinstance(formats, list) and isinstance(offsets, list)
                and isinstance(titles, list)
                and len(names) == len(formats) == len(offsets) == len(titles) <= _MAX_FIELDS
                and all(isinstance(n, str) for n in names)
                and all(t is None or isinstance(t, str) for t in titles)
                and all(isinstance(o, int) and 0 <= o < 2**40 for o in offsets)
                and isinstance(itemsize, int) and 0 <= itemsize < 2**40
                and isinstance(aligned, bool)):
            raise ValueError("bad structured dtype")
        fmts = [_decode_dtype(f, depth + 1) for f in formats]
        spec: dict[str, Any] = {"names": names, "formats": fmts, "offsets": offsets,
                                "itemsize": itemsize}
        if any(t is not None for t in titles):
            spec["titles"] = titles
        made: np.dtype[Any] = np.dtype(spec, align=aligned)  # type: ignore[call-overload]
        return made
    raise ValueError("unrecognised dtype description")


def parse_dtype_text(text: str, what: str) -> np.dtype[Any]:
    """Parse a header's dtype text (never evaluated); CorruptSegmentError naming 'dtype'."""
    try:
        obj: Any = text
        if text.startswith("{"):
            obj = json.loads(text)
        return _decode_dtype(obj)
    except (ValueError, TypeError, RecursionError) as exc:
        raise CorruptSegmentError(
            f"{what} is corrupt: header field 'dtype' ({text[:60]!r}) is not a valid dtype: {exc}"
        ) from None


# ---------------------------------------------------------------------------------------------

class _Shm:
    """What every SharedArray over one mapping shares: the mapping and the segment's identity."""

    __slots__ = ("mapping", "name", "nonce", "data_offset", "owner_pid", "__weakref__")

    def __init__(self, mapping: _segment.Mapping, name: str, nonce: int, data_offset: int,
                 owner: bool) -> None:
        self.mapping: _segment.Mapping | None = mapping
        self.name = name
        self.nonce = nonce
        self.data_offset = data_offset
        self.owner_pid = os.getpid() if owner else 0

    def live(self) -> _segment.Mapping:
        if self.mapping is None:
            raise ClosedError(f"shared array {self.name!r} is closed in this process; "
                              f"attach it again with shmarray.attach({self.name!r})")
        return self.mapping


class SharedArray(np.ndarray):  # type: ignore[type-arg]
    """An ndarray over a named shared-memory segment (see the module docstring).

    Views of it share the segment and keep the mapping alive; ``close()`` never unmaps under a
    live view (the unmap happens when the last array using the mapping is collected).
    """

    _shm: _Shm | None

    def __array_finalize__(self, obj: Any) -> None:
        shm = getattr(obj, "_shm", None)
        if shm is not None and np.may_share_memory(self, obj):
            self._shm = shm
        else:
            self._shm = None

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        arr = super().__array_wrap__(arr, context)
        if self is arr or type(self) is not SharedArray:
            return arr
        if return_scalar:
            return arr[()]
        return arr.view(np.ndarray)

    def __getitem__(self, index: Any) -> Any:
        res = super().__getitem__(index)
        if type(res) is SharedArray and res._shm is None:
            return res.view(type=np.ndarray)
        return res

    # -- identity ------------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        """The segment's name, or None for an array that does not share a segment (a copy)."""
        return self._shm.name if self._shm is not None else None

    def _require_shm(self, action: str) -> _Shm:
        if self._shm is None:
            raise NotFoundError(
                f"cannot {action}: this array is a private copy, not backed by a shared segment "
                "(call it on the array returned by shmarray.create / attach)"
            )
        return self._shm

    # -- operations ----------------------------------------------------------------------------
    def flush(self) -> None:
        """msync the whole mapping (shared memory needs no flush to be visible to other
        processes; this orders writes for a reader of the backing file)."""
        mapping = self._require_shm("flush").live()
        mapping.mm.flush()

    def protect(self) -> None:
        """Make the mapping read-only (mprotect) and this array non-writeable.

        Views derived *before* protect() keep their writeable flag: writing through one then
        faults (SIGSEGV). Derive views after protect(), or use attach(readonly=True).
        """
        shm = self._require_shm("protect")
        shm.live().protect(True)
        self.flags.writeable = False

    def unprotect(self) -> None:
        """Undo protect(): the mapping is writable again and so is this array.

        Raises ValueError for an array attached with readonly=True (its mapping is PROT_READ
        and cannot be made writable)."""
        shm = self._require_shm("unprotect")
        mapping = shm.live()
        if mapping.readonly:
            raise ValueError(f"shared array {shm.name!r} was attached read-only; attach it "
                             "again with readonly=False to write")
        mapping.protect(False)
        self.flags.writeable = True

    def close(self) -> None:
        """Close this process's handle on the segment; the segment lives on until unlink().

        Arrays still using the mapping stay valid: the unmap happens when the last is
        collected. Never blocks."""
        shm = self._require_shm("close")
        shm.mapping = None

    def unlink(self) -> None:
        """Remove the segment's name (shm_unlink); mappings stay valid until unmapped.

        Raises NotFoundError if it is already gone (or this is a private copy)."""
        shm = self._require_shm("unlink")
        _segment.unlink(shm.name, shm.nonce)

    def unlink_when_unreferenced(self) -> SharedArray:
        """Hand the segment's lifetime to its references: from now on the creating process
        unlinks it when the last array of that process over its mapping (this one, its views
        and slices) is collected -- as well as at ``unlink()``, the end of a ``with`` block and
        exit, as before. Processes that attached it keep their mapping after the unlink. For
        segments handed to other code (a task result held by a Dask worker): they live exactly
        as long as something in the owner uses them, and a killed owner's segment is still
        found by ``shmarray clean``. Returns ``self``; never blocks.

        Raises AccessDeniedError in a process that did not create the segment (attached
        arrays never unlink), NotFoundError for a private copy."""
        shm = self._require_shm("unlink it when unreferenced")
        if shm.owner_pid != os.getpid() or _segment.owned_nonce(shm.name) != shm.nonce:
            raise AccessDeniedError(
                f"shared array {shm.name!r} is not owned by this process (pid {os.getpid()}): "
                "only its creator can hand over its lifetime; attached arrays never unlink")
        weakref.finalize(shm, _unlink_if_owned, shm.name, shm.nonce, os.getpid())
        return self

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(self, *exc: Any) -> None:
        """Unlink in the creating process; close elsewhere."""
        shm = self._shm
        if shm is None:
            return
        if shm.owner_pid == os.getpid() and _segment.owned_nonce(shm.name) == shm.nonce:
            try:
                self.unlink()
            except NotFoundError:
                pass
        shm.mapping = None

    # -- pickling: a reference to the segment, never the data ------------------------------------
    def __reduce__(self) -> Any:
        shm = self._shm
        if shm is None or shm.mapping is None:
            return np.asarray(self).view(np.ndarray).__reduce__()
        addr = self.__array_interface__["data"][0]
        offset = addr - shm.mapping.addr - shm.data_offset
        ro = not self.flags.writeable
        return (_rebuild, (shm.name, shm.nonce, offset, self.shape, self.strides, self.dtype, ro))

    def __repr__(self) -> str:
        base = np.asarray(self).view(np.ndarray).__repr__()
        return f"SharedArray[{self.name}]" + base[len("array"):] if self.name else base


def _unlink_if_owned(name: str, nonce: int, pid: int) -> None:
    """unlink_when_unreferenced's finalizer: the owner's last reference died."""
    if os.getpid() == pid and _segment.owned_nonce(name) == nonce:
        try:
            _segment.unlink(name, nonce)
        except (NotFoundError, OSError):
            pass


def _rebuild(name: str, nonce: int, offset: int, shape: tuple[int, ...],
             strides: tuple[int, ...], dtype: np.dtype[Any], readonly: bool) -> SharedArray:
    """Unpickle a SharedArray: attach the segment and rebuild the view. Each unpickled array
    has a mapping of its own, so protect() on one never changes what another allows."""
    whole = attach(name, readonly=readonly, timeout=0)
    shm = whole._shm
    assert shm is not None
    if shm.nonce != nonce:
        raise NotFoundError(f"segment {name!r} was replaced by a new segment of the same name "
                            "since this array was pickled")
    mapping = shm.live()
    arr = np.ndarray.__new__(SharedArray, shape, dtype, buffer=mapping.mm,
                             offset=shm.data_offset + offset, strides=strides)
    arr._shm = shm
    if readonly:
        arr.flags.writeable = False
    return arr


def _as_array(mapping: _segment.Mapping, shm: _Shm, dtype: np.dtype[Any], shape: tuple[int, ...],
              order: str) -> SharedArray:
    arr = np.ndarray.__new__(SharedArray, shape, dtype, buffer=mapping.mm,
                             offset=shm.data_offset,
                             order="F" if order == "F" else "C")
    arr._shm = shm
    return arr


def _normalize_shape(name: str, shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of ints; InvalidArgumentError (a ValueError) naming the array when
    it has a negative dimension or too many dimensions."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    out = tuple(int(s) for s in shape)
    if any(s < 0 for s in out):
        raise InvalidArgumentError(f"shared array {name!r}: negative dimension in shape {out}")
    if len(out) > lib.SHM_SEG_MAXDIMS:
        raise InvalidArgumentError(f"shared array {name!r}: {len(out)} dimensions; the limit is "
                                   f"{lib.SHM_SEG_MAXDIMS}: reshape it")
    return out


_MAX_BYTES = (1 << 63) - (1 << 32)  # what a segment file can be (off_t), with room for the header


def _check_size(name: str, shape: tuple[int, ...], dt: np.dtype[Any]) -> int:
    """The array's data bytes; InvalidArgumentError when they cannot exist."""
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes > _MAX_BYTES or any(s >= 1 << 63 for s in shape):
        raise InvalidArgumentError(
            f"shared array {name!r}: shape {shape} of {dt} is {nbytes:,} bytes, beyond what a "
            f"segment can hold ({_MAX_BYTES:,} bytes): pick a smaller shape")
    return nbytes


def create(name: str | None = None, shape: Any = (), dtype: Any = float, *, order: str = "C",
           exist_ok: bool = False, mode: int = 0o600, reserve: bool = False) -> SharedArray:
    """Create shared array ``name`` (a fresh unique name if None), zero-filled, owned by this
    process: it is unlinked at ``unlink()``, at the end of a ``with`` block, or at exit.

    Never touches the data pages unless ``reserve=True`` (then fallocate reserves them so a
    full /dev/shm fails here rather than with SIGBUS later). Does not block.

    Raises ExistsError (unless ``exist_ok``: then the existing array is attached, and must have
    the same shape and dtype), LimitError (/dev/shm too small), InvalidNameError, TypeError
    (object dtypes).
    """
    if name is None:
        name = _names.unique("array")
    _names.validate(name)
    dt = np.dtype(dtype)
    shp = _normalize_shape(name, shape)
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    text = dtype_text(dt)
    nbytes = _check_size(name, shp, dt)
    data_offset = int(lib.shm_seg_array_data_offset(len(text.encode()), nbytes))
    size = max(data_offset + nbytes, lib.SHM_SEG_MIN_SIZE)

    def init(mapping: _segment.Mapping, nonce: int) -> None:
        info = ffi.new("shm_seg_info *")
        info.kind = lib.SHM_SEG_KIND_ARRAY
        info.total_size = size
        info.creator_pid = os.getpid()
        info.mode = mode
        info.creator_start = _segment.process_start_time(os.getpid())
        info.created_ns = time.time_ns()
        info.nonce = nonce
        info.name = name.encode()
        info.objects_len = 0
        info.data_offset = data_offset
        info.nbytes = nbytes
        info.ndim = len(shp)
        info.order = 1 if order == "F" else 0
        info.dtype_len = len(text.encode())
        info.dtype = text.encode()
        for i, s in enumerate(shp):
            info.shape[i] = s
        rc = lib.shm_seg_write(mapping.ptr(), mapping.size, info)
        if rc != 0:
            from ._os.native import seg_field
            raise ValueError(f"cannot describe array {name!r}: field '{seg_field(rc)}' "
                             "is out of range")
        lib.shm_seg_publish(mapping.ptr())

    try:
        mapping, nonce = _segment.create(name, size, mode=mode, reserve=reserve, init=init)
    except ExistsError:
        if not exist_ok:
            raise
        arr = attach(name, timeout=0)
        if arr.shape != shp or arr.dtype != dt:
            raise ExistsError(
                f"shared array {name!r} exists with shape {arr.shape} and dtype {arr.dtype}, not "
                f"{shp} and {dt}; unlink it first (shmarray.unlink({name!r})) or pick another name"
            ) from None
        return arr
    shm = _Shm(mapping, name, nonce, data_offset, owner=True)
    return _as_array(mapping, shm, dt, shp, order)


def from_array(name: str | None, array: Any, **kwargs: Any) -> SharedArray:
    """Create shared array ``name`` with ``array``'s shape, dtype and memory order, and copy
    the data in. Raises as :func:`create`."""
    src = np.asarray(array)
    order = "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
    out = create(name, src.shape, src.dtype, order=order, **kwargs)
    out[...] = src
    return out


def attach(name: str, readonly: bool = False, timeout: float | None = 0) -> SharedArray:
    """Map existing shared array ``name`` (zero copy); ``readonly`` maps it PROT_READ and makes
    every view refuse writes with ValueError.

    Fails at once with NotFoundError when it does not exist (``timeout=0``, the default, as
    multiprocessing.shared_memory does); ``timeout=None`` or seconds waits that long for its
    creator to create and finish it. Warns OwnerDiedWarning when its creator is dead.
    Raises NotFoundError, AccessDeniedError, CorruptSegmentError (a header field fails
    validation; the message names it).
    """
    mapping, info = _segment.open_mapping(name, readonly, timeout, "shared array")
    what = f"shared array {name!r}"
    fields = _segment.header_fields(info)
    if fields["kind"] != lib.SHM_SEG_KIND_ARRAY:
        raise CorruptSegmentError(
            f"segment {name!r} is a channel, not an array: open it with "
            f"shmarray.Channel.open({name!r})")
    if fields["name"] != name:
        raise CorruptSegmentError(f"{what} is corrupt: header field 'name' says "
                                  f"{fields['name']!r}")
    dt = parse_dtype_text(ffi.string(info.dtype).decode("utf-8", "replace"), what)
    shape = tuple(int(info.shape[i]) for i in range(int(info.ndim)))
    nbytes = int(info.nbytes)
    if math.prod(shape) * dt.itemsize != nbytes:
        raise CorruptSegmentError(
            f"{what} is corrupt: header field 'shape' {shape} x itemsize {dt.itemsize} does not "
            f"match field 'nbytes' ({nbytes})")
    data_offset = int(info.data_offset)
    if data_offset % max(1, dt.alignment) != 0:
        raise CorruptSegmentError(f"{what} is corrupt: header field 'data_offset' is misaligned")
    alive = _segment.probe_owner(name)
    if alive is False:
        warnings.warn(
            f"{what}: its creator (pid {fields['creator_pid']}) is dead, so nobody will unlink it; "
            f"remove it with 'shmarray clean {name}' when done", OwnerDiedWarning, stacklevel=2)
    shm = _Shm(mapping, name, fields["nonce"], data_offset, owner=False)
    arr = _as_array(mapping, shm, dt, shape, "F" if int(info.order) == 1 else "C")
    if readonly:
        arr.flags.writeable = False
    return arr


def unlink(name: str) -> None:
    """Remove shared array (or channel) ``name`` and everything its header lists.

    Processes that have it mapped keep their memory until they unmap it. Raises NotFoundError,
    AccessDeniedError, InvalidNameError."""
    _segment.unlink(name)
