"""The sending end of a bridge: read a local channel, push every frame to a remote Receiver.

    with Sender("cam0", "tcp://gpu-host:5555", policy="block") as s:
        s.run()                      # until the stream ends (the end crosses), or stop()

Zero copy on the way out: each frame is handed to ZeroMQ as ``[header, view of the slot]``
with ``copy=False, track=True`` and its Frame lease is held until the tracker says libzmq has
written the bytes to the kernel (releasing it earlier would let the producer overwrite a slot
that is still being read). At most ``min(capacity - 1, hwm + 2)`` frames are held at once.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from .. import BroadcastChannel, Channel
from ..errors import (ClosedError, LimitError, NotFoundError, PeerDiedError, StreamEnded,
                      WaitTimeoutError)
from . import wire
from ._common import BridgeEnd, ProgressFn, log, new_session
from ._link import SLICE, SPIN_US, Link

__all__ = ["Sender", "POLICIES"]

POLICIES = ("block", "drop")
_IN_FLIGHT_POLL = 0.005  # seconds: how long a recv waits while frames are still in flight


class Sender(BridgeEnd):
    """Relays local channel ``channel`` to the Receiver at ``endpoint`` (``tcp://HOST:PORT``,
    IPv6 ``tcp://[ADDR%IFACE]:PORT``) over a ZeroMQ PUSH socket.

    The local side: a broadcast channel is joined as a new subscriber; a one-to-one or
    work-queue channel is read as its (or one of its) consumer(s). ``policy``:

    - ``"block"``: a frame waits (in 0.1 s slices) until the link takes it, so a slow link or
      an absent receiver makes this Sender stop reading and the local producer end up
      blocking (or, on a broadcast channel with policy "drop", losing frames at its side);
    - ``"drop"``: a frame the link cannot take at once is released and counted in
      ``stats()["dropped"]``; the local producer keeps its rate, except that a frame still
      being written to the link holds its slot: a producer that laps it (``capacity`` frames
      later) waits for that one frame, not for the link's rate.

    Delivery is at most once: frames in flight when the link breaks are lost, and every loss
    shows at the receiver as a gap in the link's sequence numbers. The link reconnects by
    itself (every 0.1 s, backing off to 5 s). ``hwm`` (1 or 2) is ZeroMQ's send high-water
    mark in messages. CURVE: ``curve_server_key`` is the receiver's public key (40 Z85
    characters or its certificate file); ``curve_secret`` this end's secret certificate
    (default: an ephemeral key pair). ``open_timeout``: how long run() waits for the local
    channel to appear (None: forever); ``end_timeout``: how long it waits for a receiver to
    take the end-of-stream message (None: forever). ``progress`` is called with ``stats()``
    every ``interval`` seconds from inside run().

    Raises ImportError (pyzmq missing), ValueError (bad endpoint, policy or keys).
    """

    role = "send"

    def __init__(self, channel: str, endpoint: str, *, policy: str = "block", hwm: int = 2,
                 curve_server_key: str | None = None, curve_secret: str | None = None,
                 open_timeout: float | None = None, end_timeout: float | None = 30.0,
                 progress: ProgressFn | None = None, interval: float = 1.0) -> None:
        self._link = None
        self._closed = True
        super().__init__(channel, progress, interval)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        if not 1 <= hwm <= 16:
            raise ValueError(f"hwm must be 1..16 messages (1 or 2 keeps latency low), not {hwm}")
        self.policy = policy
        self.hwm = hwm
        self.session = new_session()
        self.dropped = 0
        self.waits = 0
        self.last_seq: int | None = None
        self._next_seq = 0  # the link sequence number of the next frame taken (sent or not)
        self._open_timeout = open_timeout
        self._end_timeout = end_timeout
        self._ch: Any = None
        self._reader: Any = None
        self._mode = ""
        self._pending: collections.deque[tuple[Any, Any]] = collections.deque()
        self._closed = False
        self._link = Link("push", endpoint, hwm=hwm, curve_server_key=curve_server_key,
                          curve_secret=curve_secret)
        self._zmq = self._link.zmq

    # ------------------------------------------------------------------------------------------

    def _open_source(self) -> bool:
        """Open the local channel (waiting for it up to open_timeout); False if stopped."""
        deadline = None if self._open_timeout is None else time.monotonic() + self._open_timeout
        told = False
        while True:
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            try:
                ch = Channel.open(self.channel, timeout=max(0.0, left), spin_us=SPIN_US)
                break
            except NotFoundError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                if not told:
                    log.info("send %s: waiting for the channel to be created", self.channel)
                    told = True
            self._tick()
            if self._stopping:
                return False
        self._ch = ch
        if isinstance(ch, BroadcastChannel):
            self._reader = ch.subscribe(spin_us=SPIN_US)
        else:
            self._reader = ch
        self._mode = ch.mode
        return True

    def run(self) -> dict[str, Any]:
        """Relay frames until the local stream ends (end of stream is sent across, after
        every frame) or stop() is called; returns stats().

        Blocks on the local channel and on the link, in slices of at most 0.1 s. Raises
        PeerDiedError when the local producer died without end() (the receiver is told,
        after every frame it committed), NotFoundError when the channel does not appear
        within ``open_timeout``."""
        if self._closed:
            raise ClosedError(f"this Sender of channel {self.channel!r} is closed; make a new one")
        if self._reader is None and not self._open_source():
            self.state = "stopped"
            return self.stats()
        self.state = "running"
        log.info("send %s (%s) -> %s: session %016x, policy %s", self.channel, self._mode,
                 self._link.endpoint if self._link else "?", self.session, self.policy)
        outcome = self._pump()
        self.state = outcome
        told = False
        if outcome in ("ended", "source died"):
            told = self._drain() and self._send_control(
                wire.END if outcome == "ended" else wire.DIED)
            if not told:
                self.state = f"{outcome} (receiver not told)"
        self._tick()
        if outcome == "source died":
            raise PeerDiedError(
                f"the producer of channel {self.channel!r} died without end(); "
                + ("the receiver was told after every frame it committed" if told else
                   "the receiver could not be told (it was not connected)"))
        return self.stats()

    def _reap(self) -> None:
        pending = self._pending
        while pending and pending[0][1].done:
            pending.popleft()[0].release()

    def _pump(self) -> str:
        zmq = self._zmq
        assert self._link is not None
        sock = self._link.sock
        send = sock.send_multipart
        again = zmq.Again
        noblock = zmq.NOBLOCK
        reader = self._reader
        pending = self._pending
        max_hold = self._ch.capacity - 1  # the most frames a consumer may hold at once
        cap = max(1, min(max_hold, self.hwm + 2))
        drop = self.policy == "drop"
        own_seq = self._mode == "work-queue"
        dtype_bytes: dict[Any, bytes] = {}
        pack = wire.pack_frame
        u8 = np.uint8
        session = self.session
        realtime_ns, monotonic_ns = time.time_ns, time.monotonic_ns
        while True:
            if pending and pending[0][1].done:
                self._reap()
            self._tick()
            if self._stopping:
                return "stopped"
            full = len(pending) >= cap
            # policy "drop" keeps reading while frames are stuck in flight (a receiver that
            # stopped reading), and drops what the link cannot take
            if full and not (drop and len(pending) < max_hold):
                try:
                    pending[0][1].wait(SLICE)
                except zmq.NotDone:
                    pass
                continue
            try:
                frame = reader.recv(timeout=_IN_FLIGHT_POLL if pending else SLICE)
            except WaitTimeoutError:
                continue
            except LimitError:
                # the oldest frame in flight is a full lap old (a ring never lets a consumer
                # read past a slot it still holds): wait for libzmq to finish writing it. A
                # LimitError before any frame came is a refusal to register (another live
                # consumer, a full participant table): that one is reported, not waited out
                if not (pending or self.frames or self.dropped):
                    raise
                if pending:
                    try:
                        pending[0][1].wait(SLICE)
                    except zmq.NotDone:
                        pass
                else:  # libzmq's gc thread drops its last reference within microseconds
                    time.sleep(_IN_FLIGHT_POLL)
                continue
            except StreamEnded:
                return "ended"
            except PeerDiedError:
                return "source died"
            arr = frame.array
            seq = self._next_seq if own_seq else frame.seq
            self._next_seq = seq + 1
            if full:
                del arr  # nothing may refer to a dropped frame's slot: it goes back now
                frame.release()
                self.dropped += 1
                continue
            dt = arr.dtype
            ds = dtype_bytes.get(dt)
            if ds is None:
                ds = dtype_bytes[dt] = dt.str.encode("ascii")
            hdr = pack(session, seq, frame.seq, frame.timestamp_ns, realtime_ns(),
                       monotonic_ns(), frame.tag, ds, arr.shape, arr.nbytes)
            payload = arr.reshape(-1).view(u8)  # bytes: datetime64 has no buffer interface
            if drop:
                try:
                    tracker = send([hdr, payload], noblock, copy=False, track=True)
                except again:
                    del arr, payload
                    frame.release()
                    self.dropped += 1
                    continue
            else:
                while True:
                    try:
                        tracker = send([hdr, payload], copy=False, track=True)
                        break
                    except again:  # SNDTIMEO: one slice without room on the link
                        self.waits += 1
                        self._reap()
                        self._tick()
                        if self._stopping:
                            frame.release()
                            return "stopped"
            pending.append((frame, tracker))
            self.frames += 1
            self.nbytes += arr.nbytes
            self.last_seq = seq

    def _drain(self) -> bool:
        """Wait until libzmq has written every frame in flight, up to end_timeout; False if
        stopped or timed out first (close() then discards them before releasing them)."""
        zmq = self._zmq
        limit = self._end_timeout
        deadline = None if limit is None else time.monotonic() + limit
        while self._pending:
            try:
                self._pending[0][1].wait(SLICE)
            except zmq.NotDone:
                pass
            self._reap()
            self._tick()
            if self._stopping:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("send %s: %d frame(s) still in flight after %g s: no receiver takes "
                            "them", self.channel, len(self._pending), limit)
                return False
        return True

    def _send_control(self, kind: int) -> bool:
        """Send end of stream / source lost, waiting for the link (slices) up to end_timeout;
        False if stopped or timed out first."""
        assert self._link is not None
        seq = self._next_seq
        what = "end of stream" if kind == wire.END else "source lost"
        limit = self._end_timeout
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            hdr = wire.pack_control(kind, self.session, seq, time.time_ns(), time.monotonic_ns())
            try:
                self._link.sock.send(hdr)
                log.info("send %s: %s sent after %d frames", self.channel, what, self.frames)
                return True
            except self._zmq.Again:
                self.waits += 1
                self._tick()
                if self._stopping:
                    log.warning("send %s: stopped before %s could be sent", self.channel, what)
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    log.warning("send %s: no receiver took the %s within %g s", self.channel,
                                what, limit)
                    return False

    # ------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: frames and bytes handed to the link, dropped (policy "drop": frames the
        link could not take), waits (0.1 s slices spent waiting for the link), held (frames
        in flight), lost_at_source (a broadcast subscriber lapped by its producer), the
        link's state (connected peers, disconnects, failed handshakes), the session, the last
        link sequence number sent, and rates over the last interval."""
        st = self._common_stats()
        lost = 0
        if self._mode == "broadcast" and self._reader is not None:
            try:
                lost = int(self._reader.stats()["lost"])
            except ClosedError:
                pass
        st.update({"policy": self.policy, "mode": self._mode or None,
                   "session": f"{self.session:016x}", "dropped": self.dropped,
                   "waits": self.waits, "held": len(self._pending), "lost_at_source": lost,
                   "last_seq": self.last_seq})
        return st

    def close(self) -> None:
        """Close the link (queued messages get up to 0.5 s to go out, then are discarded),
        release every frame still in flight, leave the local channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._link is not None:
            # first: once the context is terminated libzmq reads no buffer of ours any more,
            # so the slots of frames still in flight can go back without being overwritten
            # under it
            self._link.close()
        while self._pending:
            self._pending.popleft()[0].release()
        if self._reader is not None and self._reader is not self._ch:
            self._reader.close()
        if self._ch is not None:
            self._ch.close()
        if self.state in ("starting", "running"):
            self.state = "closed"

