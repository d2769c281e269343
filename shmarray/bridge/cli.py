"""``shmarray bridge send CHANNEL tcp://HOST:PORT`` and ``shmarray bridge recv CHANNEL
tcp://*:PORT``: relay a channel to another host over ZeroMQ.

Progress goes to stderr once per ``--interval``; ``--stats PATH`` (``-``: stdout) writes the
same counters as JSON, one object per line, the last one with ``"final": true``. Exit status:
0 when the stream ended (or SIGINT/SIGTERM stopped the bridge), 3 when the peer was lost
(the local producer died, or the sender went away: see ``--on-sender-lost``), 1 for other
errors, 2 for bad arguments or a missing pyzmq.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
from typing import IO, Any, Sequence

from ..errors import PeerDiedError, ShmArrayError

__all__ = ["add_parser", "main"]

_SIZE = re.compile(r"(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes from "6220800", "6MiB", "512k"; argparse type."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 6220800, 512KiB, 8MiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("channel", metavar="CHANNEL", help="the local channel's name")
    p.add_argument("--hwm", type=int, default=2,
                   help="ZeroMQ high-water mark in messages (default 2: little queued, low "
                        "latency)")
    p.add_argument("--curve-secret", metavar="FILE",
                   help="this end's CURVE secret certificate (zmq.auth format, "
                        "NAME.key_secret): encrypts the link")
    p.add_argument("--stats", metavar="PATH",
                   help="write the counters as JSON lines to PATH ('-': stdout)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between progress reports (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def add_parser(sub: Any) -> None:
    """Add ``bridge send`` and ``bridge recv`` to an argparse subparsers object."""
    p = sub.add_parser("bridge", help="relay a channel to another host over ZeroMQ",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_subparsers(dest="bridge_command", required=True, metavar="{send,recv}")
    s = which.add_parser(
        "send", help="read a local channel and push its frames to a receiver",
        description="Read local CHANNEL (a broadcast channel as a new subscriber, otherwise "
                    "as its consumer) and push every frame to the receiver at ENDPOINT. "
                    "Reconnects by itself; the end of the stream crosses the bridge.")
    _common(s)
    s.add_argument("endpoint", metavar="ENDPOINT",
                   help="the receiver: tcp://HOST:PORT (IPv6: tcp://[ADDR%%IFACE]:PORT)")
    s.add_argument("--policy", choices=("block", "drop"), default="block",
                   help="block: wait for the link (the local producer slows down); drop: "
                        "drop a frame the link cannot take at once, and count it")
    s.add_argument("--curve-server-key", metavar="KEY",
                   help="the receiver's CURVE public key (40 Z85 characters, or its "
                        "certificate file): encrypts the link")
    s.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for CHANNEL to appear (default: forever)")
    s.add_argument("--end-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for a receiver to take the end of the stream "
                        "(default 30)")
    s.set_defaults(func=main)
    r = which.add_parser(
        "recv", help="bind, receive frames and publish them into a local channel",
        description="Bind ENDPOINT, receive frames from 'shmarray bridge send' and publish "
                    "each into local CHANNEL (opened if it exists, else created).")
    _common(r)
    r.add_argument("endpoint", metavar="ENDPOINT",
                   help="where to listen: tcp://*:PORT, tcp://ADDR:PORT, tcp://[ADDR%%IFACE]:PORT")
    r.add_argument("--mode", choices=("one-to-one", "work-queue", "broadcast"),
                   default="one-to-one", help="mode of a channel created here")
    r.add_argument("--policy", choices=("block", "drop"), default="block",
                   help="slow-subscriber policy of a broadcast channel created here")
    r.add_argument("--capacity", type=int, default=8, help="slots of a channel created here")
    r.add_argument("--slot-bytes", type=parse_size, default=None, metavar="SIZE",
                   help="largest frame of a channel created here (default: the first "
                        "frame's size, the channel being created when it arrives)")
    r.add_argument("--max-subscribers", type=int, default=8,
                   help="subscribers of a broadcast channel created here")
    r.add_argument("--on-sender-lost", choices=("fail", "end", "wait"), default="fail",
                   help="when the sender goes away without ending the stream and does not come "
                        "back: fail (consumers get PeerDiedError), end (StreamEnded), wait")
    r.add_argument("--sender-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long a lost sender may take to come back (default 10)")
    r.add_argument("--curve-allow", metavar="DIR",
                   help="only senders whose public certificates are in DIR may connect")
    r.set_defaults(func=main)


class _Reporter:
    """The progress callback: a line on stderr, a JSON line on --stats."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quiet = args.quiet
        self.out: IO[str] | None = None
        self.close_out = False
        if args.stats == "-":
            self.out = sys.stdout
        elif args.stats:
            self.out = open(args.stats, "w", encoding="utf-8")
            self.close_out = True

    def __call__(self, st: dict[str, Any], final: bool = False) -> None:
        if self.out is not None:
            self.out.write(json.dumps({**st, "final": final}) + "\n")
            self.out.flush()
        if self.quiet and not final:
            return
        link = "connected" if st["connected"] else "not connected"
        arrow = "->" if st["role"] == "send" else "<-"
        line = (f"bridge {st['role']} {st['channel']} {arrow} {st['endpoint']}: "
                f"{st['rate_fps']:.1f} fps {st['rate_MBps']:.1f} MB/s | {st['frames']} frames")
        if st["role"] == "send":
            line += f", dropped {st['dropped']}, held {st['held']}"
            if st["lost_at_source"]:
                line += f", lost at source {st['lost_at_source']}"
        else:
            line += f", lost {st['dropped']}, rejected {st['rejected']}"
            lat = st["latency_ms"]
            if lat:
                line += f" | latency p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms"
        line += f" | {link}" + (f" | {st['state']}" if final else "")
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.close_out and self.out is not None:
            self.out.close()


def main(args: argparse.Namespace) -> int:
    """Run ``bridge send`` or ``bridge recv``; returns the exit status."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("shmarray bridge: %(message)s"))
    logger = logging.getLogger("shmarray.bridge")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        report = _Reporter(args)
    except OSError as exc:
        print(f"shmarray bridge: --stats: {exc}", file=sys.stderr)
        return 2
    end: Any = None
    old: dict[signal.Signals, Any] = {}
    try:
        from . import Receiver, Sender

        if args.bridge_command == "send":
            end = Sender(args.channel, args.endpoint, policy=args.policy, hwm=args.hwm,
                         curve_server_key=args.curve_server_key, curve_secret=args.curve_secret,
                         open_timeout=args.wait, end_timeout=args.end_timeout,
                         progress=report, interval=args.interval)
        else:
            end = Receiver(args.channel, args.endpoint, mode=args.mode,
                           capacity=args.capacity, slot_bytes=args.slot_bytes,
                           policy=args.policy, max_subscribers=args.max_subscribers,
                           on_sender_lost=args.on_sender_lost,
                           sender_timeout=args.sender_timeout, hwm=args.hwm,
                           curve_secret=args.curve_secret, curve_allow=args.curve_allow,
                           progress=report, interval=args.interval)

        def stop(signum: int, frame: Any) -> None:
            end.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, stop)
        with end:
            try:
                st = end.run()
                code = 0
            except PeerDiedError as exc:
                print(f"shmarray bridge: {exc}", file=sys.stderr)
                st = end.stats()
                code = 3
            report(st, final=True)
        return code
    except (ImportError, ValueError) as exc:
        print(f"shmarray bridge: {exc}", file=sys.stderr)
        return 2
    except ShmArrayError as exc:
        print(f"shmarray bridge: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        report.close()
        logger.removeHandler(handler)


def run_cli(argv: Sequence[str] | None = None) -> int:
    """``python -m shmarray.bridge send|recv ...``: the same as ``shmarray bridge ...``."""
    parser = argparse.ArgumentParser(prog="python -m shmarray.bridge")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["bridge", *argv])
    rc: int = args.func(args)
    return rc
