"""The receiving end of a bridge: bind, receive frames from a Sender, publish each into a local
channel (one copy: from ZeroMQ's buffer into a loaned slot).

    with Receiver("cam0", "tcp://*:5555", mode="broadcast", policy="drop") as r:
        r.run()                      # until the sender's stream ends, or stop()

Every message is validated before it touches the channel (see wire.py): a malformed header, a
payload of the wrong size or one that does not fit the slot is dropped and counted in
``stats()["rejected"]``, never an exception. Frames are re-stamped on arrival (the local
frame's ``timestamp_ns`` is this host's CLOCK_MONOTONIC at commit); the source's capture time
feeds ``stats()["latency_ms"]``. A gap in the link's sequence numbers is counted in
``stats()["dropped"]`` (and in the channel's, where the channel offers ``count_dropped``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import Channel
from ..errors import (
    ClosedError,
    ExistsError,
    FrameTooLargeError,
    NotFoundError,
    PeerDiedError,
    StreamEnded,
    WaitTimeoutError,
)
from . import wire
from ._common import BridgeEnd, ProgressFn, log
from ._link import SLICE, SPIN_US, Link

__all__ = ["Receiver", "ON_SENDER_LOST"]

ON_SENDER_LOST = ("fail", "end", "wait")
MODES = ("one-to-one", "work-queue", "broadcast")
_LATENCY_SAMPLES = 4096
_MAX_PART_FLOOR = 64 << 20  # bytes: MAXMSGSIZE never below this


class Receiver(BridgeEnd):
    """Binds ``endpoint`` (``tcp://*:PORT``; ``tcp://HOST:*`` picks a free port: see
    ``endpoint``) with a ZeroMQ PULL socket and publishes every frame it receives into local
    channel ``channel``.

    The channel is opened if it exists (its creator's mode, capacity and slot size apply; it
    is left in place at close), else created with ``mode`` ("one-to-one", "work-queue" or
    "broadcast" with ``policy`` and ``max_subscribers``), ``capacity`` and ``slot_bytes``, and
    unlinked at close. With ``slot_bytes=None`` it is created at the first frame, with that
    frame's size (a larger frame later is rejected: give ``slot_bytes`` for varying sizes).

    End of stream crosses the bridge: when the sender's channel ends, this channel ends once
    every frame before the end was published, and run() returns. When the sender goes away
    without an end (its process was killed, its host or link went down: seen at once when the
    connection closes, within about 4 s through TCP keepalive otherwise) and no sender comes
    back within ``sender_timeout`` seconds, or when the sender reports that its own producer
    died, ``on_sender_lost`` decides:

    - ``"fail"`` (default): this end gives up the producer role as a dead process would, so
      the channel's consumers get PeerDiedError once they have read every frame (as they
      would from a local producer that died); run() raises PeerDiedError;
    - ``"end"``: the channel ends (consumers get StreamEnded after the last frame); run()
      returns;
    - ``"wait"``: keep waiting for a sender (consumers see a pause).

    ``hwm`` is ZeroMQ's receive high-water mark (messages). CURVE: ``curve_secret`` is this
    end's secret certificate (zmq.auth format); ``curve_allow`` a directory of the public
    certificates of the senders allowed to connect (default: any sender that knows this end's
    public key). ``progress`` is called with ``stats()`` every ``interval`` seconds.

    Raises ImportError (pyzmq missing), ValueError (bad endpoint, mode or keys), ExistsError
    (the address is in use), and what Channel.create/open raise.
    """

    role = "recv"

    def __init__(self, channel: str, endpoint: str, *, mode: str = "one-to-one",
                 capacity: int = 8, slot_bytes: int | None = None, policy: str = "block",
                 max_subscribers: int = 8, on_sender_lost: str = "fail",
                 sender_timeout: float = 10.0, hwm: int = 2, curve_secret: str | None = None,
                 curve_allow: str | None = None, progress: ProgressFn | None = None,
                 interval: float = 1.0) -> None:
        self._link = None
        self._closed = True
        self._ch: Any = None
        super().__init__(channel, progress, interval)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if on_sender_lost not in ON_SENDER_LOST:
            raise ValueError(f"on_sender_lost must be one of {ON_SENDER_LOST}, "
                             f"not {on_sender_lost!r}")
        if sender_timeout < 0:
            raise ValueError(f"sender_timeout must be >= 0 seconds, not {sender_timeout}")
        if not 1 <= hwm <= 1000:
            raise ValueError(f"hwm must be 1..1000 messages, not {hwm}")
        if slot_bytes is not None and slot_bytes < 1:
            raise ValueError(f"slot_bytes must be >= 1, not {slot_bytes}")
        self.mode = mode
        self.capacity = capacity
        self.slot_bytes = slot_bytes
        self.policy = policy
        self.max_subscribers = max_subscribers
        self.on_sender_lost = on_sender_lost
        self.sender_timeout = sender_timeout
        self.created = False
        self.dropped = 0
        self.rejected: dict[str, int] = {}
        self.waits = 0
        self.sessions = 0
        self.session: int | None = None
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self._expected = 0
        self._latency = np.zeros(_LATENCY_SAMPLES, np.int64)
        self._nlat = 0
        self._no_consumer = False
        self._closed = False
        try:
            if slot_bytes is not None:
                self._ch = self._make_channel(slot_bytes)
            else:
                try:
                    self._ch = Channel.open(channel, timeout=0, spin_us=SPIN_US)
                    self._note_existing(self._ch)
                except NotFoundError:
                    pass  # created at the first frame, with its size
            self._link = Link("pull", endpoint, hwm=hwm, curve_secret=curve_secret,
                              curve_allow=curve_allow)
            self._zmq = self._link.zmq
            if self._ch is not None:
                # a part far larger than any frame the channel can hold is refused by libzmq
                # before it is allocated (it drops the connection that sent it); a frame
                # merely too large for the slot is received, rejected and counted
                self._link.sock.setsockopt(self._zmq.MAXMSGSIZE,
                                           max(2 * self._ch.slot_bytes, _MAX_PART_FLOOR))
        except BaseException:
            self.close()
            raise

    @property
    def endpoint(self) -> str:
        """The bound address (with the port chosen, for ``tcp://HOST:*``)."""
        assert self._link is not None
        return self._link.endpoint

    # ------------------------------------------------------------------------------------------
    # the local channel

    def _make_channel(self, nbytes: int) -> Any:
        for _ in range(3):
            try:
                ch = Channel.open(self.channel, timeout=0, spin_us=SPIN_US)
                self._note_existing(ch)
                return ch
            except NotFoundError:
                pass
            kw: dict[str, Any] = {}
            if self.mode == "broadcast":
                kw = {"policy": self.policy, "max_subscribers": self.max_subscribers}
            try:
                ch = Channel.create(self.channel, slot_bytes=max(nbytes, self.slot_bytes or 1),
                                    capacity=self.capacity, mode=self.mode, spin_us=SPIN_US,
                                    **kw)
            except ExistsError:
                continue  # created meanwhile by someone else: open it
            self.created = True
            log.info("recv %s: created the channel (%s, capacity %d, slots of %d bytes)",
                     self.channel, self.mode, ch.capacity, ch.slot_bytes)
            return ch
        raise ExistsError(f"channel {self.channel!r} keeps appearing and vanishing; is another "
                          "process creating and removing it?")

    def _note_existing(self, ch: Any) -> None:
        log.info("recv %s: publishing into the existing channel (%s, capacity %d, slots of %d "
                 "bytes)", self.channel, ch.mode, ch.capacity, ch.slot_bytes)

    def _abandon(self) -> None:
        """Leave the producer role the way a dead process does, so that the channel's
        consumers get PeerDiedError after draining (an orderly close() would leave them
        waiting for a producer that never comes)."""
        ch = self._ch
        if ch is not None:
            ch._abandon()  # the one internal the bridge uses

    # ------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Receive and publish frames until the sender's stream ends (returns stats()), the
        sender is lost (see ``on_sender_lost``) or stop() is called (returns stats()).

        Blocks on the link and on the local channel (a full ring pushes back through
        ZeroMQ to the sender), in slices of at most 0.1 s. The end of the sender's stream is a
        normal return. Raises PeerDiedError (``on_sender_lost="fail"`` and the sender was
        lost, or its producer died), LimitError (the channel already has a live producer
        that excludes this one), ClosedError (closed, or run() again after "fail" gave the
        channel up)."""
        if self._closed:
            raise ClosedError(f"this Receiver of channel {self.channel!r} is closed; make a "
                              "new one")
        zmq = self._zmq
        assert self._link is not None
        link = self._link
        sock = link.sock
        recv = sock.recv_multipart
        noblock = zmq.NOBLOCK
        again = zmq.Again
        poll = sock.poll
        self.state = "running"
        log.info("recv %s: listening on %s", self.channel, link.endpoint)
        while True:
            self._tick()
            if self._stopping:
                self.state = "stopped"
                break
            if (link.lost_since is not None and self.on_sender_lost != "wait"
                    and self.session is not None
                    and time.monotonic() - link.lost_since >= self.sender_timeout):
                if self._lost(f"the sender went away (last seq {self.last_seq}) and none "
                              f"came back within {self.sender_timeout:g} s"):
                    break
            try:
                parts = recv(noblock, copy=False)
            except again:
                poll(int(SLICE * 1000))
                continue
            if self._handle(parts):
                break
        if self.state == "running":  # stop() while waiting on the channel
            self.state = "stopped"
        self._tick()
        return self.stats()

    def _reject(self, reason: str) -> None:
        n = self.rejected.get(reason, 0)
        self.rejected[reason] = n + 1
        if n == 0 or (n + 1) % 1000 == 0:
            log.warning("recv %s: rejected a message (%s; %d so far)", self.channel, reason,
                        n + 1)

    def _sequence(self, h: wire.Header) -> bool:
        """Follow the link's sequence numbers: a new session restarts them, a gap is a loss
        (counted); a step back within a session is a rejected message."""
        if h.session != self.session:
            self.session = h.session
            self.sessions += 1
            self.first_seq = h.seq
            self._expected = h.seq
            log.info("recv %s: sender session %016x starts at seq %d", self.channel, h.session,
                     h.seq)
        gap = h.seq - self._expected
        if gap < 0:
            self._reject("out_of_order")
            return False
        if gap:
            self.dropped += gap
            ch = self._ch
            if ch is not None and hasattr(ch, "count_dropped"):
                ch.count_dropped(gap)
            log.warning("recv %s: %d frame(s) lost before seq %d (seq %d..%d)", self.channel,
                        gap, h.seq, self._expected, h.seq - 1)
            self._expected = h.seq
        return True

    def _handle(self, parts: list[Any]) -> bool:
        """One message; True when run() must return."""
        h = wire.decode(parts[0].buffer)
        if isinstance(h, str):
            self._reject(h)
            return False
        if h.kind == wire.FRAME:
            if len(parts) != 2:
                self._reject("parts")
                return False
            payload = parts[1].buffer
            if payload.nbytes != h.nbytes:
                self._reject("size")
                return False
            if not self._sequence(h):
                return False
            return self._publish(h, payload)
        if len(parts) != 1:
            self._reject("parts")
            return False
        if not self._sequence(h):
            return False
        if h.kind == wire.END:
            self._end()
            if self._link is not None:
                for text in self._link.goodbye():
                    log.info("recv %s: %s", self.channel, text)
            self.state = "ended"
            log.info("recv %s: end of stream after %d frames", self.channel, self.frames)
            return True
        return self._lost("the sender's producer died without end()")

    def _end(self) -> None:
        if self._ch is None:  # no frame came: still end it, so consumers waiting for it stop
            self._ch = self._make_channel(1)
        self._ch.end()

    def _lost(self, why: str) -> bool:
        """Apply on_sender_lost; True when run() must return."""
        mode = self.on_sender_lost
        log.warning("recv %s: %s", self.channel, why)
        if mode == "wait":
            return False
        if mode == "end":
            self._end()
            self.state = "ended (sender lost)"
            return True
        self._abandon()
        self.state = "sender lost"
        raise PeerDiedError(f"bridge to channel {self.channel!r}: {why}; its consumers get "
                            "PeerDiedError once they have read every frame")

    def _publish(self, h: wire.Header, payload: Any) -> bool:
        ch = self._ch
        if ch is None:
            ch = self._ch = self._make_channel(h.nbytes)
        if h.nbytes > ch.slot_bytes:
            self._reject("too_large")
            return False
        while True:
            try:
                loan = ch.loan(h.shape, h.dtype, timeout=SLICE, tag=h.tag)
                break
            except WaitTimeoutError:  # the ring is full: the consumers are behind
                self.waits += 1
            except PeerDiedError:  # every consumer died and the ring is full
                if not self._no_consumer:
                    log.warning("recv %s: every consumer died; waiting for one", self.channel)
                    self._no_consumer = True
                self.waits += 1
            except TypeError:
                self._reject("dtype")
                return False
            except FrameTooLargeError:
                self._reject("too_large")
                return False
            except StreamEnded:
                self.state = "ended"
                log.info("recv %s: the channel was ended locally", self.channel)
                return True
            self._tick()
            if self._stopping:
                return True
        try:
            dst = loan.array.reshape(-1).view(np.uint8)
            dst[...] = np.frombuffer(payload, np.uint8)
        except BaseException:
            loan.abort()
            raise
        loan.commit()
        self._no_consumer = False
        self._expected = h.seq + 1
        self.last_seq = h.seq
        self.frames += 1
        self.nbytes += h.nbytes
        self._latency[self._nlat % _LATENCY_SAMPLES] = time.time_ns() - h.capture_realtime_ns()
        self._nlat += 1
        return False

    # ------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: frames and bytes published, dropped (gaps in the link's sequence
        numbers: frames lost on the way), rejected (malformed or unfit messages, by reason),
        waits (0.1 s slices spent on a full local ring), sessions seen, the current session,
        first and last sequence number, the link's state, rates over the last interval, and
        latency_ms: the source's capture time to this end's commit (p50, p99, max over the
        last 4096 frames; across hosts it includes the clocks' offset)."""
        st = self._common_stats()
        n = min(self._nlat, _LATENCY_SAMPLES)
        lat = None
        if n:
            ms = self._latency[:n] / 1e6
            lat = {"p50": round(float(np.percentile(ms, 50)), 3),
                   "p99": round(float(np.percentile(ms, 99)), 3),
                   "max": round(float(ms.max()), 3), "n": n}
        ch = self._ch
        st.update({"mode": ch.mode if ch is not None else self.mode,
                   "created": self.created, "dropped": self.dropped,
                   "rejected": sum(self.rejected.values()),
                   "rejected_by_reason": dict(self.rejected), "waits": self.waits,
                   "sessions": self.sessions,
                   "session": None if self.session is None else f"{self.session:016x}",
                   "first_seq": self.first_seq, "last_seq": self.last_seq,
                   "latency_ms": lat, "on_sender_lost": self.on_sender_lost})
        return st

    def close(self) -> None:
        """Close the link and leave the channel (without ending it: end of stream comes from
        the sender); a channel this Receiver created is unlinked. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._link is not None:
            self._link.close()
        ch = self._ch
        if ch is not None:
            ch.close()
            if self.created:
                try:
                    ch.unlink()
                except NotFoundError:
                    pass
        if self.state in ("starting", "running"):
            self.state = "closed"

