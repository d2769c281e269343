"""A view keeps its frame (issue: zero-copy views that cannot lie).

No array a channel hands out may ever show bytes other than its own frame's, and no read-only
array may become writable by any route. Every case runs in every mode and policy it applies to,
with the producer in another process (a real segment between two processes), and a property
test plays random programs of receive / keep / slice / drop / collect / release against a
model.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmarray
from helpers import CHILD_CWD, PY, start_py, stop

MODES = ["one-to-one", "work-queue", "broadcast"]


def pattern(i: int, n: int = 64) -> np.ndarray:
    """Frame i's content: recognisable from any other frame's."""
    return (np.arange(n, dtype=np.int64) * 7919 + i * 104729) % 1000003


def open_rx(ch: Any) -> Any:
    """The consuming end of ``ch``: a second handle (ring modes) or a subscriber."""
    if ch.mode == "broadcast":
        return ch.subscribe()
    return shmarray.Channel.open(ch.name)


@pytest.fixture
def channel(name: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    mode = getattr(request, "param", "one-to-one")
    kw = {"max_subscribers": 2, "policy": "block"} if mode == "broadcast" else {}
    with shmarray.Channel.create(name, slot_bytes=1024, capacity=8, mode=mode, **kw) as ch:
        yield ch


def producer(name: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([PY, "-c", PRODUCER, name], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=CHILD_CWD)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


PRODUCER = """
import sys, numpy as np, shmarray
ch = shmarray.Channel.open(sys.argv[1], timeout=10)
def pattern(i, n=64):
    return (np.arange(n, dtype=np.int64) * 7919 + i * 104729) % 1000003
print("ready", flush=True)
for line in sys.stdin:
    a, b = map(int, line.split())
    for i in range(a, b):
        ch.send(pattern(i), tag=i, timeout=20)
ch.end()
ch.close()
"""


def feed(p: subprocess.Popen[str], a: int, b: int) -> None:
    assert p.stdin is not None
    p.stdin.write(f"{a} {b}\n")
    p.stdin.flush()


def finish(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.close()
    p.stdin = None
    assert p.wait(30) == 0, p.stderr.read() if p.stderr else ""
    stop(p)


def intact(arr: np.ndarray, i: int) -> bool:
    return bool(np.array_equal(np.asarray(arr).reshape(-1)[:64], pattern(i)))


# ---------------------------------------------------------------------------------------------
# 1. a temporary Frame: its array keeps it


@pytest.mark.parametrize("channel", MODES, indirect=True)
def test_array_of_a_temporary_frame_keeps_its_frame(channel: Any) -> None:
    rx = open_rx(channel)
    p = producer(channel.name)
    try:
        feed(p, 0, 1)
        img = rx.recv(timeout=10).array  # the Frame is collected at once
        feed(p, 1, 4)
        imgs = [f.array for f in (rx.recv(timeout=10) for _ in range(2))]
        for i in range(3, 8):  # five more frames through the other slots
            if i < 7:
                feed(p, i + 1, i + 2)
            with rx.recv(timeout=10) as v:
                assert intact(v, i)
        assert intact(img, 0), "a kept array shows another frame's bytes"
        assert [intact(a, i) for i, a in zip((1, 2), imgs)] == [True, True]
        held = rx.stats()["held"]
        assert held == 3, held
        feed(p, 8, 9)  # a whole lap on: frame 8 needs frame 0's slot, which `img` keeps
        with pytest.raises(shmarray.LimitError, match="views keep their frames"):
            rx.recv(timeout=10)  # says so at once, rather than wait for ever
        del img, imgs
        gc.collect()
        assert rx.stats()["held"] == 0  # the last reference let the frames go
        assert intact(rx.recv_copy(timeout=10), 8)
        finish(p)
    finally:
        stop(p)
        rx.close()


# ---------------------------------------------------------------------------------------------
# 2. a kept view from iteration, and from a with block


@pytest.mark.parametrize("channel", MODES, indirect=True)
def test_views_kept_from_iteration_stay_their_frames(channel: Any) -> None:
    rx = open_rx(channel)
    p = producer(channel.name)
    try:
        feed(p, 0, 8)  # a lap of the ring (frame 8 would need frame 0's slot)
        keep = []
        for n, view in enumerate(rx):
            if n % 3 == 0:
                keep.append((n, view))
                keep.append((n, view[10:20]))  # a slice keeps it too
            else:
                assert intact(view, n)
            if n == 7:
                break
        for n, v in keep:
            base = pattern(n)[10:20] if v.shape == (10,) else pattern(n)
            assert np.array_equal(v, base), f"kept view of frame {n} changed"
        finish(p)
    finally:
        stop(p)
        rx.close()


@pytest.mark.parametrize("channel", MODES, indirect=True)
def test_a_with_block_releases_at_once_unless_a_view_is_kept(channel: Any) -> None:
    tx = channel
    rx = open_rx(tx)
    for i in range(3):
        tx.send(pattern(i), tag=i)
    with rx.recv(timeout=1) as v:
        assert intact(v, 0)
    assert rx.stats()["held"] == 0  # nothing kept: back at once
    with rx.recv(timeout=1) as v:
        kept = v[5:]
    assert rx.stats()["held"] == 1  # a slice lives
    f = rx.recv(timeout=1)
    a = f.array
    with f:
        pass
    assert rx.stats()["held"] == 2  # `a` was taken before the block: it keeps the frame
    assert np.array_equal(kept, pattern(1)[5:]) and intact(a, 2)
    del kept, a, v, f  # (the with target, and the Frame itself, refer to the memory too)
    assert rx.stats()["held"] == 0
    tx.send(pattern(3))
    g = rx.recv(timeout=1)
    g.release()  # nothing keeps it: back at once, and its array says so
    with pytest.raises(shmarray.ClosedError, match="released"):
        g.array.sum()
    rx.close()


# ---------------------------------------------------------------------------------------------
# 4. one ndarray object per frame: in-place changes to one never reach another


@pytest.mark.parametrize("channel", MODES, indirect=True)
def test_each_frame_gets_its_own_array_object(channel: Any) -> None:
    tx = channel
    rx = open_rx(tx)
    for _lap in range(3):  # the same slots, lap after lap
        for i in range(3):
            tx.send(np.arange(12, dtype=np.int32) + i)
        frames = [rx.recv(timeout=1) for _ in range(3)]
        arrays = [f.array for f in frames]
        assert len({id(a) for a in arrays}) == 3
        arrays[0].shape = (3, 4)
        arrays[1].dtype = np.int16
        del arrays
        for f in frames:
            f.release()
        tx.send(np.arange(12, dtype=np.int32))
        with rx.recv(timeout=1) as v:
            assert v.shape == (12,) and v.dtype == np.int32, (v.shape, v.dtype)
    rx.close()


# ---------------------------------------------------------------------------------------------
# 5. read-only by the memory, not the flag


@pytest.mark.parametrize("channel", MODES, indirect=True)
def test_received_views_cannot_be_made_writable(channel: Any) -> None:
    tx = channel
    rx = open_rx(tx)
    tx.send(pattern(0))
    f = rx.recv(timeout=1, copy=False) if tx.mode == "broadcast" else rx.recv(timeout=1)
    views = [f.array, f.array[3:], f.array.view(np.uint8), np.asarray(memoryview(f.array))]
    with f as entered:
        views.append(entered)
        for v in views:
            assert not v.flags.writeable
            with pytest.raises(ValueError, match="WRITEABLE"):
                v.flags.writeable = True
        with pytest.raises((ValueError, TypeError)):
            memoryview(f.array).cast("B")[0] = 1
    del views, entered
    rx.close()


# the fault must reach the kernel's default action, also in CI's AddressSanitizer job (whose
# own SEGV handler would report it and exit with status 1)
_KERNEL_SEGV = {"ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                       "handle_segv=0"]))}


@pytest.mark.parametrize("mode", ["one-to-one", "broadcast"])
def test_a_write_through_a_raw_pointer_faults(name: str, mode: str) -> None:
    # Libraries can flip flags or write through pointers: the pages are read-only, so the
    # write faults (SIGSEGV) instead of changing the frame every other reader sees.
    kw = {"max_subscribers": 2} if mode == "broadcast" else {}
    with shmarray.Channel.create(name, slot_bytes=1024, capacity=4, mode=mode, **kw) as tx:
        child = start_py(f"""
            import ctypes, numpy as np, shmarray
            ch = shmarray.Channel.open({name!r}, timeout=10)
            rx = ch.subscribe() if ch.mode == "broadcast" else ch
            print("ready", flush=True)
            kw = {{"copy": False}} if ch.mode == "broadcast" else {{}}
            with rx.recv(timeout=10, **kw) as v:
                ctypes.memset(v.__array_interface__["data"][0], 0xFF, 8)
            print("wrote", flush=True)
        """, env=_KERNEL_SEGV)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            tx.send(pattern(0))
            assert child.wait(30) == -signal.SIGSEGV
        finally:
            stop(child)
        if mode == "broadcast":
            sub = tx.subscribe()  # it starts at the newest frame: the one written at
            tx.send(pattern(1))
            assert intact(sub.recv_copy(timeout=1), 0)  # not a byte of it changed
            assert intact(sub.recv_copy(timeout=1), 1)
            sub.close()


# ---------------------------------------------------------------------------------------------
# 6. valid() is honest after release


def test_valid_is_false_once_the_slot_was_reused(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=1024, capacity=2, mode="broadcast",
                                 policy="block") as tx:
        sub = tx.subscribe()
        tx.send(pattern(0))
        f = sub.recv(timeout=1)
        assert f.valid()
        f.release()  # nothing keeps it: the slot goes back
        for i in range(1, 4):  # the slot is overwritten
            tx.send(pattern(i))
            sub.recv(timeout=1).release()
        assert not f.valid()
        sub.close()


# ---------------------------------------------------------------------------------------------
# FrameBatch: one view over a run keeps every frame of it


def test_a_kept_batch_keeps_every_frame(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=8) as tx:
        rx = shmarray.Channel.open(name)
        tx.send_many(np.stack([pattern(i, 8) for i in range(4)]))
        block = rx.recv_many(4, timeout=1).array
        assert block.shape == (4, 8) and not block.flags.writeable
        assert rx.stats()["held"] == 4
        row = block[2]
        del block
        assert rx.stats()["held"] == 4  # a row of the block keeps the whole run
        for i in range(4, 7):
            tx.send(pattern(i, 8))
            rx.recv(timeout=1).release()
        assert np.array_equal(row, pattern(2, 8))
        del row
        assert rx.stats()["held"] == 0
        rx.close()


# ---------------------------------------------------------------------------------------------
# too many kept: the LimitError says so


def test_keeping_too_many_views_says_how_to_copy(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=4) as tx:
        rx = shmarray.Channel.open(name)
        for i in range(4):
            tx.send(pattern(i, 8))
        keep = [rx.recv(timeout=1).array for _ in range(3)]
        with pytest.raises(shmarray.LimitError, match="views keep their frames.*recv_copy"):
            rx.recv(timeout=1)
        del keep
        assert np.array_equal(rx.recv_copy(timeout=1), pattern(3, 8))
        rx.close()


# ---------------------------------------------------------------------------------------------
# the property: random programs against a model


OPS = st.lists(st.one_of(
    st.tuples(st.just("send")),
    st.tuples(st.just("recv")),
    st.tuples(st.just("keep"), st.integers(0, 7)),
    st.tuples(st.just("slice"), st.integers(0, 7)),
    st.tuples(st.just("drop"), st.integers(0, 7)),
    st.tuples(st.just("release"), st.integers(0, 7)),
    st.tuples(st.just("gc")),
), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(mode=st.sampled_from(["one-to-one", "work-queue", "broadcast"]), ops=OPS)
def test_every_kept_array_holds_its_own_frame(mode: str, ops: list[tuple[Any, ...]]) -> None:
    kw = {"max_subscribers": 2, "policy": "block"} if mode == "broadcast" else {}
    with shmarray.Channel.create(None, slot_bytes=256, capacity=4, mode=mode, **kw) as tx:
        rx = open_rx(tx)
        play(tx, rx, ops)  # its locals are gone once it returns
        gc.collect()
        assert rx.stats()["held"] == 0
        rx.close()


def play(tx: Any, rx: Any, ops: list[tuple[Any, ...]]) -> None:
    sent = 0
    frames: list[tuple[int, Any]] = []  # (index, Frame) not yet let go
    arrays: list[tuple[int, Any, slice]] = []  # (index, array, where) kept by the user
    for op in ops:
        if op[0] == "send":
            try:
                tx.send(pattern(sent, 16), tag=sent, timeout=0)
                sent += 1
            except shmarray.WouldBlockError:
                pass  # a full ring: the views we keep hold it
        elif op[0] == "recv":
            try:
                f = rx.recv(timeout=0)
            except (shmarray.WouldBlockError, shmarray.LimitError):
                continue
            frames.append((int(f.tag), f))
            del f
        elif op[0] == "keep" and frames:
            i, f = frames[op[1] % len(frames)]
            arrays.append((i, f.array, slice(None)))
            del f
        elif op[0] == "slice" and arrays:
            k = op[1]
            i, a, where = arrays[k % len(arrays)]
            s = slice(k % 5, 16 - k % 3)
            arrays.append((i, a[s], _compose(where, s)))
            del a
        elif op[0] == "drop" and arrays:
            arrays.pop(op[1] % len(arrays))
        elif op[0] == "release" and frames:
            frames.pop(op[1] % len(frames))[1].release()
        elif op[0] == "gc":
            gc.collect()
        for i, a, where in arrays:
            assert np.array_equal(a, pattern(i, 16)[where]), f"kept frame {i} changed"
        for i, f in frames:
            assert np.array_equal(f.array, pattern(i, 16))


def _compose(outer: slice, inner: slice) -> slice:
    """The slice of the frame that ``a[outer][inner]`` is (steps of 1)."""
    start = (outer.start or 0) + (inner.start or 0)
    stop = (outer.start or 0) + inner.stop if inner.stop is not None else outer.stop
    if outer.stop is not None and stop is not None:
        stop = min(stop, outer.stop)
    return slice(start, stop)


# ---------------------------------------------------------------------------------------------
# 3. the Pool: a function's inputs stay its own


def test_a_pool_function_that_keeps_its_inputs_keeps_them_intact() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pool_funcs as pf

    with shmarray.Pool(1, capacity=4, context="spawn") as pool:
        firsts = [pool.submit(pf.keep_input, np.full(1000, i, np.int64)).result(timeout=30)
                  for i in range(12)]
        # each call sees every input it kept so far, intact (a worker's cache)
        for i, seen in enumerate(firsts):
            assert seen == list(range(i + 1)), (i, seen)
        # a function that does not keep its inputs gets zero-copy writable views (after its
        # first call, which learns that it does not keep them)
        kinds = [pool.submit(pf.input_kind, np.arange(10)).result(timeout=30) for _ in range(4)]
        assert kinds == [("copy", True)] + [("view", True)] * 3, kinds
        # and the keeper kept getting copies: the ring never waited for what it keeps
        assert pool.submit(pf.keep_input, np.full(1000, 99, np.int64)).result(timeout=30)[-1] == 99
