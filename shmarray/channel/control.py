"""The control queue: a channel owner's inbox (one POSIX message queue per channel).

A message queue hands each message to one reader, so it carries what many send to one:
subscribers' join/leave notes, requests to the producer, user metadata. Messages are JSON
(``json.dumps`` of a dict), never pickle: nothing received is ever executed. Higher priority
first, FIFO within one priority.

Kernel limits are small on many machines (``/proc/sys/fs/mqueue/msg_max`` 10,
``msgsize_max`` 8192, and ``RLIMIT_MSGQUEUE`` = 819,200 bytes per user, root included), so the
default queue is 10 messages of 1 KiB; a limit hit becomes ``LimitError`` naming the knob.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Any

import posix_ipc

from .._os import faults as _faults
from .._os.segment import Deadline
from ..errors import (
    AccessDeniedError,
    ClosedError,
    ExistsError,
    LimitError,
    NotFoundError,
    WaitTimeoutError,
    WouldBlockError,
)

__all__ = ["ControlQueue", "DEFAULT_MESSAGES", "DEFAULT_MESSAGE_SIZE", "MAX_PRIORITY"]

DEFAULT_MESSAGES = 10
DEFAULT_MESSAGE_SIZE = 1024
MAX_PRIORITY = 31  # POSIX guarantees at least 32 priorities
_SLICE = 0.1


def _proc_limit(knob: str) -> int | None:
    try:
        with open(f"/proc/sys/fs/mqueue/{knob}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _create_error(exc: Exception, what: str, max_messages: int, max_message_size: int) -> Exception:
    if isinstance(exc, ValueError):
        msg_max, size_max = _proc_limit("msg_max"), _proc_limit("msgsize_max")
        if msg_max is not None and max_messages > msg_max:
            return LimitError(f"{what}: {max_messages} messages exceed the kernel's limit "
                              f"/proc/sys/fs/mqueue/msg_max = {msg_max} (ask for fewer, or raise "
                              "it as root: sysctl fs.mqueue.msg_max=...)")
        if size_max is not None and max_message_size > size_max:
            return LimitError(f"{what}: messages of {max_message_size} bytes exceed the kernel's "
                              f"limit /proc/sys/fs/mqueue/msgsize_max = {size_max} (ask for less, "
                              "or raise it as root: sysctl fs.mqueue.msgsize_max=...)")
        return LimitError(f"{what}: the kernel refused {max_messages} x {max_message_size} bytes "
                          "(/proc/sys/fs/mqueue/msg_max and msgsize_max)")
    if isinstance(exc, posix_ipc.PermissionsError):
        return AccessDeniedError(f"{what}: permission denied (it belongs to another user)")
    if isinstance(exc, posix_ipc.ExistentialError):
        return ExistsError(f"{what} already exists ('shmarray clean' removes leftovers)")
    soft, _ = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    return LimitError(
        f"{what}: the kernel refused a new message queue: this user's queues exceed "
        f"RLIMIT_MSGQUEUE ({soft:,} bytes: raise it with 'ulimit -q', close channels, or run "
        "'shmarray clean'), or the queue limit /proc/sys/fs/mqueue/queues_max is reached, "
        "or too many files are open ('ulimit -n')")


class ControlQueue:
    """One channel's control queue. Not thread-safe; one handle per process is typical."""

    def __init__(self, osname: str, channel: str, *, create: bool = False, mode: int = 0o600,
                 max_messages: int = DEFAULT_MESSAGES,
                 max_message_size: int = DEFAULT_MESSAGE_SIZE) -> None:
        self._channel = channel
        what = f"control queue of channel {channel!r}"
        try:
            if create:
                self._mq = posix_ipc.MessageQueue(osname, posix_ipc.O_CREX, mode=mode,
                                                  max_messages=max_messages,
                                                  max_message_size=max_message_size, read=True,
                                                  write=True)
                try:
                    # exactly the mode asked for: mq_open's mode is narrowed by the umask (a
                    # queue descriptor is a file descriptor on Linux)
                    os.fchmod(self._mq.mqd, mode)
                except BaseException:
                    self._mq.close()
                    posix_ipc.unlink_message_queue(osname)
                    raise
            else:
                self._mq = posix_ipc.MessageQueue(osname)
        except posix_ipc.ExistentialError as exc:
            if create:
                raise _create_error(exc, what, max_messages, max_message_size) from exc
            raise NotFoundError(f"{what} not found (was the channel unlinked? "
                                "'shmarray ls' lists channels)") from exc
        except posix_ipc.PermissionsError as exc:
            raise AccessDeniedError(f"{what}: permission denied (it belongs to another user; "
                                    "create the channel with perm= to share it)") from exc
        except (ValueError, OSError, posix_ipc.Error) as exc:
            raise _create_error(exc, what, max_messages, max_message_size) from exc
        self._closed = False

    @property
    def max_messages(self) -> int:
        return int(self._mq.max_messages)

    @property
    def max_message_size(self) -> int:
        return int(self._mq.max_message_size)

    def pending(self) -> int:
        """The number of messages waiting in the queue."""
        return int(self._check().current_messages)

    def fileno(self) -> int:
        """The queue descriptor: pollable (select/epoll/asyncio add_reader) on Linux."""
        return int(self._check().mqd)

    def _check(self) -> Any:
        if self._closed:
            raise ClosedError(f"control queue of channel {self._channel!r} is closed")
        return self._mq

    def send(self, message: dict[str, Any], priority: int = 0,
             timeout: float | None = None) -> None:
        """Send a JSON-serialisable dict; higher ``priority`` (0..31) is received first.

        Blocks while the queue is full, up to ``timeout`` (None forever, 0 never:
        WouldBlockError; expiry: WaitTimeoutError). Raises LimitError for a message larger than
        the queue's message size, TypeError for a value JSON cannot represent (NaN or an
        infinity, a cycle, a set, ...)."""
        mq = self._check()
        if not isinstance(message, dict):
            raise TypeError(f"control messages are dicts, not {type(message).__name__}")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be 0..{MAX_PRIORITY}, not {priority}")
        try:
            data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:  # NaN, a cycle, a set...
            raise TypeError(f"control message for channel {self._channel!r} cannot travel as "
                            f"JSON: {exc} (send dicts of str, int, finite float, bool, None, "
                            "lists and dicts)") from exc
        if len(data) > mq.max_message_size:
            raise LimitError(
                f"control message of {len(data)} bytes exceeds the {mq.max_message_size}-byte "
                f"message size of channel {self._channel!r}'s queue (send less, or create the "
                "channel with a larger control_message_size, at most "
                "/proc/sys/fs/mqueue/msgsize_max)")
        deadline = Deadline(timeout)
        _faults.point("control.send")  # fault point (tests/faults)
        while True:
            try:
                mq.send(data, timeout=deadline.slice(_SLICE), priority=priority)
                return
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:
                pass  # Python runs its signal handlers at the next bytecode; then retry
            if deadline.expired():
                cls = WouldBlockError if timeout == 0 else WaitTimeoutError
                raise cls(f"control queue of channel {self._channel!r} is full "
                          f"({mq.max_messages} messages): nobody is reading it")

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """Receive the highest-priority oldest message.

        Blocks while the queue is empty, up to ``timeout`` (as send). A message that is not a
        JSON object is returned as ``{"invalid": <repr of the bytes>}`` rather than trusted."""
        return self.recv_with_priority(timeout)[0]

    def recv_with_priority(self, timeout: float | None = None) -> tuple[dict[str, Any], int]:
        """As recv(), also returning the message's priority."""
        mq = self._check()
        deadline = Deadline(timeout)
        while True:
            try:
                data, prio = mq.receive(deadline.slice(_SLICE))
                _faults.point("control.recv")  # fault point (tests/faults)
                break
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:
                pass
            if deadline.expired():
                cls = WouldBlockError if timeout == 0 else WaitTimeoutError
                raise cls(f"no control message for channel {self._channel!r}"
                          + ("" if timeout == 0 else f" within {timeout:g} s"))
        try:
            msg = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):  # a peer's junk: never trusted
            msg = None
        if not isinstance(msg, dict):
            return {"invalid": repr(bytes(data[:200]))}, int(prio)
        return msg, int(prio)

    def close(self) -> None:
        """Close this process's descriptor; the queue lives until the channel is unlinked."""
        if not self._closed:
            self._closed = True
            try:
                self._mq.close()
            except posix_ipc.Error:
                pass
