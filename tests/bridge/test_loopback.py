"""The bridge on loopback: real channels, real processes (``python -m shmarray.bridge``), real
sockets. Frames intact and in order, end of stream, a receiver killed and restarted, a sender
or a producer killed, malformed messages, CURVE, backpressure, drop and block."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import numpy as np
import pytest

import shmarray
from helpers import CHILD_CWD, start_py, stop, wait_for
from shmarray.bridge import Receiver, Sender, wire

zmq = pytest.importorskip("zmq")

KiB = 1024


def sample_frames() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [
        rng.random((16, 16), dtype=np.float32),
        np.arange(100, dtype=np.uint8),
        np.array(-5, dtype=np.int64),                           # 0-d
        rng.random((3, 4)) > 0.5,                               # bool
        (rng.random((2, 2, 2)) + 1j * rng.random((2, 2, 2))),   # complex128
        np.array([1, 2, 3, 4, 5], dtype="datetime64[ns]"),
        np.arange(7, dtype=">u4"),                              # big-endian
        np.zeros((0, 3)),                                       # empty
        np.arange(256, dtype=np.int16).reshape(2, 2, 2, 2, 2, 2, 2, 2),  # 8 dimensions
        rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------


def test_frames_intact_in_order_and_end_of_stream_crosses(bridge: Any, name: str,
                                                          consumer: Any) -> None:
    frames = sample_frames() * 3
    with shmarray.Channel.create(name + "_s", slot_bytes=64 * KiB, capacity=8) as src:
        rx = bridge("recv", name + "_d", "tcp://127.0.0.1:*", "--slot-bytes", "64KiB")
        tx = bridge("send", name + "_s", rx.endpoint())
        dst = shmarray.Channel.open(name + "_d", timeout=20)
        con = consumer(dst)
        sent_ns = []
        for i, a in enumerate(frames):
            sent_ns.append(time.monotonic_ns())
            src.send(a, tag=1000 + i, timeout=20)
        src.end()
        con.join()
        assert isinstance(con.error, shmarray.StreamEnded), con.error
        assert con.tags == [1000 + i for i in range(len(frames))]
        for (tag, got, ts), want, t0 in zip(con.frames, frames, sent_ns):
            assert got.dtype == want.dtype and got.shape == want.shape, tag
            np.testing.assert_array_equal(got, want)
            assert ts > t0  # re-stamped on arrival, on this host's clock
        rc, st = rx.finish()
        assert rc == 0 and st["state"] == "ended" and st["final"], st
        assert (st["frames"], st["dropped"], st["rejected"]) == (len(frames), 0, 0), st
        assert st["latency_ms"]["n"] == len(frames)
        rc, st2 = tx.finish()
        assert rc == 0 and st2["state"] == "ended", st2
        assert st2["frames"] == len(frames) and st2["session"] == st["session"]
        dst.close()


@pytest.mark.parametrize("rx_mode", ["broadcast", "work-queue"])
def test_broadcast_source_and_other_receiving_modes(bridge: Any, name: str,
                                                    rx_mode: str, consumer: Any) -> None:
    n = 60
    with shmarray.Channel.create(name + "_s", slot_bytes=4 * KiB, capacity=8, mode="broadcast",
                                 policy="block") as src:
        rx = bridge("recv", name + "_d", "tcp://127.0.0.1:*", "--slot-bytes", "4KiB",
                    "--mode", rx_mode)
        tx = bridge("send", name + "_s", rx.endpoint())
        tx.wait_for(lambda s: s["state"] == "running", what="the sender's subscription")
        dst = shmarray.Channel.open(name + "_d", timeout=20)
        if rx_mode == "broadcast":
            readers = [dst.subscribe(), dst.subscribe()]
        else:
            readers = [dst, shmarray.Channel.open(name + "_d", timeout=20)]
        cons = [consumer(r) for r in readers]
        for i in range(n):
            src.send(np.full(100, i, np.int32), tag=i, timeout=20)
        src.end()
        for c in cons:
            c.join()
            assert isinstance(c.error, shmarray.StreamEnded), c.error
            assert all(int(a[0]) == t for t, a, _ in c.frames)
        if rx_mode == "broadcast":  # every subscriber sees every frame
            assert [c.tags for c in cons] == [list(range(n))] * 2
        else:  # each frame to exactly one consumer
            assert sorted(cons[0].tags + cons[1].tags) == list(range(n))
        assert rx.finish()[0] == 0 and tx.finish()[0] == 0
        for r in readers:
            r.close()


def test_receiver_killed_and_restarted_sender_resumes_loss_reported_by_seq(
        bridge: Any, name: str, consumer: Any) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with shmarray.Channel.create(name + "_s", slot_bytes=4 * KiB, capacity=8) as src, \
            shmarray.Channel.create(name + "_d", slot_bytes=4 * KiB, capacity=8) as dst:
        rx = bridge("recv", name + "_d", endpoint)
        tx = bridge("send", name + "_s", endpoint)
        con = consumer(dst, retry_dead=True)
        stop_producer = threading.Event()

        def produce() -> None:  # 500 frames/s, each send retried while the ring is full
            i = 0
            while not stop_producer.is_set():
                try:
                    src.send(np.full(64, i, np.int64), tag=i, timeout=0.2)
                except shmarray.WaitTimeoutError:
                    continue
                i += 1
                time.sleep(0.002)
            src.end()

        prod = threading.Thread(target=produce, daemon=True)
        prod.start()
        try:
            wait_for(lambda: len(con.frames) > 100, 20, "frames through the first receiver")
            rx.signal(signal.SIGKILL)
            rx.finish()
            before = len(con.frames)
            last_old = con.tags[-1]
            rx2 = bridge("recv", name + "_d", endpoint)
            # the sender reconnects by itself: frames flow again
            wait_for(lambda: len(con.frames) > before + 100, 30, "frames after the restart")
        finally:
            stop_producer.set()
            prod.join(30)
        con.stop_at = time.monotonic() + 20
        con.join()
        assert isinstance(con.error, shmarray.StreamEnded), con.error
        rc, st = rx2.finish()
        assert rc == 0, st
        tags = con.tags
        assert tags == sorted(set(tags))  # in order, never twice
        after = tags[tags.index(last_old) + 1:]
        # the restarted receiver joined the same sender session at first_seq and reports it;
        # the frames between the last one delivered and first_seq are the (visible) loss
        assert after[0] == st["first_seq"] and after == list(range(after[0], after[-1] + 1))
        assert tags[:tags.index(last_old) + 1] == list(range(last_old + 1))
        rc, st_tx = tx.finish()
        assert rc == 0 and st_tx["session"] == st["session"] and st["sessions"] == 1
        assert con.dead_seen >= 1  # meanwhile the consumer saw its producer die
        assert st_tx["disconnects"] >= 1


@pytest.mark.parametrize("on_lost,error,code", [("fail", shmarray.PeerDiedError, 3),
                                                ("end", shmarray.StreamEnded, 0)])
def test_sender_killed_consumers_get_the_documented_outcome(bridge: Any, name: str,
                                                            on_lost: str, error: type,
                                                            code: int, consumer: Any) -> None:
    with shmarray.Channel.create(name + "_s", slot_bytes=4 * KiB, capacity=8) as src:
        rx = bridge("recv", name + "_d", "tcp://127.0.0.1:*", "--slot-bytes", "4KiB",
                    "--on-sender-lost", on_lost, "--sender-timeout", "0.5")
        tx = bridge("send", name + "_s", rx.endpoint())
        dst = shmarray.Channel.open(name + "_d", timeout=20)
        con = consumer(dst)
        for i in range(20):
            src.send(np.full(8, i), tag=i, timeout=20)
        wait_for(lambda: len(con.frames) == 20, 20, "20 frames")
        tx.signal(signal.SIGKILL)
        con.join(20)
        assert isinstance(con.error, error), con.error
        assert con.tags == list(range(20))  # every frame first, then the outcome
        rc, st = rx.finish()
        assert rc == code, (st, rx.stderr())
        assert st["state"] == ("sender lost" if on_lost == "fail" else "ended (sender lost)")
        dst.close()


def test_source_producer_killed_is_reported_across(bridge: Any, name: str, consumer: Any) -> None:
    producer = start_py("""
        import sys, time, numpy as np, shmarray
        ch = shmarray.Channel.create(sys.argv[1], slot_bytes=4096, capacity=8)
        for i in range(10):
            ch.send(np.full(8, i), tag=i, timeout=30)
        print("sent", flush=True)
        time.sleep(60)
    """, name + "_s")
    try:
        rx = bridge("recv", name + "_d", "tcp://127.0.0.1:*", "--slot-bytes", "4KiB")
        tx = bridge("send", name + "_s", rx.endpoint())
        dst = shmarray.Channel.open(name + "_d", timeout=20)
        con = consumer(dst)
        assert producer.stdout is not None and producer.stdout.readline().strip() == "sent"
        wait_for(lambda: len(con.frames) == 10, 20, "10 frames")
        producer.kill()
        con.join(20)
        assert isinstance(con.error, shmarray.PeerDiedError), con.error
        assert con.tags == list(range(10))
        assert tx.finish()[0] == 3 and rx.finish()[0] == 3
        dst.close()
    finally:
        stop(producer)
        try:
            shmarray.unlink(name + "_s")  # its owner was killed
        except shmarray.NotFoundError:
            pass


def test_malformed_messages_are_dropped_and_counted(bridge: Any, name: str, consumer: Any) -> None:
    rx = bridge("recv", name + "_d", "tcp://127.0.0.1:*", "--slot-bytes", "4KiB")
    endpoint = rx.endpoint()
    dst = shmarray.Channel.open(name + "_d", timeout=20)
    con = consumer(dst)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    try:
        push.connect(endpoint)
        session = 77

        def frame(seq: int, arr: np.ndarray, dt: str | None = None) -> list[bytes]:
            hdr = wire.pack_frame(session, seq, seq, time.monotonic_ns(), time.time_ns(),
                                  time.monotonic_ns(), seq, (dt or arr.dtype.str).encode(),
                                  arr.shape, arr.nbytes)
            return [hdr, arr.tobytes()]

        good = [frame(i, np.full(16, i, np.int32)) for i in range(8)]
        bad_magic = frame(3, np.zeros(4))
        bad_magic[0] = b"X" + bad_magic[0][1:]
        msgs: list[list[bytes]] = [
            good[0],
            [b"hello"],                                                # length
            [good[1][0], good[1][1][:-1]],                             # payload too short
            bad_magic,                                                 # magic
            [good[1][0], good[1][1], b"extra"],                        # parts
            [good[1][0]],                                              # frame without payload
            frame(1, np.zeros(2048, np.float32)),                      # 8 KiB: too_large
            frame(1, np.zeros(4, "V4"), "<V4"),                        # dtype: void
            [wire.pack_frame(session, 1, 1, 0, 0, 0, 1, b"<c32", (1,), 32),
             b"\0" * 32],                                              # dtype: no channel
            good[1], good[2],
            good[5],                                                   # seq 3, 4 lost
            good[4],                                                   # a step back
            good[6],
            [wire.pack_control(wire.END, session, 7, 0, 0), b"x"],     # parts
            good[7],
            [wire.pack_control(wire.END, session, 8, 0, 0)],
        ]
        for m in msgs:
            push.send_multipart(m)
        con.join(20)
        rc, st = rx.finish()
    finally:
        push.close(linger=0)
        ctx.term()
    assert isinstance(con.error, shmarray.StreamEnded), con.error
    assert con.tags == [0, 1, 2, 5, 6, 7]
    for t, a, _ in con.frames:
        np.testing.assert_array_equal(a, np.full(16, t, np.int32))
    assert rc == 0, rx.stderr()
    assert st["rejected_by_reason"] == {"length": 1, "size": 1, "magic": 1, "parts": 3,
                                        "too_large": 1, "dtype": 2, "out_of_order": 1}, st
    assert st["dropped"] == 2 and st["frames"] == 6
    dst.close()


def test_curve_encrypts_and_refuses_unknown_senders(bridge: Any, name: str,
                                                    tmp_path: Any, consumer: Any) -> None:
    import zmq.auth

    zmq.auth.create_certificates(str(tmp_path), "server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    zmq.auth.create_certificates(str(allowed), "client")
    other = tmp_path / "other"
    other.mkdir()
    zmq.auth.create_certificates(str(other), "rogue")
    with shmarray.Channel.create(name + "_s", slot_bytes=4 * KiB, capacity=8) as src:
        rx = bridge("recv", name + "_d", "tcp://127.0.0.1:*", "--slot-bytes", "4KiB",
                    "--curve-secret", str(tmp_path / "server.key_secret"),
                    "--curve-allow", str(allowed))
        ep = rx.endpoint()
        # no keys at all, and keys the receiver does not know: both refused at the handshake
        # (they connect at once; the channel they wait for never appears)
        plain = bridge("send", name + "_none", ep)
        rx.wait_for(lambda s: s["handshake_failures"] >= 1, 20, "a refused plain sender")
        plain.close()
        rogue = bridge("send", name + "_none", ep, "--curve-server-key",
                       str(tmp_path / "server.key"), "--curve-secret",
                       str(other / "rogue.key_secret"))
        rx.wait_for(lambda s: s["handshake_failures"] >= 2, 20, "a refused rogue sender")
        rogue.close()
        assert rx.last["frames"] == 0 and rx.last["connected"] == 0
        tx = bridge("send", name + "_s", ep, "--curve-server-key",
                    str(tmp_path / "server.key"), "--curve-secret",
                    str(allowed / "client.key_secret"))
        dst = shmarray.Channel.open(name + "_d", timeout=20)
        con = consumer(dst)
        for i in range(10):
            src.send(np.full(8, i), tag=i, timeout=20)
        src.end()
        con.join()
        assert con.tags == list(range(10))
        assert rx.finish()[0] == 0 and tx.finish()[0] == 0
        dst.close()


@contextlib.contextmanager
def _stalled_link(bridge: Any, name: str, consumer: Any, n: int, frame_bytes: int,
                  stall_at: int, stall_s: float) -> Iterator[tuple[Any, Any, Any]]:
    """A sender and a receiver bridging ``name_s`` to ``name_d``, whose consumer stalls
    ``stall_s`` seconds after its ``stall_at``-th frame; ``n`` frames of ``frame_bytes`` are
    sent and the stream ended inside. Yields (rx, tx, consumer)."""
    slot = f"{frame_bytes // KiB}KiB"
    with shmarray.Channel.create(name + "_s", slot_bytes=frame_bytes, capacity=8) as src:
        rx = bridge("recv", name + "_d", "tcp://127.0.0.1:*", "--slot-bytes", slot)
        tx = bridge("send", name + "_s", rx.endpoint())
        dst = shmarray.Channel.open(name + "_d", timeout=20)
        con = consumer(dst, pause=lambda k: time.sleep(stall_s) if k == stall_at else None)
        for i in range(n):
            src.send(np.full(frame_bytes // 8, i, np.int64), tag=i, timeout=30)
        src.end()
        yield rx, tx, con
        dst.close()


def test_backpressure_keeps_the_link_and_loses_nothing(bridge: Any, name: str,
                                                       consumer: Any) -> None:
    """The consumer stalls 4.5 s, longer than a ZMTP heartbeat timeout of 3 s would allow a
    stream that is not being read: the link must stay up and lose nothing."""
    n = 60
    with _stalled_link(bridge, name, consumer, n, 64 * KiB, 5, 4.5) as (rx, tx, con):
        con.join()
        assert con.tags == list(range(n))
        rc, st = rx.finish()
        assert rc == 0 and st["disconnects"] == 0 and st["dropped"] == 0, st
        assert st["waits"] > 0  # the receiver did wait on its full ring
        rc, st = tx.finish()
        assert rc == 0 and st["disconnects"] == 0, st


def test_a_sender_that_ends_and_leaves_is_no_lost_link(bridge: Any, name: str,
                                                       consumer: Any) -> None:
    """The sender ends its stream and closes while the receiver, back-pressured by a stalled
    consumer, still has frames and the end of stream queued: the receiver sees the close
    before it reads the end, and that goodbye is not a disconnect."""
    n = 10  # the consumer takes 1 and stalls, 8 fill the ring, the 10th waits for space:
    # the end of stream is then in ZeroMQ's queue (hwm 2) and the close behind it
    with _stalled_link(bridge, name, consumer, n, 4 * KiB, 1, 2.0) as (rx, tx, con):
        rc, st = tx.finish()  # the sender is gone before the consumer wakes
        assert rc == 0 and st["disconnects"] == 0, st
        con.join()
        assert con.tags == list(range(n))
        rc, st = rx.finish()
        assert rc == 0 and st["disconnects"] == 0 and st["dropped"] == 0, st
        assert st["waits"] > 0  # it did wait on its full ring, with the sender gone


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_no_receiver_drop_keeps_the_producer_going_block_stops_it(bridge: Any, name: str,
                                                                  policy: str) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nobody listens
    with shmarray.Channel.create(name + "_s", slot_bytes=4 * KiB, capacity=8) as src:
        tx = bridge("send", name + "_s", endpoint, "--policy", policy, "--end-timeout", "0.5")
        tx.wait_for(lambda s: s["state"] == "running", what="the sender to start")
        sent = 0
        try:
            for i in range(300):
                src.send(np.full(8, i), tag=i, timeout=1.0)
                sent += 1
        except shmarray.WaitTimeoutError:
            pass
        if policy == "drop":
            assert sent == 300  # the producer never waited
            src.end()
            rc, st = tx.finish()
            assert rc == 0 and st["dropped"] == 300 and st["frames"] == 0, st
            assert st["state"] == "ended (receiver not told)"
        else:
            # the ring (8) and the frames the sender holds (capacity - 1 at most), then it blocks
            assert 8 <= sent <= 8 + 7, sent
            st = tx.wait_for(lambda s: s["waits"] > 3, what="the sender waiting for the link")
            assert st["dropped"] == 0 and st["frames"] <= 4
            tx.signal(signal.SIGTERM)
            rc, st = tx.finish()
            assert rc == 0 and st["state"] == "stopped"


def test_embedded_api_and_stop(name: str) -> None:
    """Sender and Receiver as objects in threads of one process; stop() ends run()."""
    with shmarray.Channel.create(name + "_s", slot_bytes=4 * KiB, capacity=8) as src:
        with Receiver(name + "_d", "tcp://127.0.0.1:*", slot_bytes=4 * KiB) as r, \
                Sender(name + "_s", r.endpoint) as s:
            out: dict[str, Any] = {}
            threads = [threading.Thread(target=lambda: out.update(r=r.run())),
                       threading.Thread(target=lambda: out.update(s=s.run()))]
            for t in threads:
                t.start()
            dst = shmarray.Channel.open(name + "_d", timeout=20)
            for i in range(5):
                src.send(np.full(8, i), tag=i, timeout=20)
            got = [dst.recv_copy(timeout=20)[0] for _ in range(5)]
            assert got == list(range(5))
            t0 = time.monotonic()
            s.stop()
            r.stop()
            for t in threads:
                t.join(5)
                assert not t.is_alive()
            assert time.monotonic() - t0 < 1.0
            assert out["s"]["state"] == out["r"]["state"] == "stopped"
            assert out["r"]["frames"] == 5 and out["s"]["frames"] == 5
            dst.close()


def test_cli_errors_exit_with_a_message(name: str) -> None:
    run = [sys.executable, "-m", "shmarray.bridge"]
    res = subprocess.run([*run, "recv", name, "udp://nowhere"], capture_output=True, text=True,
                         timeout=60, cwd=CHILD_CWD)
    assert res.returncode == 2 and "tcp://HOST:PORT" in res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run([*run, "recv", name, f"tcp://127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=60, cwd=CHILD_CWD)
    assert res.returncode == 1 and "in use" in res.stderr, res.stderr
    res = subprocess.run([*run, "send", name, "tcp://127.0.0.1:1", "--wait", "0.2"],
                         capture_output=True, text=True, timeout=60, cwd=CHILD_CWD)
    assert res.returncode == 1 and "not found" in res.stderr, res.stderr


def test_add_parser_plugs_into_a_command_line() -> None:
    import argparse

    from shmarray.bridge import add_parser

    parser = argparse.ArgumentParser(prog="shmarray")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bridge", "recv", "cam0", "tcp://*:5555", "--mode", "broadcast",
                              "--slot-bytes", "6MiB"])
    assert (args.bridge_command, args.channel, args.endpoint, args.mode, args.slot_bytes) == \
        ("recv", "cam0", "tcp://*:5555", "broadcast", 6 << 20)
    args = parser.parse_args(["bridge", "send", "cam0", "tcp://host:5555", "--policy", "drop"])
    assert (args.bridge_command, args.policy) == ("send", "drop") and callable(args.func)


def test_a_sender_refused_as_consumer_says_so(name: str) -> None:
    # a one-to-one channel whose consumer role is taken: the sender cannot register, and
    # run() reports it (LimitError) instead of retrying forever
    with shmarray.Channel.create(name, slot_bytes=64, capacity=8) as ch:
        other = shmarray.Channel.open(name)
        assert other.try_recv() is None  # holds the consumer role
        s = Sender(name, "tcp://127.0.0.1:9", open_timeout=5)
        try:
            t0 = time.monotonic()
            with pytest.raises(shmarray.LimitError, match="already has a live consumer"):
                s.run()
            assert time.monotonic() - t0 < 5
        finally:
            s.close()
            other.close()
        assert ch.stats()["committed"] == 0
