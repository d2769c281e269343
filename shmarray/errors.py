"""The shmarray exception hierarchy.

Every exception raised on purpose by shmarray derives from :class:`ShmArrayError`, and also from
the built-in a caller would naturally catch (``FileNotFoundError``, ``TimeoutError``, ...), so
``except FileNotFoundError`` keeps working for code that does not know about shmarray.

Messages name the object and the way out, e.g. ``segment 'cam0' not found (is the producer
running? 'shmarray ls' lists segments)``.
"""

from __future__ import annotations

__all__ = [
    "ShmArrayError",
    "NotFoundError",
    "ExistsError",
    "AccessDeniedError",
    "InvalidNameError",
    "InvalidArgumentError",
    "CorruptSegmentError",
    "FrameTooLargeError",
    "WouldBlockError",
    "WaitTimeoutError",
    "ClosedError",
    "PeerDiedError",
    "StreamEnded",
    "LimitError",
    "InternalError",
]


class ShmArrayError(Exception):
    """Root of every shmarray exception (never raised itself)."""


class NotFoundError(ShmArrayError, FileNotFoundError):
    """The named segment, channel, semaphore or queue does not exist."""


class ExistsError(ShmArrayError, FileExistsError):
    """An object with that name already exists."""


class AccessDeniedError(ShmArrayError, PermissionError):
    """The object exists but belongs to someone else (mode 0600 by default)."""


class InvalidNameError(ShmArrayError, ValueError):
    """A name that does not follow ``[A-Za-z0-9_][A-Za-z0-9_-]{0,99}``."""


class InvalidArgumentError(ShmArrayError, ValueError):
    """An argument shmarray cannot represent: a size, shape or tag beyond 64 bits."""


class CorruptSegmentError(ShmArrayError, ValueError):
    """A segment whose header, cursors or slot table fail validation."""


class FrameTooLargeError(ShmArrayError, ValueError):
    """A frame larger than the channel's ``slot_bytes``."""


class WouldBlockError(ShmArrayError, BlockingIOError):
    """``timeout=0`` and the call would have had to wait."""


class WaitTimeoutError(ShmArrayError, TimeoutError):
    """The timeout expired before the call could complete."""


class ClosedError(ShmArrayError):
    """The handle was closed by this process."""


class PeerDiedError(ShmArrayError):
    """Every peer this call depends on died (the kernel released its liveness lock)."""


class StreamEnded(ShmArrayError):
    """The producer(s) called ``end()`` and every committed frame has been received."""


class LimitError(ShmArrayError, OSError):
    """A system or configured limit was reached; the message names the knob."""


class InternalError(ShmArrayError):
    """An invariant of shmarray broke: this is a bug, please report it."""
