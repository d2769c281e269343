"""shmarray: zero-copy shared-memory numpy arrays and channels between processes (Linux only).

    a = shmarray.create("weights", shape=(1000, 1000), dtype=np.float32)
    b = shmarray.attach("weights")            # in any process, zero copy
"""

from ._segment import cleanup_on_sigterm
from .channel import Channel, Frame, FrameBatch, Loan
from .broadcast import BroadcastChannel, BroadcastFrame, Subscriber
from .control import ControlQueue
from .array import OwnerDiedWarning, SharedArray, attach, create, from_array, unlink
from .pool import Pool
from .errors import (
    AccessDeniedError,
    ClosedError,
    CorruptSegmentError,
    ExistsError,
    FrameTooLargeError,
    InternalError,
    InvalidNameError,
    LimitError,
    NotFoundError,
    PeerDiedError,
    ShmArrayError,
    StreamEnded,
    WaitTimeoutError,
    WouldBlockError,
)

__version__ = "0.1.0"

__all__ = [
    "SharedArray",
    "Channel",
    "Frame",
    "FrameBatch",
    "Loan",
    "BroadcastChannel",
    "BroadcastFrame",
    "Subscriber",
    "Pool",
    "ControlQueue",
    "OwnerDiedWarning",
    "create",
    "from_array",
    "attach",
    "unlink",
    "cleanup_on_sigterm",
    "ShmArrayError",
    "NotFoundError",
    "ExistsError",
    "AccessDeniedError",
    "InvalidNameError",
    "CorruptSegmentError",
    "FrameTooLargeError",
    "WouldBlockError",
    "WaitTimeoutError",
    "ClosedError",
    "PeerDiedError",
    "StreamEnded",
    "LimitError",
    "InternalError",
    "__version__",
]
