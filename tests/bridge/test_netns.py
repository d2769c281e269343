"""The bridge across two network namespaces joined by a veth pair, the way it runs between two
hosts: the sender in one namespace, the receiver in the other, IPv6 link-local addresses only
(they cannot leave the link). Each test creates its namespaces and deletes them in `finally`;
without CAP_NET_ADMIN (root) the tests skip, saying so. One link is shaped to 1 Gbit/s with
`tc tbf` to show what the drop and block policies do on a link slower than the producer."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from typing import Any, Iterator

import numpy as np
import pytest

import shmarray
from helpers import wait_for

pytest.importorskip("zmq")

MiB = 1 << 20
LINK_BYTES_PER_S = 125_000_000  # 1 Gbit/s


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class NetnsPair:
    """Namespaces a and b, veth ends ``if_a`` (fe80::a) and ``if_b`` (fe80::b)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"shmbr-{tag}-a", f"shmbr-{tag}-b"
        self.if_a, self.if_b = f"shbr{tag}a", f"shbr{tag}b"  # <= 15 characters

    def run_in(self, ns: str) -> list[str]:
        """Command prefix: run in namespace ``ns`` (only the network namespace changes, so
        /dev/shm stays shared)."""
        return ["nsenter", f"--net=/run/netns/{ns}"]

    def check(self, *args: str) -> None:
        res = _ip(*args)
        if res.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)}: {res.stderr.strip()}")


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN) to create network namespaces and a veth pair")
    missing = [t for t in ("ip", "tc", "nsenter") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (iproute2, util-linux) for network namespaces")
    pair = NetnsPair()
    res = _ip("netns", "add", pair.a)
    if res.returncode != 0:
        pytest.skip(f"cannot create a network namespace (CAP_NET_ADMIN?): {res.stderr.strip()}")
    try:
        pair.check("netns", "add", pair.b)
        pair.check("link", "add", pair.if_a, "netns", pair.a, "type", "veth", "peer", "name",
                   pair.if_b, "netns", pair.b)
        for ns, dev, addr in ((pair.a, pair.if_a, "fe80::a/64"),
                              (pair.b, pair.if_b, "fe80::b/64")):
            pair.check("-n", ns, "addr", "add", addr, "dev", dev, "nodad")
            pair.check("-n", ns, "link", "set", dev, "up")
        for ns, dev in ((pair.a, pair.if_a), (pair.b, pair.if_b)):
            wait_for(lambda ns=ns, dev=dev: "LOWER_UP" in _ip("-n", ns, "link", "show",
                                                               "dev", dev).stdout,
                     10, f"{dev} up")
        yield pair
    finally:
        for ns in (pair.a, pair.b):  # deleting a namespace deletes its veth end
            _ip("netns", "del", ns)
        left = _ip("netns", "list").stdout
        assert pair.a not in left and pair.b not in left, f"namespaces left: {left}"


def _endpoints(bridge: Any, netns: NetnsPair, dst: str, *rx_args: str) -> tuple[Any, str]:
    rx = bridge("recv", dst, f"tcp://[fe80::b%{netns.if_b}]:*", *rx_args,
                prefix=netns.run_in(netns.b))
    port = rx.port()
    return rx, f"tcp://[fe80::b%{netns.if_a}]:{port}"


def test_frames_cross_the_veth_intact_and_in_order(bridge: Any, netns: NetnsPair,
                                                   name: str, consumer: Any) -> None:
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 255, (512, 1024), dtype=np.uint8) for _ in range(6)]
    n = 40
    with shmarray.Channel.create(name + "_s", slot_bytes=MiB, capacity=8) as src:
        rx, endpoint = _endpoints(bridge, netns, name + "_d", "--slot-bytes", "1MiB")
        tx = bridge("send", name + "_s", endpoint, prefix=netns.run_in(netns.a))
        dst = shmarray.Channel.open(name + "_d", timeout=20)
        con = consumer(dst)
        for i in range(n):
            src.send(frames[i % len(frames)], tag=i, timeout=30)
        src.end()
        con.join()
        assert isinstance(con.error, shmarray.StreamEnded), con.error
        assert con.tags == list(range(n))
        for tag, got, _ in con.frames:
            np.testing.assert_array_equal(got, frames[tag % len(frames)])
        rc, st = rx.finish()
        assert rc == 0 and st["frames"] == n and st["dropped"] == 0, st
        assert st["endpoint"].startswith("tcp://[fe80::b%"), st
        assert tx.finish()[0] == 0
        dst.close()


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_a_1gbit_link_drop_keeps_the_producer_at_full_rate_block_slows_it(
        bridge: Any, netns: NetnsPair, name: str, policy: str, consumer: Any) -> None:
    res = subprocess.run(["tc", "-n", netns.a, "qdisc", "add", "dev", netns.if_a, "root", "tbf",
                          "rate", "1gbit", "burst", "512kb", "latency", "50ms"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    n, size = 300, MiB
    link_s = n * size / LINK_BYTES_PER_S  # what the link needs for the whole stream: 2.5 s
    frame = np.ones(size, np.uint8)
    with shmarray.Channel.create(name + "_s", slot_bytes=size, capacity=8) as src:
        rx, endpoint = _endpoints(bridge, netns, name + "_d", "--slot-bytes", "1MiB")
        tx = bridge("send", name + "_s", endpoint, "--policy", policy,
                    prefix=netns.run_in(netns.a))
        dst = shmarray.Channel.open(name + "_d", timeout=20)
        con = consumer(dst, keep=False)
        tx.wait_for(lambda s: s["connected"], 20, "the link")
        t0 = time.monotonic()
        for i in range(n):
            src.send(frame, tag=i, timeout=30)
        elapsed = time.monotonic() - t0
        src.end()
        con.join(60)
        assert isinstance(con.error, shmarray.StreamEnded), con.error
        got = con.tags
        rc, st_rx = rx.finish(60)
        rc_tx, st_tx = tx.finish(60)
        dst.close()
    print(f"policy {policy}: producer {elapsed:.2f} s for a stream the link needs {link_s:.2f} s "
          f"for; {len(got)} frames arrived, sender dropped {st_tx['dropped']}")
    assert rc == rc_tx == 0, (st_rx, st_tx)
    assert got == sorted(got) and st_rx["frames"] == len(got)
    if policy == "drop":
        # the producer was not held to the link's rate: it finished far sooner than the link
        # could have carried its frames (here about 0.4x, the two CPUs being shared by the
        # producer, both bridge ends and the consumer), and every frame the link could not
        # take was dropped and counted
        assert elapsed < 0.6 * link_s, (elapsed, link_s)
        assert st_tx["dropped"] > 0 and st_tx["dropped"] + st_tx["frames"] == n, st_tx
        assert st_rx["dropped"] == n - len(got) == st_tx["dropped"], (st_rx, st_tx)
    else:
        # lossless: the producer was slowed to the link's rate (minus what the rings, ZeroMQ
        # and the socket buffers hold: well under 30% of the stream)
        assert got == list(range(n)) and st_rx["dropped"] == 0 and st_tx["dropped"] == 0
        assert elapsed > 0.7 * link_s, (elapsed, link_s)
