"""A corrupt or hostile header gives CorruptSegmentError (or consistent values), never a crash.

Random bytes are written over every header field of a real segment; a long-lived attacher in a
separate process attaches after each write, so a segfault shows up as a dead worker (a failure).
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmarray
from helpers import CHILD_CWD, PY

# (offset, length) of each field: csrc/seg.h, layout version 1.
FIELDS = {
    "magic": (0, 8), "version": (8, 4), "kind": (12, 4), "header_size": (16, 4),
    "ready": (20, 4), "total_size": (24, 8), "creator_pid": (32, 4), "mode": (36, 4),
    "creator_start": (40, 8), "created_ns": (48, 8), "nonce": (56, 8), "name": (64, 104),
    "objects_len": (168, 4), "objects": (176, 1024), "data_offset": (1280, 8),
    "nbytes": (1288, 8), "ndim": (1296, 4), "order": (1300, 4), "dtype_len": (1304, 4),
    "shape": (1312, 512), "dtype": (1824, 64),
}

WORKER = r"""
import json, sys, warnings
import shmarray
warnings.simplefilter("ignore")
for line in sys.stdin:
    name = line.strip()
    try:
        a = shmarray.attach(name, timeout=0)
        # consistent values: the whole array must be readable
        a.view("u1").sum() if a.dtype.itemsize else None
        print(json.dumps(["ok", a.dtype.itemsize, list(a.shape)]), flush=True)
        del a
    except shmarray.CorruptSegmentError as e:
        print(json.dumps(["corrupt", str(e)]), flush=True)
    except shmarray.ShmArrayError as e:
        print(json.dumps(["other", type(e).__name__, str(e)]), flush=True)
"""


@pytest.fixture(scope="module")
def attacher():
    p = subprocess.Popen([PY, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=CHILD_CWD)
    yield p
    p.stdin.close()
    p.wait(10)
    p.stdout.close()
    p.stderr.close()


def ask(p: subprocess.Popen, name: str) -> list:
    p.stdin.write(name + "\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        raise AssertionError(f"attacher crashed (exit {p.wait(5)}): {p.stderr.read()[-2000:]}")
    return json.loads(line)


@pytest.fixture(scope="module")
def victims():
    arrays = [
        shmarray.create(shape=(3, 5), dtype="<f8"),
        shmarray.create(shape=(200_000,), dtype="u1"),
        shmarray.create(shape=(1 << 20, 2), dtype="i1"),  # 2 MiB: data at 4096
        shmarray.create(shape=(4,), dtype=[("a", "<i4"), ("b", "S3")]),
    ]
    yield arrays
    for a in arrays:
        a.unlink()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 3), field=st.sampled_from(sorted(FIELDS)), data=st.data())
def test_random_bytes_over_header_fields(attacher, victims, which, field, data) -> None:
    a = victims[which]
    off, length = FIELDS[field]
    at = data.draw(st.integers(off, off + length - 1), label="at")
    n = data.draw(st.integers(1, off + length - at), label="n")
    junk = data.draw(st.binary(min_size=n, max_size=n), label="junk")
    path = f"/dev/shm/shmarray.{a.name}"
    fd = os.open(path, os.O_RDWR)
    try:
        span = min(os.fstat(fd).st_size, 8192)
        mm = mmap.mmap(fd, span)
        saved = mm[:span]
        mm[at:at + n] = junk
        try:
            res = ask(attacher, a.name)
        finally:
            mm[:span] = saved
            mm.close()
    finally:
        os.close(fd)
    assert res[0] in ("ok", "corrupt", "other"), res
    if res[0] == "ok":
        # consistent values: whatever passed validation describes memory inside the segment
        assert int(np.prod(res[2])) * res[1] <= os.stat(path).st_size
    if res[0] == "other":
        assert res[1] in ("NotFoundError",), res


def test_specific_corruptions_name_the_field(attacher, victims) -> None:
    a = victims[0]
    path = f"/dev/shm/shmarray.{a.name}"
    cases = {
        "magic": (0, b"XXXXXXXX"), "version": (8, b"\x07\x00"), "kind": (12, b"\x09\x00\x00\x00"),
        "ndim": (1296, b"\xff\x00\x00\x00"), "nbytes": (1288, b"\xff" * 8),
        "dtype": (1824, b"|O8"), "total_size": (24, b"\xff" * 8),
    }
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, 4096)
    try:
        for field, (off, junk) in cases.items():
            saved = mm[off:off + len(junk)]
            mm[off:off + len(junk)] = junk
            try:
                res = ask(attacher, a.name)
            finally:
                mm[off:off + len(junk)] = saved
            expect = ("'nbytes'", "'data_offset'") if field == "nbytes" else (f"'{field}'",)
            assert res[0] == "corrupt" and any(e in res[1] for e in expect), (field, res)
        assert ask(attacher, a.name)[0] == "ok"
    finally:
        mm.close()
        os.close(fd)


def test_not_a_shmarray_segment(name: str) -> None:
    path = f"/dev/shm/shmarray.{name}"
    with open(path, "wb") as f:
        f.write(b"hello world" * 1000)
    try:
        with pytest.raises(shmarray.CorruptSegmentError, match="magic"):
            shmarray.attach(name, timeout=0)
    finally:
        os.unlink(path)
