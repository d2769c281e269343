"""The bridge's header: round trips, and every malformed header is a reason, never a crash."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CHILD_CWD
from shmarray.bridge import wire

DTYPES = ["|u1", "|b1", "<i8", ">u4", "<f2", "<f8", "<c16", "<M8[ns]", ">m8[ms]"]


def frame_header(dt: str = "<f4", shape: tuple[int, ...] = (2, 3), nbytes: int | None = None,
                 seq: int = 7) -> bytes:
    d = np.dtype(dt)
    if nbytes is None:
        nbytes = int(np.prod(shape)) * d.itemsize
    return wire.pack_frame(0xABC, seq, seq + 100, 123, 456, 789, 42, dt.encode(), shape, nbytes)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (1, 2, 1, 2, 1, 2, 1, 2)])
def test_frame_header_round_trip(dt: str, shape: tuple[int, ...]) -> None:
    h = wire.decode(frame_header(dt, shape))
    assert isinstance(h, wire.Header), h
    assert (h.kind, h.session, h.seq, h.source_seq, h.timestamp_ns) == (wire.FRAME, 0xABC, 7,
                                                                         107, 123)
    assert (h.sent_realtime_ns, h.sent_monotonic_ns, h.tag) == (456, 789, 42)
    assert h.dtype == np.dtype(dt) and h.dtype.str == dt
    assert h.shape == shape
    assert h.nbytes == int(np.prod(shape)) * np.dtype(dt).itemsize
    assert h.capture_realtime_ns() == 456 - (789 - 123)


def test_layout_is_fixed_little_endian() -> None:
    raw = frame_header("<u2", (3,))
    assert len(raw) == wire.HEADER.size == 160
    assert raw[:8] == b"SHMABRDG"
    assert struct.unpack_from("<HH", raw, 8) == (1, wire.FRAME)
    assert struct.unpack_from("<Q", raw, 24)[0] == 7       # seq
    assert raw[72:80] == b"<u2\0\0\0\0\0"                  # dtype.str, NUL padded
    assert raw[80] == 1                                    # ndim
    assert struct.unpack_from("<8Q", raw, 88) == (3, 0, 0, 0, 0, 0, 0, 0)
    assert struct.unpack_from("<Q", raw, 152)[0] == 6      # nbytes


def test_control_headers() -> None:
    for kind in (wire.END, wire.DIED):
        h = wire.decode(wire.pack_control(kind, 5, 99, 1, 2))
        assert isinstance(h, wire.Header)
        assert (h.kind, h.session, h.seq, h.dtype, h.shape, h.nbytes) == (kind, 5, 99, None,
                                                                           (), 0)
    with pytest.raises(ValueError):
        wire.pack_control(wire.FRAME, 5, 99, 1, 2)


def _patch(raw: bytes, offset: int, data: bytes) -> bytes:
    return raw[:offset] + data + raw[offset + len(data):]


GOOD = frame_header("<f4", (2, 3))
BAD = [
    (b"", "length"),
    (GOOD[:-1], "length"),
    (GOOD + b"\0", "length"),
    (_patch(GOOD, 0, b"XHMABRDG"), "magic"),
    (_patch(GOOD, 8, struct.pack("<H", 2)), "version"),
    (_patch(GOOD, 10, struct.pack("<H", 9)), "kind"),
    (_patch(GOOD, 12, struct.pack("<I", 1)), "reserved"),
    (frame_header("<f4", (2, 3), nbytes=25), "size"),                    # 24 bytes, says 25
    (frame_header("<f4", (2, 3), nbytes=0), "size"),
    (_patch(GOOD, 80, bytes([9])), "shape"),                               # ndim 9
    (_patch(GOOD, 88 + 8 * 5, struct.pack("<Q", 1)), "shape"),             # a dim past ndim
    (_patch(GOOD, 88, struct.pack("<Q", 1 << 62)), "size"),                # a huge dimension
    (_patch(GOOD, 72, b"|O8\0\0\0\0\0"), "dtype"),                         # object: refused
    (_patch(GOOD, 72, b"<U4\0\0\0\0\0"), "dtype"),                         # strings: refused
    (_patch(GOOD, 72, b"|V8\0\0\0\0\0"), "dtype"),                         # void: refused
    (_patch(GOOD, 72, b"f4\0\0\0\0\0\0"), "dtype"),                        # no byte order
    (_patch(GOOD, 72, b"=f4\0\0\0\0\0"), "dtype"),                         # not canonical
    (_patch(GOOD, 72, b"<f4\0x\0\0\0"), "dtype"),                          # junk after NUL
    (_patch(GOOD, 72, b"\0\0\0\0\0\0\0\0"), "dtype"),
    (_patch(GOOD, 72, b"<M8[D]\0\0"), "dtype"),
    (_patch(wire.pack_control(wire.END, 1, 2, 3, 4), 80, bytes([1])), "shape"),
    (_patch(wire.pack_control(wire.END, 1, 2, 3, 4), 152, struct.pack("<Q", 8)), "shape"),
]


@pytest.mark.parametrize("raw,reason", BAD)
def test_malformed_headers_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    assert wire.decode(raw) == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_random_bytes_never_raise(raw: bytes) -> None:
    out = wire.decode(raw)
    assert isinstance(out, (str, wire.Header))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, wire.HEADER.size - 1), st.integers(0, 255))
def test_any_single_byte_change_decodes_or_is_rejected(offset: int, value: int) -> None:
    raw = bytearray(GOOD)
    raw[offset] = value
    out = wire.decode(bytes(raw))
    if isinstance(out, wire.Header):  # still valid: then it is self-consistent
        assert out.dtype is not None
        assert out.nbytes == int(np.prod(out.shape, dtype=object)) * out.dtype.itemsize


def test_importing_shmarray_or_the_bridge_does_not_import_zmq() -> None:
    code = ("import sys, shmarray, shmarray.bridge, shmarray.bridge.wire; "
            "assert 'zmq' not in sys.modules, 'zmq imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CHILD_CWD, timeout=60)
