"""The bridge's wire format: one fixed, little-endian header per message, validated on receipt.

A message is a ZeroMQ multipart message:

- a frame: ``[header, payload]``, the payload being the array's bytes in C order;
- end of stream (the source channel ended) or source lost (its producer died without
  ``end()``): ``[header]`` alone.

Header layout, version 1 (``HEADER``, 160 bytes, little-endian, no padding but where named)::

    offset size field
         0    8 magic             b"SHMABRDG"
         8    2 version           1
        10    2 kind              1 frame, 2 end of stream, 3 source producer died
        12    4 reserved          0
        16    8 session           random per Sender: a new session resets sequence tracking
        24    8 seq               the link's sequence number: consecutive within a session,
                                  so a gap is a loss (the source seq for one-to-one and
                                  broadcast channels, the sender's own count for a work queue)
        32    8 source_seq        the frame's seq in the source channel
        40    8 timestamp_ns      the source's commit stamp (CLOCK_MONOTONIC of the source host)
        48    8 sent_realtime_ns  CLOCK_REALTIME on the sender host when the frame was sent
        56    8 sent_monotonic_ns CLOCK_MONOTONIC on the sender host at the same moment
        64    8 tag               the frame's 64-bit tag
        72    8 dtype             dtype.str in ASCII, NUL-padded ("<f4", "|u1", "<M8[ns]")
        80    1 ndim              0..8
        81    7 (padding)         0
        88   64 shape             8 x uint64; entries past ndim are 0
       152    8 nbytes            prod(shape) * itemsize: the payload's exact length

The capture time on the sender's realtime clock is ``sent_realtime_ns - (sent_monotonic_ns -
timestamp_ns)``: the receiver compares it with its own realtime clock for latency statistics
(exact on one host; across hosts it includes the clocks' offset: run NTP or PTP).

Nothing here is ever evaluated: the dtype string must match a short pattern and name a plain
numeric, boolean or datetime type; anything else is a rejected message, never an exception
that escapes the receiver.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, NamedTuple, Union

import numpy as np

__all__ = ["HEADER", "MAGIC", "VERSION", "FRAME", "END", "DIED", "MAX_NDIM", "Header",
           "pack_frame", "pack_control", "decode"]

MAGIC = b"SHMABRDG"
VERSION = 1
FRAME, END, DIED = 1, 2, 3
MAX_NDIM = 8
MAX_NBYTES = 1 << 40  # far above any slot; keeps arithmetic on hostile shapes bounded
HEADER = struct.Struct("<8sHHIQQQQQQQ8sB7x8QQ")
assert HEADER.size == 160
_DTYPE_RE = re.compile(rb"[<>|][a-zA-Z][0-9]{1,2}(\[[a-z]{1,2}\])?")
_KINDS = (FRAME, END, DIED)
_NO_SHAPE = (0,) * MAX_NDIM
_dtype_cache: dict[bytes, np.dtype[Any]] = {}


class Header(NamedTuple):
    """A decoded, validated header (see the module docstring for each field)."""

    kind: int
    session: int
    seq: int
    source_seq: int
    timestamp_ns: int
    sent_realtime_ns: int
    sent_monotonic_ns: int
    tag: int
    dtype: np.dtype[Any] | None  # None for end of stream / source lost
    shape: tuple[int, ...]
    nbytes: int

    def capture_realtime_ns(self) -> int:
        """The source's commit time on the sender host's realtime clock (ns)."""
        return self.sent_realtime_ns - (self.sent_monotonic_ns - self.timestamp_ns)


def pack_frame(session: int, seq: int, source_seq: int, timestamp_ns: int,
               sent_realtime_ns: int, sent_monotonic_ns: int, tag: int,
               dtype_str: bytes, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The header of a frame message. ``dtype_str`` is ``dtype.str`` as ASCII bytes; ``shape``
    has at most 8 dimensions. Raises struct.error for values out of range."""
    ndim = len(shape)
    return HEADER.pack(MAGIC, VERSION, FRAME, 0, session, seq, source_seq, timestamp_ns,
                       sent_realtime_ns, sent_monotonic_ns, tag & 0xFFFFFFFFFFFFFFFF,
                       dtype_str, ndim, *shape, *_NO_SHAPE[ndim:], nbytes)


def pack_control(kind: int, session: int, seq: int, sent_realtime_ns: int,
                 sent_monotonic_ns: int) -> bytes:
    """The header of an end-of-stream (END) or source-lost (DIED) message; ``seq`` is the link
    sequence number the next frame would have had."""
    if kind not in (END, DIED):
        raise ValueError(f"kind must be END ({END}) or DIED ({DIED}), not {kind}")
    return HEADER.pack(MAGIC, VERSION, kind, 0, session, seq, 0, 0, sent_realtime_ns,
                       sent_monotonic_ns, 0, b"", 0, *_NO_SHAPE, 0)


def _dtype(raw: bytes) -> np.dtype[Any] | None:
    dt = _dtype_cache.get(raw)
    if dt is not None:
        return dt
    text = raw.rstrip(b"\0")
    if b"\0" in text or not _DTYPE_RE.fullmatch(text):
        return None
    try:
        dt = np.dtype(text.decode("ascii"))
    except (TypeError, ValueError):
        return None
    # canonical spelling only, plain types only (no object, void, strings, structured)
    if dt.str != text.decode("ascii") or dt.kind not in "biufcmM" or dt.hasobject:
        return None
    if len(_dtype_cache) < 64:
        _dtype_cache[raw] = dt
    return dt


def decode(buf: Any) -> Union[Header, str]:
    """Validate and decode a header (any bytes-like object). Returns the Header, or a short
    reason string for a message to reject ("length", "magic", "version", "kind", "reserved",
    "dtype", "shape", "size"). Never raises for hostile input."""
    try:
        raw = bytes(buf)
    except (TypeError, ValueError, BufferError):
        return "length"
    if len(raw) != HEADER.size:
        return "length"
    (magic, version, kind, reserved, session, seq, source_seq, ts, sent_rt, sent_mono, tag,
     dtype_raw, ndim, *rest) = HEADER.unpack(raw)
    if magic != MAGIC:
        return "magic"
    if version != VERSION:
        return "version"
    if kind not in _KINDS:
        return "kind"
    if reserved:
        return "reserved"
    shape_all, nbytes = rest[:MAX_NDIM], rest[MAX_NDIM]
    if kind != FRAME:
        if dtype_raw.strip(b"\0") or ndim or any(shape_all) or nbytes:
            return "shape"
        return Header(kind, session, seq, 0, 0, sent_rt, sent_mono, 0, None, (), 0)
    dt = _dtype(dtype_raw)
    if dt is None:
        return "dtype"
    if ndim > MAX_NDIM or any(shape_all[ndim:]):
        return "shape"
    shape = tuple(shape_all[:ndim])
    if any(s > MAX_NBYTES for s in shape):
        return "size"
    expect = math.prod(shape) * dt.itemsize
    if expect != nbytes or nbytes > MAX_NBYTES:
        return "size"
    return Header(kind, session, seq, source_seq, ts, sent_rt, sent_mono, tag, dt, shape,
                  nbytes)
