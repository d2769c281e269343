"""Channels: numpy arrays between processes through a lock-free ring in shared memory.

- ``base``: ``Channel``, the public base every kind shares (create/open with the mode
  dispatch, the producer side, control queue, stats, close/unlink);
- ``ring``: the one-to-one and work-queue modes; ``broadcast``: one producer, many subscribers;
- ``receiver``: the consuming half both kinds share; ``lease``: Frame, FrameBatch, Loan;
- ``handle``: the segment and one participant's C handle (registration, liveness);
- ``control``: the control queue; ``describe``: counters for stats, ``ls`` and ``top``.

A new transport mode is a Channel subclass naming its modes (``class X(Channel,
modes=("x",))``) over a protocol in csrc/ that shares the channel core.
"""

from .base import Channel
from .broadcast import BroadcastChannel, Subscriber
from .control import ControlQueue
from .lease import BroadcastFrame, Frame, FrameBatch, Loan
from .ring import RingChannel
from . import describe as _describe  # noqa: F401  (registers the `shmarray ls` describer)

__all__ = ["Channel", "RingChannel", "BroadcastChannel", "Subscriber", "ControlQueue", "Frame",
           "BroadcastFrame", "FrameBatch", "Loan"]
