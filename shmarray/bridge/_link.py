"""One ZeroMQ link end for the bridge: the socket, its options, CURVE keys, and a monitor that
tells when the peer connects and goes away. The only module of the bridge that configures
libzmq; imported only when a Sender or Receiver is made (importing shmarray never imports zmq).
"""

from __future__ import annotations

import errno
import os
import time
from types import ModuleType
from typing import Any

from ..errors import ExistsError

SLICE = 0.1  # seconds: the longest a bridge call blocks before it checks stop and liveness
# The bridge's channel handles never spin: a frame crossing the network takes milliseconds,
# and a spinning waiter only takes CPU from libzmq's I/O thread
SPIN_US = 0
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000
# Dead-peer detection is TCP keepalive, not ZMTP heartbeats: a heartbeat travels in the
# stream, behind the data, so a link that is legitimately back-pressured (the receiving
# channel full for longer than the heartbeat timeout, which policy "block" makes normal) would
# stop reading it and libzmq would drop the connection and every frame queued in it. Keepalive
# probes are answered by the peer's kernel whatever the application reads: a dead host is
# found after KEEPALIVE_IDLE_S + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL_S of silence (about 4 s).
KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3
LINGER_MS = 500  # what close() gives queued messages (the end-of-stream message) to go out


def require_zmq() -> ModuleType:
    """The zmq module, or ImportError saying how to install it."""
    try:
        import zmq
    except ImportError as exc:
        raise ImportError("the shmarray bridge needs pyzmq: pip install 'shmarray[bridge]' "
                          "(or pip install pyzmq)") from exc
    return zmq


def check_endpoint(endpoint: str) -> str:
    """A tcp:// (or ipc://) endpoint, else ValueError showing the expected form."""
    if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://")) \
            or len(endpoint) <= 6:
        raise ValueError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT to connect or "
                         "tcp://*:PORT to bind (IPv6: tcp://[ADDR%IFACE]:PORT)")
    return endpoint


def server_key(zmq: ModuleType, key: str) -> bytes:
    """A CURVE public key given as 40 Z85 characters or as a certificate file."""
    if len(key) == 40 and not os.path.exists(key):
        try:
            zmq.utils.z85.decode(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"--curve-server-key {key!r} is not a Z85 key") from exc
        return key.encode("ascii")
    public, _secret = _load_cert(zmq, key)
    return public


def _load_cert(zmq: ModuleType, path: str) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read CURVE certificate {path!r}: {exc} (make one with "
                         "zmq.auth.create_certificates(DIR, NAME))") from exc
    return public, secret


def secret_cert(zmq: ModuleType, path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a secret certificate file (zmq.auth's NAME.key_secret)."""
    public, secret = _load_cert(zmq, path)
    if not secret:
        raise ValueError(f"CURVE certificate {path!r} holds no secret key: pass the "
                         ".key_secret file, not the public .key")
    return public, secret


class Link:
    """A PUSH (connect) or PULL (bind) socket with the bridge's options and a monitor.

    ``connected`` counts peers whose ZMTP handshake succeeded and who have not gone away
    (a killed peer's TCP connection closes at once; a dead host's is dropped by TCP keepalive
    after about 4 s of silence). ``endpoint`` is the bound or connected address."""

    def __init__(self, kind: str, endpoint: str, *, hwm: int, curve_secret: str | None = None,
                 curve_server_key: str | None = None, curve_allow: str | None = None,
                 linger_ms: int = LINGER_MS) -> None:
        zmq = self.zmq = require_zmq()
        check_endpoint(endpoint)
        self.ctx = zmq.Context(io_threads=1)
        self.auth: Any = None
        self.monitor: Any = None
        self.connected = 0
        self.handshake_failures = 0
        self.disconnects = 0
        self.lost_since_handshake = 0  # disconnects counted since the last handshake
        self.ended = False  # the stream ended (see goodbye)
        self.last_event = ""
        self.lost_since: float | None = None  # monotonic time the last peer went away
        push = kind == "push"
        s = self.sock = self.ctx.socket(zmq.PUSH if push else zmq.PULL)
        try:
            s.setsockopt(zmq.LINGER, linger_ms if push else 0)
            s.setsockopt(zmq.SNDHWM if push else zmq.RCVHWM, hwm)
            s.setsockopt(zmq.IPV6, 1)  # tcp://* binds dual-stack; [fe80::1%eth0] works
            s.setsockopt(zmq.TCP_KEEPALIVE, 1)
            s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
            s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTERVAL_S)
            s.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_COUNT)
            if push:
                s.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a completed connection
                s.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
                s.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
                s.setsockopt(zmq.SNDTIMEO, int(SLICE * 1000))
                if curve_server_key is not None:
                    s.curve_serverkey = server_key(zmq, curve_server_key)
                    if curve_secret is not None:
                        public, secret = secret_cert(zmq, curve_secret)
                    else:
                        public, secret = zmq.curve_keypair()
                    s.curve_publickey = public
                    s.curve_secretkey = secret
                elif curve_secret is not None:
                    raise ValueError("--curve-secret on the sending side needs "
                                     "--curve-server-key (the receiver's public key)")
            else:
                if curve_secret is not None:
                    public, secret = secret_cert(zmq, curve_secret)
                    if curve_allow is not None:
                        from zmq.auth.thread import ThreadAuthenticator

                        if not os.path.isdir(curve_allow):
                            raise ValueError(f"--curve-allow {curve_allow!r} is not a "
                                             "directory of public certificates")
                        self.auth = ThreadAuthenticator(self.ctx)
                        self.auth.start()
                        self.auth.configure_curve(domain="*", location=curve_allow)
                    s.curve_server = True
                    s.curve_publickey = public
                    s.curve_secretkey = secret
                elif curve_allow is not None or curve_server_key is not None:
                    raise ValueError("CURVE on the receiving side needs --curve-secret (its "
                                     "own secret certificate)")
            self.monitor = s.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            try:
                if push:
                    s.connect(endpoint)
                else:
                    s.bind(endpoint)
            except zmq.ZMQError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ExistsError(f"cannot bind {endpoint}: the address is in use (another "
                                      "'shmarray bridge recv'?); pick another port") from exc
                raise ValueError(f"cannot {'connect to' if push else 'bind'} {endpoint}: "
                                 f"{exc}") from exc
            self.endpoint: str = s.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        except BaseException:
            self.close()
            raise

    def poll_events(self) -> list[str]:
        """Drain the monitor (never blocks); returns the events seen, e.g. "connected
        tcp://...", and updates ``connected``."""
        zmq = self.zmq
        out: list[str] = []
        mon = self.monitor
        if mon is None:
            return out
        from zmq.utils.monitor import parse_monitor_message

        while True:
            try:
                msg = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            ev = parse_monitor_message(msg)
            event, where = int(ev["event"]), ev["endpoint"].decode("utf-8", "replace")
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected += 1
                self.lost_since_handshake = 0
                self.lost_since = None
                text = f"connected {where}"
            elif event == zmq.EVENT_DISCONNECTED:
                # a failed handshake also ends in a disconnect: count only real peers
                if self.connected > 0:
                    self.connected -= 1
                    if not self.ended:
                        self.disconnects += 1
                        self.lost_since_handshake += 1
                    if self.connected == 0:
                        self.lost_since = time.monotonic()
                text = f"disconnected {where}"
            else:
                self.handshake_failures += 1
                text = (f"handshake failed with {where} (CURVE keys or protocol do not match: "
                        f"event {event:#x}, value {ev['value']})")
            self.last_event = text
            out.append(text)

    def goodbye(self) -> list[str]:
        """The peer's end of stream was read: its closing is no longer a lost link. A sender
        closes once its end of stream is out, and a back-pressured receiver reads that message
        from its queue after seeing the close: once the monitor is drained (so that the
        sender's own handshake is counted), a disconnect counted since the last handshake with
        no peer left is that goodbye, and so is one seen from now on. Returns the events
        drained (as poll_events)."""
        events = self.poll_events()
        if not self.ended and self.connected == 0 and self.lost_since_handshake > 0:
            self.disconnects -= 1
            self.lost_since_handshake -= 1
            self.lost_since = None
        self.ended = True
        return events

    def close(self) -> None:
        """Close the socket (the sender's lingers up to its LINGER for queued messages), the
        monitor and the context. Idempotent."""
        sock = getattr(self, "sock", None)
        if sock is not None and not sock.closed:
            try:
                sock.disable_monitor()
            except Exception:
                pass
            sock.close()
        if self.monitor is not None:
            self.monitor.close(0)
            self.monitor = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if not self.ctx.closed:
            self.ctx.term()
