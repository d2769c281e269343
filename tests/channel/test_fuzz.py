"""A hostile neighbour scribbles on a live channel: every field of the ring another process could
write (ring header, control block cursors, participant table, slot table) is overwritten between
operations, and the reader / writer must raise a shmarray error (CorruptSegmentError, or
another one such as WouldBlockError or PeerDiedError) or carry on consistently: never crash,
never hang, never hand out a view outside the mapping.

The channel and its operations live in a long-lived worker process, so a segfault is a failed
test (a dead worker), not a crashed pytest. The test maps the segment file itself and writes
the junk there. (csrc/tests/ring_stress.c fuzzes the C core alone under ASan; this is the
end-to-end one, through the Python layer.)
"""

from __future__ import annotations

import json
import mmap
import os
import select
import struct
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import CHILD_CWD, PY

RING = 4096  # the ring block's offset in the segment (SHM_SEG_RING_HEADER)

# (offset, length) of each field, relative to its region: csrc/chan.h, layout version 2
HEADER = {
    "magic": (0, 8), "layout_version": (8, 4), "header_size": (12, 4), "mode": (16, 4),
    "policy": (20, 4), "capacity": (24, 4), "max_participants": (28, 4), "slot_bytes": (32, 8),
    "slot_stride": (40, 8), "ctrl_off": (48, 8), "parts_off": (56, 8), "slots_off": (64, 8),
    "payload_off": (72, 8), "total_len": (80, 8), "checksum": (88, 8),
}
CTRL = {
    "enqueue_pos": (0, 8), "dequeue_pos": (128, 8), "data_epoch": (256, 4),
    "data_waiters": (260, 4), "space_epoch": (264, 4), "space_waiters": (268, 4),
    "doorbells": (272, 4), "gen": (276, 4), "eos": (384, 4), "producer_owner": (388, 4),
    "consumer_owner": (392, 4), "producers_ever": (396, 4), "dropped": (400, 8),
    "evicted": (408, 8), "joins": (416, 8), "opens": (424, 8), "closes": (432, 8),
}
PART = {
    "state": (0, 4), "role": (4, 4), "pid": (8, 4), "doorbell": (12, 4), "start_time": (16, 8),
    "joined_ns": (24, 8), "pending_pos": (32, 8), "frames": (40, 8), "bytes": (48, 8),
    "waits": (56, 8), "cursor": (64, 8), "join_pos": (72, 8), "lost": (80, 8),
    "skipped": (88, 8), "dropped": (96, 8),
}
SLOT = {
    "seq": (0, 8), "claim_pos": (8, 8), "holder_pos": (16, 8), "timestamp_ns": (24, 8),
    "tag": (32, 8), "nbytes": (40, 8), "shape0": (48, 8), "shape1": (56, 8), "shape7": (104, 8),
    "claimant": (112, 4), "holder": (116, 4), "dtype": (120, 2), "ndim": (122, 1),
    "flags": (123, 1),
}
# the segment header (csrc/seg.h): read again by every open, unlink, ls and clean
SEGMENT = {
    "kind": (12, 4), "header_size": (16, 4), "ready": (20, 4), "total_size": (24, 8),
    "nonce": (56, 8), "name": (64, 8), "objects_len": (168, 4), "objects": (176, 64),
}

WORKER = r"""
import json, sys, traceback, zlib
import numpy as np
import shmarray
from shmarray._os import registry as _registry

DTYPES = ["u1", "<i2", ">f4", "<f8", "c8", "?"]
state = {}

def inside(ch, arr, extent):
    seg = ch._rx.seg
    p = arr.__array_interface__["data"][0]
    spans = [(seg.mapping.addr, seg.mapping.size), (seg.ro_payload, len(seg.ro))]
    return any(lo <= p and p + extent <= lo + size for lo, size in spans)

def check_frame(ch, f):
    v = f.array
    assert v.nbytes <= ch.slot_bytes, f"view of {v.nbytes} bytes in a {ch.slot_bytes}-byte slot"
    assert inside(ch, v, v.nbytes), "view outside the mapping"
    int(np.ascontiguousarray(v).view(np.uint8).sum())  # every byte readable

def new(mode, cap, slot_bytes, sent, consumed, held):
    if mode == "broadcast":
        tx = shmarray.Channel.create(None, slot_bytes=slot_bytes, capacity=cap, mode=mode,
                                     max_subscribers=3)
        rx = tx.subscribe()
    else:
        tx = shmarray.Channel.create(None, slot_bytes=slot_bytes, capacity=cap, mode=mode,
                                     max_participants=4)
        rx = shmarray.Channel.open(tx.name)
    frames = []
    for i in range(sent):
        dt = np.dtype(DTYPES[i % len(DTYPES)])
        n = max(1, (slot_bytes // dt.itemsize) >> (i % 3))
        shape = (n,) if i % 2 else (1, n)
        if i % 3:
            tx.send(np.zeros(shape, dt), tag=i, timeout=0)
        else:
            with tx.loan(shape, dt, timeout=0, tag=i) as out:
                out[...] = 1
    for _ in range(consumed):
        rx.recv(timeout=0).release()
    for _ in range(held):
        frames.append(rx.recv(timeout=0))
    state.clear()
    state.update(tx=tx, rx=rx, frames=frames, extra=[])
    info = {"name": tx.name, "size": tx._seg.mapping.size, "cap": cap, "maxp": 4}
    return info

def run(label, fn, out):
    try:
        fn()
        out.append([label, "ok"])
    except shmarray.ShmArrayError as e:
        out.append([label, type(e).__name__, str(e)[:200]])
    except Exception as e:
        out.append([label, "BUG", type(e).__name__ + ": " + str(e)[:300],
                    traceback.format_exc()[-1500:]])

def ops():
    tx, rx, frames = state["tx"], state["rx"], state["frames"]
    out = []
    def release_held():
        while frames:
            frames.pop().release()
    run("release", release_held, out)
    def drain():
        for _ in range(tx.capacity + 1):
            f = rx.try_recv()
            if f is None:
                return
            check_frame(rx, f)
            f.release()
    run("recv", drain, out)
    run("recv-wait", lambda: rx.recv(timeout=0.02), out)
    def send():
        for i in range(3):
            tx.send(np.arange(4, dtype=np.int32), tag=i, timeout=0)
    run("send", send, out)
    def loan():
        with tx.loan((2, 2), np.float32, timeout=0) as o:
            o[...] = 3
    run("loan", loan, out)
    def send_wait():
        try:
            for _ in range(tx.capacity):
                tx.send(np.zeros(1), timeout=0)
        except shmarray.WouldBlockError:
            pass
        tx.send(np.zeros(1), timeout=0.02)  # a wait: arm, sleep, probe the peers
    run("send-wait", send_wait, out)
    def many():
        if not hasattr(rx, "recv_many"):
            return
        b = rx.recv_many(tx.capacity, timeout=0)
        n = len(b)
        extent = (n - 1) * rx._seg.stride + b.array[0].nbytes
        assert n <= tx.capacity - 1 and b.array.nbytes <= n * rx.slot_bytes
        assert inside(rx, b.array, extent), "recv_many block outside the mapping"
        int(b.array.view(np.uint8).sum()) if b.array.flags.c_contiguous else b.array.sum()
        b.release()
    run("recv_many", many, out)
    def second():
        c = shmarray.Channel.open(tx.name, timeout=0)
        state["extra"].append(c)
        if tx.mode == "broadcast":
            c = c.subscribe()
            state["extra"].append(c)
        f = c.try_recv()
        if f is not None:
            check_frame(c, f)
            f.release()
    run("second-consumer", second, out)
    run("stats", lambda: (tx.stats(), rx.stats()), out)
    if tx.mode == "broadcast":
        run("latest", lambda: rx.latest(timeout=0), out)
    run("ls", lambda: _registry.inspect(tx.name), out)
    return out

def done():
    out = []
    for c in reversed(state.get("extra", []) + [state.get("rx")]):
        run("close", c.close, out)
    tx = state["tx"]
    run("close-tx", tx.close, out)
    try:
        tx.unlink()
    except shmarray.NotFoundError:
        pass
    except Exception as e:
        out.append(["unlink", "BUG", repr(e)])
        # leave nothing behind whatever the header says: remove by the names we know
        import posix_ipc, os
        try:
            posix_ipc.unlink_message_queue(tx._seg.control_name)
        except Exception:
            pass
        try:
            os.unlink("/dev/shm/shmarray." + tx.name)
        except OSError:
            pass
    state.clear()
    return out

def fds(collect=False):
    import os, gc
    if collect:
        gc.collect()
    out = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            out.append(fd + ":" + os.readlink("/proc/self/fd/" + fd))
        except OSError:
            pass
    return out

for line in sys.stdin:
    cmd, args = json.loads(line)
    try:
        res = {"new": new, "ops": ops, "done": done, "fds": fds}[cmd](*args)
    except Exception as e:
        res = ["BUG", "worker: " + traceback.format_exc()[-1500:]]
    print(json.dumps(res), flush=True)
"""


class Worker:
    """The long-lived child that owns the channel and runs the operations."""

    def __init__(self) -> None:
        self.p: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.p = subprocess.Popen([PY, "-c", WORKER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=CHILD_CWD)

    def ask(self, cmd: str, *args: Any, timeout: float = 20.0) -> Any:
        if self.p is None or self.p.poll() is not None:
            self.start()
        p = self.p
        assert p is not None and p.stdin is not None and p.stdout is not None
        p.stdin.write(json.dumps([cmd, list(args)]) + "\n")
        p.stdin.flush()
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        if not ready:
            p.kill()
            self.stop()
            raise AssertionError(f"worker hung in {cmd!r} for {timeout} s")
        line = p.stdout.readline()
        if not line:
            rc = p.wait(10)
            err = p.stderr.read()[-3000:] if p.stderr else ""
            self.stop()
            raise AssertionError(f"worker crashed in {cmd!r} (exit {rc}): {err}")
        return json.loads(line)

    def stop(self) -> None:
        p, self.p = self.p, None
        if p is None:
            return
        if p.poll() is None:
            assert p.stdin is not None
            p.stdin.close()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None and not f.closed:
                f.close()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.stop()


def ring_offsets(mm: mmap.mmap) -> dict[str, int]:
    ctrl, parts, slots = struct.unpack_from("<QQQ", mm, RING + 48)
    return {"ctrl": RING + ctrl, "parts": RING + parts, "slots": RING + slots}


def targets(cap: int, maxp: int) -> st.SearchStrategy[tuple[str, int, int]]:
    """(description, absolute offset, length) of one field of one entry."""
    def field(region: str, table: dict[str, tuple[int, int]], entries: int, stride: int):
        return st.tuples(st.sampled_from(sorted(table)), st.integers(0, entries - 1)).map(
            lambda fi: (region, fi[0], fi[1] * stride + table[fi[0]][0], table[fi[0]][1]))
    return st.one_of(
        field("header", HEADER, 1, 0), field("ctrl", CTRL, 1, 0),
        field("parts", PART, maxp, 128), field("slots", SLOT, cap, 128),
        field("segment", SEGMENT, 1, 0))


def junk(length: int, current: int, cap: int) -> st.SearchStrategy[bytes]:
    """Plausible lies beat random bytes: near the current value, near the capacity, extremes."""
    mask = (1 << (8 * length)) - 1
    near = st.integers(-2 * cap - 2, 2 * cap + 2).map(lambda d: (current + d) & mask)
    special = st.sampled_from([0, 1, 2, 3, cap - 1, cap, cap + 1, mask, mask - 1, mask >> 1])
    return st.one_of(near, special, st.integers(0, mask)).map(
        lambda v: v.to_bytes(length, "little")) | st.binary(min_size=length, max_size=length)


def segment_map(name: str) -> tuple[mmap.mmap, dict[str, int]]:
    """The segment mapped here, and its regions' offsets (read before any scribbling)."""
    fd = os.open(f"/dev/shm/shmarray.{name}", os.O_RDWR)
    try:
        mm = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    offs = ring_offsets(mm)
    offs.update(header=RING, segment=0)
    return mm, offs


def scribble(seg: tuple[mmap.mmap, dict[str, int]], cap: int, region: str, rel: int,
             length: int, data: st.DataObject) -> str:
    mm, offs = seg
    at = offs[region] + rel
    current = int.from_bytes(mm[at:at + length], "little")
    new = data.draw(junk(length, current, cap), label="junk")
    mm[at:at + length] = new
    return f"{region}+{rel}: {current:#x} -> {new.hex()}"


def verdicts(res: list[Any], where: str) -> None:
    bugs = [r for r in res if len(r) > 1 and r[1] in ("BUG", "InternalError")]
    assert not bugs, f"after {where}: {json.dumps(bugs, indent=1)}"


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(mode=st.sampled_from(["one-to-one", "work-queue", "broadcast"]),
       cap=st.sampled_from([2, 4, 8]),
       fill=st.tuples(st.integers(0, 8), st.integers(0, 3), st.integers(0, 2)),
       rounds=st.integers(1, 2), data=st.data())
def test_scribbled_ring_never_crashes(worker: Worker, mode: str, cap: int,
                                      fill: tuple[int, int, int], rounds: int,
                                      data: st.DataObject) -> None:
    sent = min(fill[0], cap)
    consumed = min(fill[1], sent)
    held = min(fill[2], sent - consumed, cap - 1)
    info = worker.ask("new", mode, cap, 256, sent, consumed, held)
    assert isinstance(info, dict), info
    seg = segment_map(info["name"])
    try:
        for _ in range(rounds):
            region, fname, rel, length = data.draw(targets(cap, info["maxp"]), label="field")
            what = scribble(seg, cap, region, rel, length, data)
            verdicts(worker.ask("ops"), f"{fname} ({what})")
    finally:
        seg[0].close()
        verdicts(worker.ask("done"), "close")


def test_specific_lies_are_reported_as_corrupt(worker: Worker) -> None:
    # a few lies the ring can prove: each gives CorruptSegmentError, never a crash or a hang
    cases = [("slots", 0, 8, (1 << 63).to_bytes(8, "little")),  # seq far ahead
             ("slots", 122, 1, b"\x09"),                          # ndim 9
             ("slots", 40, 8, (1 << 40).to_bytes(8, "little")),  # nbytes > slot
             ("slots", 120, 2, b"\xff\x00")]                      # dtype code 255
    for region, rel, length, junk_bytes in cases:
        info = worker.ask("new", "one-to-one", 4, 256, 2, 0, 0)
        try:
            path = f"/dev/shm/shmarray.{info['name']}"
            fd = os.open(path, os.O_RDWR)
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
            at = ring_offsets(mm)[region] + rel
            mm[at:at + length] = junk_bytes
            mm.close()
            os.close(fd)
            res = worker.ask("ops")
            verdicts(res, f"slot field at {rel}")
            recv = next(r for r in res if r[0] == "recv")
            assert recv[1] == "CorruptSegmentError", res
        finally:
            verdicts(worker.ask("done"), "close")


def test_held_slot_overwritten_is_corrupt_not_internal(name: str) -> None:
    # A Frame releases its slot once; a slot that no longer shows the hold was overwritten by
    # someone else: CorruptSegmentError (it used to be InternalError, "a bug in shmarray").
    import numpy as np

    import shmarray

    with shmarray.Channel.create(name, slot_bytes=64, capacity=4) as tx:
        rx = shmarray.Channel.open(name)
        seg = segment_map(name)
        try:
            for field, value in (("seq", 77), ("holder", 3), ("holder_pos", 9)):
                tx.send(np.zeros(2))
                f = rx.recv(timeout=1)
                off, length = SLOT[field]
                at = seg[1]["slots"] + 128 * (f.seq % 4) + off
                seg[0][at:at + length] = value.to_bytes(length, "little")
                with pytest.raises(shmarray.CorruptSegmentError, match="overwritten"):
                    f.release()
                assert f.released
        finally:
            seg[0].close()
            rx.close()
