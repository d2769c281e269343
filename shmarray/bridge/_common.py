"""What the Sender and the Receiver share: stop(), progress reports, monitor events, `with`."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Optional

from ._link import Link

log = logging.getLogger("shmarray.bridge")

ProgressFn = Callable[[dict[str, Any]], None]
_EVENTS_EVERY = 0.05  # seconds between looks at the link's monitor


def new_session() -> int:
    """A random 64-bit session id (never 0)."""
    return int.from_bytes(os.urandom(8), "little") or 1


class BridgeEnd:
    """Base of Sender and Receiver: counters, progress, stop(), close() on leaving `with`.

    Subclasses set ``_link`` and ``role``, count ``frames`` and ``nbytes``, and implement
    ``stats()`` and ``close()``."""

    role = "?"
    _link: Optional[Link]

    def __init__(self, channel: str, progress: ProgressFn | None, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval}")
        self.channel = channel
        self.frames = 0
        self.nbytes = 0
        self.state = "starting"
        self._stopping = False
        self._progress = progress
        self._interval = interval
        now = time.monotonic()
        self._t0 = now
        self._next_events = now
        self._next_progress = now + interval
        self._mark = (now, 0, 0)  # (time, frames, bytes) at the last progress report
        self._rate = (0.0, 0.0)   # frames/s and bytes/s over the last interval

    def stop(self) -> None:
        """Ask run() to return within about 0.1 s (safe from a signal handler or another
        thread). Frames in flight are released; no end of stream is sent or made."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _tick(self) -> None:
        """Monitor events (logged) and the progress callback, each at most at its rate."""
        now = time.monotonic()
        if now < self._next_events:
            return
        self._next_events = now + _EVENTS_EVERY
        link = self._link
        if link is not None:
            for text in link.poll_events():
                log.info("%s %s: %s", self.role, self.channel, text)
        if now >= self._next_progress:
            t, f, b = self._mark
            dt = max(now - t, 1e-9)
            self._rate = ((self.frames - f) / dt, (self.nbytes - b) / dt)
            self._mark = (now, self.frames, self.nbytes)
            self._next_progress = now + self._interval
            if self._progress is not None:
                self._progress(self.stats())

    def _common_stats(self) -> dict[str, Any]:
        link = self._link
        return {
            "role": self.role, "channel": self.channel, "state": self.state,
            "endpoint": link.endpoint if link is not None else None,
            "frames": self.frames, "bytes": self.nbytes,
            "elapsed_s": round(time.monotonic() - self._t0, 3),
            "rate_fps": round(self._rate[0], 2), "rate_MBps": round(self._rate[1] / 1e6, 2),
            "connected": link.connected if link is not None else 0,
            "disconnects": link.disconnects if link is not None else 0,
            "handshake_failures": link.handshake_failures if link is not None else 0,
        }

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
