"""Names: the user-name rule and every OS name derived from a user name, in one place.

A user name is ``[A-Za-z0-9_][A-Za-z0-9_-]{0,99}``. The segment is ``/shmarray.<name>``
(``/dev/shm/shmarray.<name>``); the semaphores and the control queue of a channel are
``/shmarray.<name>.<nonce>.<role>``, where the nonce (16 hex digits, recorded in the segment
header) tells one incarnation of a name from the next. An asyncio waiter's doorbell is the FIFO
``/dev/shm/shmarray.<name>.<nonce>.db<participant index>`` (shmarray.aio).
"""

from __future__ import annotations

import re
import secrets

from ..errors import InvalidNameError

PREFIX = "shmarray."
SHM_DIR = "/dev/shm"
NAME_RULE = "[A-Za-z0-9_][A-Za-z0-9_-]{0,99}"
_NAME_RE = re.compile(NAME_RULE + r"\Z")


def validate(name: object, what: str = "name") -> str:
    """Return ``name`` if it follows the rule, else raise InvalidNameError showing the rule."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a str following the rule {NAME_RULE}, "
                               f"not {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise InvalidNameError(
            f"invalid {what} {name!r}: a name is 1-100 characters of letters, digits, '_' and "
            f"'-', not starting with '-' (the rule {NAME_RULE}); no dots, slashes or NUL"
        )
    return name


def unique(stem: str = "anon") -> str:
    """A fresh name that no other process will pick: ``<stem>-<12 hex digits>``."""
    return f"{stem}-{secrets.token_hex(6)}"


def segment(name: str) -> str:
    """The POSIX shm name of the segment (for shm_open)."""
    return "/" + PREFIX + name


def segment_path(name: str) -> str:
    """The file of the segment under /dev/shm."""
    return f"{SHM_DIR}/{PREFIX}{name}"


def new_nonce() -> int:
    return secrets.randbits(64)


def sub_object(name: str, nonce: int, role: str) -> str:
    """OS name of a semaphore or queue that belongs to segment ``name`` (incarnation ``nonce``)."""
    return f"/{PREFIX}{name}.{nonce:016x}.{role}"


def from_segment_file(filename: str) -> str | None:
    """The user name of a /dev/shm file name that is one of our segments, else None."""
    if not filename.startswith(PREFIX):
        return None
    rest = filename[len(PREFIX):]
    return rest if _NAME_RE.match(rest) else None


_DOORBELL_RE = re.compile(re.escape(PREFIX) + "(" + NAME_RULE + r")\.([0-9a-f]{16})\.db[0-9]+\Z")


def doorbell_prefix(name: str, nonce: int) -> str:
    """The path prefix of the doorbell FIFOs of channel ``name`` (incarnation ``nonce``): the
    participant index follows it."""
    return f"{SHM_DIR}/{PREFIX}{name}.{nonce:016x}.db"


def doorbell_owner(filename: str) -> tuple[str, int] | None:
    """(channel name, nonce) of a /dev/shm file name that is a doorbell FIFO, else None."""
    m = _DOORBELL_RE.match(filename)
    return (m.group(1), int(m.group(2), 16)) if m else None
