"""Broadcast channels across real processes: every subscriber sees every frame, the two
slow-subscriber policies, joining and leaving mid-stream, dead subscribers and producers,
latest(), ls, and a corrupt segment."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest

import shmarray
from helpers import CHILD_CWD, PY, start_py, stop, wait_for

# Frame content is a function of (seq, seed), and the tag carries the crc32 of the bytes, so a
# subscriber checks integrity and order without being told what was sent.
COMMON = """
import sys, json, time, zlib, numpy as np, shmarray

def frame(seq, nbytes=1024):
    rng = np.random.default_rng(seq)
    return rng.integers(0, 256, nbytes, dtype=np.uint8)

def check(seq, tag, data):
    crc = zlib.crc32(np.ascontiguousarray(data).tobytes())
    assert crc == tag & 0xFFFFFFFF, f"frame {seq}: torn or corrupt"
    assert tag >> 32 == seq, f"frame {seq} carries the tag of frame {tag >> 32}"
"""


def frame(seq: int, nbytes: int = 1024) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, 256, nbytes, dtype=np.uint8)


def tag_of(seq: int, data: np.ndarray) -> int:
    return (seq << 32) | zlib.crc32(data.tobytes())


def check(seq: int, tag: int, data: np.ndarray) -> None:
    assert zlib.crc32(np.ascontiguousarray(data).tobytes()) == tag & 0xFFFFFFFF, f"frame {seq}"
    assert tag >> 32 == seq


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """A spawned Python child with stdin (go signals) and stdout (line protocol) pipes."""
    return subprocess.Popen([PY, "-c", COMMON + textwrap.dedent(code), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=CHILD_CWD)


def line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    out = child.stdout.readline().strip()
    if not out:
        _, err = stop(child)
        raise AssertionError(f"child died: {err[-3000:]}")
    return out


def go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def finish(child: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, err[-3000:]
    return out


def ls_line(name: str) -> str:
    """The `shmarray ls` line of segment ``name``."""
    res = subprocess.run([sys.executable, "-m", "shmarray.cli", "ls"], capture_output=True,
                         text=True, timeout=60, cwd=CHILD_CWD)
    found = [ln for ln in res.stdout.splitlines() if ln.startswith(name + " ")]
    assert found, f"ls ({res.returncode}) lists no {name}:\n{res.stdout}\n{res.stderr[-2000:]}"
    return found[0]


# A subscriber process: joins, says "ready", optionally waits for "go", then receives until the
# end of the stream, checking every frame, and prints what it saw.
SUBSCRIBER = """
name, how, wait_go = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
ch = shmarray.Channel.open(name, timeout=30)
sub = ch.subscribe()
print("ready", flush=True)
if wait_go:
    sys.stdin.readline()
seqs = []
while True:
    try:
        if how == "view":
            f = sub.recv(timeout=30)
            with f as view:
                check(f.seq, f.tag, view)
        else:
            f = sub.recv(timeout=30, copy=True)
            check(f.seq, f.tag, f.array)
    except shmarray.StreamEnded:
        break
    seqs.append(f.seq)
st = sub.stats()
sub.close()
ch.close()
print(json.dumps({"seqs": seqs, "lost": st["lost"], "received": st["received"],
                  "join_pos": st["join_pos"]}), flush=True)
"""


def test_three_subscribers_each_receive_every_frame_in_order(name: str) -> None:
    n = 600
    with shmarray.Channel.create(name, slot_bytes=4096, capacity=8, mode="broadcast",
                                 max_subscribers=4, policy="block") as ch:
        subs = [spawn(SUBSCRIBER, name, how, "0") for how in ("view", "copy", "view")]
        try:
            for s in subs:
                assert line(s) == "ready"  # all joined before the first frame
            rng = np.random.default_rng(1)
            for seq in range(n):
                data = frame(seq, int(rng.integers(1, 4096)))
                if seq % 2:
                    ch.send(data, timeout=30, tag=tag_of(seq, data))
                else:
                    with ch.loan(data.shape, np.uint8, timeout=30, tag=tag_of(seq, data)) as out:
                        out[...] = data
            ch.end()
            for s in subs:
                got = json.loads(finish(s))
                assert got["seqs"] == list(range(n)), "loss, duplicate or disorder"
                assert got["lost"] == 0 and got["received"] == n and got["join_pos"] == 0
            st = ch.stats()
            assert st["committed"] == n and st["ended"] and st["joins"] == 3
        finally:
            for s in subs:
                stop(s)


def test_block_stalled_subscriber_stalls_producer_until_it_resumes(name: str) -> None:
    cap = 4
    with shmarray.Channel.create(name, slot_bytes=2048, capacity=cap, mode="broadcast",
                                 policy="block") as ch:
        sub = spawn(SUBSCRIBER, name, "view", "1")
        try:
            assert line(sub) == "ready"
            for seq in range(cap):  # a full ring ahead of the stalled subscriber
                data = frame(seq)
                ch.send(data, timeout=5, tag=tag_of(seq, data))
            data = frame(cap)
            with pytest.raises(shmarray.WouldBlockError):
                ch.send(data, timeout=0, tag=tag_of(cap, data))
            t0 = time.monotonic()
            with pytest.raises(shmarray.WaitTimeoutError):
                ch.send(data, timeout=0.3, tag=tag_of(cap, data))
            assert 0.25 < time.monotonic() - t0 < 3
            assert ch.stats()["fill"] == cap
            go(sub)  # it resumes: the producer does too
            t0 = time.monotonic()
            for seq in range(cap, 40):
                data = frame(seq)
                ch.send(data, timeout=20, tag=tag_of(seq, data))
            assert time.monotonic() - t0 < 20
            ch.end()
            got = json.loads(finish(sub))
            assert got["seqs"] == list(range(40)) and got["lost"] == 0
        finally:
            stop(sub)


def test_drop_stalled_subscriber_never_stalls_producer_and_counts_losses(name: str) -> None:
    cap, n = 8, 200
    with shmarray.Channel.create(name, slot_bytes=2048, capacity=cap, mode="broadcast",
                                 policy="drop") as ch:
        sub = spawn(SUBSCRIBER, name, "copy", "1")
        try:
            assert line(sub) == "ready"
            t0 = time.monotonic()
            for seq in range(n):
                data = frame(seq)
                ch.send(data, timeout=0, tag=tag_of(seq, data))  # never waits
            assert time.monotonic() - t0 < 10
            ch.end()
            go(sub)
            got = json.loads(finish(sub))
            # lapped at frame 0: it skips to the oldest frame that cannot be under rewrite
            assert got["seqs"] == list(range(n - cap + 1, n))
            assert got["lost"] == n - len(got["seqs"]) == got["seqs"][0]
            assert got["received"] + got["lost"] == n
        finally:
            stop(sub)


# A fast producer process: frames of random content with the crc in the tag, as fast as it can.
PRODUCER = """
name, n, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ch = shmarray.Channel.open(name, timeout=30)
print("ready", flush=True)
sys.stdin.readline()
for seq in range(n):
    data = frame(seq % 64, nbytes)
    data[:8] = np.frombuffer(np.int64(seq).tobytes(), np.uint8)
    ch.send(data, timeout=30, tag=(seq << 32) | zlib.crc32(data.tobytes()))
ch.end()
ch.close()
print("done", flush=True)
"""


def test_drop_never_delivers_a_torn_frame(name: str) -> None:
    n, nbytes, cap = 3000, 65536, 4
    with shmarray.Channel.create(name, slot_bytes=nbytes, capacity=cap, mode="broadcast",
                                 policy="drop") as ch:
        sub = ch.subscribe()
        prod = spawn(PRODUCER, name, str(n), str(nbytes))
        try:
            assert line(prod) == "ready"
            go(prod)
            seqs, invalid, k = [], 0, 0
            while True:
                k += 1
                try:
                    if k % 3 == 1:  # recv_copy: validated, never torn
                        arr = sub.recv_copy(timeout=30)
                        seq = int(arr[:8].view(np.int64)[0])
                        expect = frame(seq % 64, nbytes)
                        assert (arr[8:] == expect[8:]).all(), f"torn frame {seq}"
                        seqs.append(seq)
                        continue
                    if k % 3 == 2:  # recv() copies under policy "drop"
                        f = sub.recv(timeout=30)
                        assert f.copied and f.valid()
                        check(f.seq, f.tag, f.array)
                    else:  # a zero-copy view: check valid() after use
                        f = sub.recv(timeout=30, copy=False)
                        crc = zlib.crc32(f.array.tobytes())
                        if not f.valid():
                            invalid += 1
                            continue
                        assert crc == f.tag & 0xFFFFFFFF, f"valid() passed a torn view {f.seq}"
                except shmarray.StreamEnded:
                    break
                seqs.append(f.seq)
                if k % 50 == 0:
                    time.sleep(0.002)  # fall behind now and then: get lapped
            assert seqs == sorted(set(seqs)), "order"
            st = sub.stats()
            assert st["received"] + st["lost"] == n, st  # every frame: received or lost, once
            assert st["received"] == len(seqs) + invalid
            assert line(prod) == "done"
        finally:
            stop(prod)
            sub.close()


def test_join_and_leave_mid_stream(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=2048, capacity=4, mode="broadcast",
                                 max_subscribers=2, policy="block") as ch:
        prod = spawn(PRODUCER, name, "4000", "256")
        try:
            assert line(prod) == "ready"
            early = ch.subscribe()  # before the first frame: receives from the first frame
            go(prod)
            f = early.recv(timeout=30)
            assert f.seq == 0
            f.release()
            early.close()  # leaves: no longer gates the producer
            for _ in range(6):
                before = ch.stats()["committed"]
                with ch.subscribe() as sub:
                    try:
                        f = sub.recv(timeout=30)
                    except shmarray.StreamEnded:
                        break
                    assert f.seq + 1 >= before, "a new subscriber starts at the newest frame"
                    expect = f.seq
                    for _ in range(30):
                        assert f.seq == expect
                        check(f.seq, f.tag, f.array)
                        f.release()
                        expect += 1
                        try:
                            f = sub.recv(timeout=30)
                        except shmarray.StreamEnded:
                            break
                    f.release()
                time.sleep(0.01)
            assert line(prod) == "done"  # the producer never waits on one who left
            assert ch.stats()["joins"] >= 3
        finally:
            stop(prod)


def test_control_queue_gets_join_and_leave_notes_and_never_blocks(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, mode="broadcast", max_subscribers=16,
                                 control_messages=2) as ch:
        a = ch.subscribe()
        a.close()
        notes = [ch.control.recv(timeout=1), ch.control.recv(timeout=1)]
        assert [m["event"] for m in notes] == ["join", "leave"]
        assert notes[0]["pid"] == os.getpid() and notes[0]["subscriber"] == a.index
        subs = [ch.subscribe() for _ in range(4)]  # the queue is full: notes are dropped
        for s in subs:
            s.close()


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_sigkill_subscriber_mid_stream(name: str, policy: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=1024, capacity=4, mode="broadcast",
                                 max_subscribers=3, policy=policy) as ch:
        victim = start_py(f"""
            import shmarray, time
            ch = shmarray.Channel.open({name!r}, timeout=30)
            sub = ch.subscribe()
            print("ready", flush=True)
            f = sub.recv(timeout=30, copy=False)   # holds frame 0 (gates under block)
            print("holding", f.seq, flush=True)
            time.sleep(60)
        """)
        other = spawn(SUBSCRIBER, name, "copy", "0")
        try:
            assert line(victim) == "ready" and line(other) == "ready"
            data = frame(0)
            ch.send(data, timeout=5, tag=tag_of(0, data))
            assert line(victim) == "holding 0"
            wait_for(lambda: f"sub {victim.pid} alive" in ls_line(name), what="ls: victim alive")
            victim.kill()
            victim.wait(10)
            t0 = time.monotonic()
            for seq in range(1, 30):  # past a full ring: needs the victim gone under block
                data = frame(seq)
                ch.send(data, timeout=10, tag=tag_of(seq, data))
            assert time.monotonic() - t0 < 5
            wait_for(lambda: ch.stats()["evicted"] == 1, what="eviction")
            text = ls_line(name)
            assert f"sub {victim.pid}" not in text and "1 evicted" in text, text
            assert f"sub {other.pid} alive" in text, text
            ch.end()
            got = json.loads(finish(other))
            assert got["seqs"] == list(range(30)) if policy == "block" else got["seqs"]
        finally:
            stop(victim)
            stop(other)


def test_producer_killed_subscribers_drain_then_peer_died(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, capacity=8, mode="broadcast") as ch:
        a, b = ch.subscribe(), ch.subscribe()
        prod = start_py(f"""
            import shmarray, numpy as np, time
            ch = shmarray.Channel.open({name!r}, timeout=30)
            for i in range(3):
                ch.send(np.array([i]))
            print("sent", flush=True)
            time.sleep(60)
        """)
        try:
            assert prod.stdout is not None and prod.stdout.readline().strip() == "sent"
            assert int(a.recv_copy(timeout=5)[0]) == 0
            prod.kill()
            prod.wait(10)
            for sub, first in ((a, 1), (b, 0)):
                assert [int(sub.recv_copy(timeout=5)[0]) for _ in range(first, 3)] == \
                    list(range(first, 3))  # committed frames are still delivered
                t0 = time.monotonic()
                with pytest.raises(shmarray.PeerDiedError, match=str(prod.pid)):
                    sub.recv(timeout=30)
                assert time.monotonic() - t0 < 5
            assert f"producer {prod.pid} dead" in ls_line(name)
        finally:
            stop(prod)


def test_latest_returns_the_newest_frame_under_load(name: str) -> None:
    for policy in ("drop", "block"):
        with shmarray.Channel.create(f"{name}{policy}", slot_bytes=65536, capacity=8,
                                     mode="broadcast", policy=policy) as ch:
            sub = ch.subscribe()
            prod = spawn(PRODUCER, ch.name, "3000", "65536")
            try:
                assert line(prod) == "ready"
                go(prod)
                seen, last = 0, -1
                while True:
                    before = ch.stats()["committed"]
                    try:
                        f = sub.latest(timeout=30)
                    except shmarray.StreamEnded:
                        break
                    assert f.copied == (policy == "drop")
                    assert f.seq + 1 >= before, f"latest gave {f.seq}, {before} were committed"
                    assert f.seq > last
                    last = f.seq
                    check(f.seq, f.tag, f.array)
                    f.release()
                    seen += 1
                    time.sleep(0.001)
                st = sub.stats()
                assert st["skipped"] > 0 and st["received"] == seen
                assert st["received"] + st["skipped"] + st["lost"] == 3000
                assert line(prod) == "done"
            finally:
                stop(prod)
                sub.close()


def test_exports() -> None:
    from shmarray.channel import broadcast

    assert shmarray.Subscriber is broadcast.Subscriber
    assert issubclass(shmarray.BroadcastChannel, shmarray.Channel)
    assert issubclass(shmarray.BroadcastFrame, shmarray.Frame)


def test_api_edges(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=4096, capacity=4, mode="broadcast",
                                 max_subscribers=2, policy="block") as ch:
        assert isinstance(ch, shmarray.Channel) and ch.policy == "block"
        with pytest.raises(shmarray.LimitError, match="subscribe"):
            ch.recv(timeout=0)
        a = ch.subscribe()
        b = shmarray.Channel.open(name).subscribe()  # another handle, same process
        with pytest.raises(shmarray.LimitError, match="max_subscribers"):
            ch.subscribe()
        assert a.try_recv() is None
        with pytest.raises(shmarray.WouldBlockError):
            a.recv(timeout=0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            a.recv(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        for i in range(3):
            ch.send(np.full((2, 3), i, np.int16), tag=i)
        held = [a.recv(timeout=1) for _ in range(3)]
        assert [f.seq for f in held] == [0, 1, 2] and all(f.valid() for f in held)
        assert not held[0].array.flags.writeable
        ch.send(np.zeros((2, 3), np.int16))
        with pytest.raises(shmarray.LimitError, match="capacity - 1"):
            a.recv(timeout=1)
        held[1].release()
        held[0].release()
        held[0].release()  # idempotent
        out = np.empty(6, np.int16)
        fr = a.recv_into(out, timeout=1)  # frame 3, shape not imposed
        assert fr.seq == 3 and fr.array is out and (out == 0).all()
        with pytest.raises(ValueError, match="not consumed"):
            b.recv_into(np.empty(5, np.int16), timeout=1)
        assert b.recv_copy(timeout=1).shape == (2, 3)  # b's frame 0 was not consumed
        held[2].release()
        ch.send(np.arange(12.0))  # another schema
        assert list(a.recv_copy(timeout=1)) == list(range(12))
        assert a.stats()["received"] == 5 and a.stats()["held"] == 0
        b.close()
        ch.end()
        with pytest.raises(shmarray.StreamEnded):
            a.recv(timeout=1)
        with pytest.raises(shmarray.StreamEnded):
            a.try_recv()
        a.close()
        with pytest.raises(shmarray.ClosedError):
            a.recv(timeout=0)
        with pytest.raises(shmarray.StreamEnded):  # ended: no producer may join
            shmarray.Channel.open(name).send(np.zeros(1))
    with pytest.raises(ValueError, match="broadcast"):
        shmarray.Channel.create(name, slot_bytes=64, policy="drop")
    with pytest.raises(ValueError, match="policy"):
        shmarray.Channel.create(name, slot_bytes=64, mode="broadcast", policy="newest")


def test_drop_iteration_and_views(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=1024, capacity=4, mode="broadcast",
                                 policy="drop") as ch:
        sub = ch.subscribe()
        for i in range(3):
            ch.send(np.full(4, i, np.int32))
        f = sub.recv(copy=False, timeout=1)
        assert not f.copied and f.valid() and list(f.array) == [0] * 4
        for i in range(3, 8):
            ch.send(np.full(4, i, np.int32))
        assert not f.valid() and not f.valid()  # overwritten: discard what was read from it
        assert sub.stats()["invalid"] == 1
        ch.end()
        got = [int(v[0]) for v in sub]  # copies into a reused buffer
        # lapped at 1: it skips to head - capacity + 1, the oldest frame that cannot be under
        # rewrite, and counts 1..4 as lost
        assert got == [5, 6, 7] and sub.stats()["lost"] == 4
        sub.close()


def test_second_producer_refused(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, mode="broadcast") as ch:
        ch.send(np.zeros(1))
        other = shmarray.Channel.open(name)
        with pytest.raises(shmarray.LimitError, match="live producer"):
            other.send(np.zeros(1))
        other.close()


def test_ls_shows_policy_subscribers_and_fill(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=4096, capacity=8, mode="broadcast",
                                 policy="block") as ch:
        sub = ch.subscribe()
        for _ in range(3):
            ch.send(np.zeros(8))
        text = ls_line(name)
        assert "channel" in text and "broadcast block cap 8" in text and "fill 3" in text, text
        assert f"producer {os.getpid()} alive" in text and f"sub {os.getpid()} alive lag 3" in text
        sub.close()
        assert "no subscribers" in ls_line(name)


def test_corrupt_broadcast_segment_never_crashes(name: str) -> None:
    # Random bytes over the header, control block, subscriber table and slot table of a live
    # segment; a separate process opens, subscribes and reads after each write: a crash would be
    # a dead child. Each write is undone before the next.
    with shmarray.Channel.create(name, slot_bytes=256, capacity=4, mode="broadcast",
                                 max_subscribers=2, policy="drop") as ch:
        for i in range(6):
            ch.send(np.full(8, i, np.int64))
        code = f"""
            import mmap, os, random, warnings
            import shmarray
            warnings.simplefilter("ignore")
            rnd = random.Random(7)
            fd = os.open("/dev/shm/shmarray.{name}", os.O_RDWR)
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
            region = (4096, 4096 + 768 + 128 * 2 + 128 * 4)  # header .. end of the slot table
            saved = mm[:]
            outcomes = {{}}
            for it in range(300):
                at = rnd.randrange(*region)
                n = rnd.choice([1, 1, 4, 8])
                mm[at:at + n] = bytes(rnd.randrange(256) for _ in range(n))
                try:
                    ch = shmarray.Channel.open({name!r}, timeout=0)
                    try:
                        sub = ch.subscribe()
                        for _ in range(3):
                            sub.recv_copy(timeout=0)
                            v = sub.latest(timeout=0, copy=False)
                            assert v.array.nbytes <= 256
                        sub.stats(); ch.stats(); sub.close()
                    finally:
                        ch.close()
                    kind = "ok"
                except shmarray.ShmArrayError as e:
                    kind = type(e).__name__
                outcomes[kind] = outcomes.get(kind, 0) + 1
                mm[:] = saved
            print(outcomes, flush=True)
        """
        res = subprocess.run([PY, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                             timeout=120, cwd=CHILD_CWD)
        assert res.returncode == 0, res.stderr[-3000:]
        outcomes = eval(res.stdout.strip())  # our own child's dict literal
        assert outcomes.get("CorruptSegmentError", 0) > 0, outcomes
        assert set(outcomes) <= {"ok", "CorruptSegmentError", "WouldBlockError", "StreamEnded",
                                 "LimitError", "PeerDiedError"}, outcomes
        sub = ch.subscribe()  # the restored segment still works
        ch.send(np.arange(8))
        assert list(sub.recv_copy(timeout=1)) == [5] * 8  # it joined at the newest frame
        assert list(sub.recv_copy(timeout=1)) == list(range(8))
        sub.close()


def test_forked_child_does_not_keep_locks(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, mode="broadcast") as ch:
        sub = ch.subscribe()
        pid = os.fork()
        if pid == 0:  # the child must not keep the parent's liveness locks
            try:
                sub.recv(timeout=0)
                os._exit(3)
            except shmarray.ClosedError:
                os._exit(0)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        ch.send(np.ones(1))
        assert sub.recv_copy(timeout=1)[0] == 1
        sub.close()


def test_signal_interrupts_a_wait(name: str) -> None:
    with shmarray.Channel.create(name, slot_bytes=64, mode="broadcast") as ch:
        child = start_py(f"""
            import shmarray, signal
            ch = shmarray.Channel.open({name!r}, timeout=10)
            sub = ch.subscribe()
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
            try:
                sub.recv(timeout=20)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            print(int(sub.recv_copy(timeout=20)[0]), flush=True)
            sub.close()
        """)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "interrupted"
            ch.send(np.array([42]))
            assert child.stdout.readline().strip() == "42"
        finally:
            stop(child)


def test_demo_runs_and_leaves_nothing(tmp_path: pathlib.Path) -> None:
    res = subprocess.run([sys.executable, "-m", "shmarray.cli", "demo", "--seconds", "1.5",
                          "--size", "320x240", "--fps", "60", "--every", "20", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=CHILD_CWD)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "nothing left in /dev/shm" in res.stdout and "0 bad frame numbers" in res.stdout
    pngs = sorted(os.listdir(str(tmp_path)))
    assert pngs and all(p.endswith(".png") for p in pngs)
    with open(os.path.join(str(tmp_path), pngs[0]), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_png_encoder_round_trips() -> None:
    from shmarray.cli.demo import draw_number, png_bytes, read_number

    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = png_bytes(img)
    # parse it back: IHDR fields, then the IDAT rows (filter byte 0 + pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (w, h) == (5, 7)
    idat = data.index(b"IDAT")
    n = int.from_bytes(data[idat - 4:idat], "big")
    raw = np.frombuffer(zlib.decompress(data[idat + 4:idat + 4 + n]), np.uint8).reshape(7, 16)
    assert (raw[:, 0] == 0).all() and (raw[:, 1:].reshape(7, 5, 3) == img).all()
    frame = np.zeros((32, 640, 3), np.uint8)
    draw_number(frame, 123456789)
    assert read_number(frame) == 123456789
