"""Fixtures for the bridge tests: bridge ends as real processes (``python -m shmarray.bridge``)
whose ``--stats -`` JSON lines are collected, and killed at the end of every test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

import pytest

import shmarray
from helpers import CHILD_CWD, PY

pytest.importorskip("zmq", reason="the bridge needs pyzmq (pip install 'shmarray[bridge]')")

STATS_INTERVAL = "0.1"


class BridgeProc:
    """One `python -m shmarray.bridge ...` process; its stats lines land in ``lines``."""

    def __init__(self, args: list[str], prefix: list[str] | None = None) -> None:
        self.args = args
        self.lines: list[dict[str, Any]] = []
        self._err = tempfile.TemporaryFile(mode="w+")
        cmd = [*(prefix or []), PY, "-m", "shmarray.bridge", *args, "--stats", "-",
               "--interval", STATS_INTERVAL]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                  cwd=CHILD_CWD)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}

    def wait_for(self, pred: Callable[[dict[str, Any]], Any], timeout: float = 10.0,
                 what: str = "condition") -> dict[str, Any]:
        """Poll the stats lines until ``pred(last)`` holds (or the process ended)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.last
            if st and pred(st):
                return st
            if self.p.poll() is not None:
                self._reader.join(5)
                st = self.last
                if st and pred(st):
                    return st
                raise AssertionError(f"bridge {self.args[:2]} exited ({self.p.returncode}) "
                                     f"before {what}; last stats {st}\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what} from bridge "
                                     f"{self.args[:2]}; last stats {st}\n{self.stderr()}")
            time.sleep(0.02)

    def endpoint(self, timeout: float = 20.0) -> str:
        return str(self.wait_for(lambda s: s.get("endpoint"), timeout, "its endpoint")
                   ["endpoint"])

    def port(self) -> int:
        return int(self.endpoint().rsplit(":", 1)[1])

    def finish(self, timeout: float = 20.0) -> tuple[int, dict[str, Any]]:
        """Wait for the exit; (exit status, final stats)."""
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"bridge {self.args[:2]} did not exit within {timeout} s; "
                                 f"last stats {self.last}\n{self.stderr()}") from None
        self._reader.join(5)
        return rc, self.last

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read()[-4000:]

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    def close(self) -> None:
        """SIGTERM (a bridge end then leaves cleanly, unlinking a channel it created), and
        SIGKILL if it has not exited within 5 s."""
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.p.wait(20)
        self._reader.join(5)
        if self.p.stdout is not None:
            self.p.stdout.close()
        self._err.close()


@pytest.fixture
def bridge() -> Iterator[Callable[..., BridgeProc]]:
    """start(*args, prefix=None) -> BridgeProc; every process is stopped at the end."""
    procs: list[BridgeProc] = []

    def start(*args: str, prefix: list[str] | None = None) -> BridgeProc:
        bp = BridgeProc(list(args), prefix)
        procs.append(bp)
        return bp

    yield start
    for bp in procs:
        bp.close()


class Consumer:
    """Reads a channel (or subscriber) in a thread: (tag, array copy, timestamp_ns) per frame,
    and the exception that ended it. Retries PeerDiedError while ``retry_dead`` is set."""

    def __init__(self, reader: Any, retry_dead: bool = False, pause: Callable[[int], None]
                 | None = None, keep: bool = True) -> None:
        self.reader = reader
        self.keep = keep  # False: keep only the tags, not copies of the frames
        self.frames: list[tuple[int, Any, int]] = []
        self.error: BaseException | None = None
        self.retry_dead = retry_dead
        self.dead_seen = 0
        self.stop_at = time.monotonic() + 60
        self._pause = pause
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while time.monotonic() < self.stop_at:
            try:
                f = self.reader.recv(timeout=0.5)
            except shmarray.WaitTimeoutError:
                continue
            except shmarray.PeerDiedError as exc:
                if self.retry_dead:
                    self.dead_seen += 1
                    time.sleep(0.05)
                    continue
                self.error = exc
                return
            except BaseException as exc:
                self.error = exc
                return
            with f as view:
                self.frames.append((f.tag, view.copy() if self.keep else None, f.timestamp_ns))
            if self._pause is not None:
                self._pause(len(self.frames))

    def join(self, timeout: float = 30) -> None:
        self.t.join(timeout)
        assert not self.t.is_alive(), f"consumer still running; got {len(self.frames)} frames"

    @property
    def tags(self) -> list[int]:
        return [t for t, _, _ in self.frames]


@pytest.fixture
def consumer() -> type[Consumer]:
    """Consumer(reader, retry_dead=False, pause=None, keep=True): reads in a thread."""
    return Consumer
