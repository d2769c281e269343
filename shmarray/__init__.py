"""shmarray: zero-copy shared-memory numpy arrays and channels between processes (Linux only).

    a = shmarray.create("weights", shape=(1000, 1000), dtype=np.float32)
    b = shmarray.attach("weights")            # in any process, zero copy
"""

from ._os.segment import cleanup_on_sigterm
from .array import OwnerDiedWarning, SharedArray, attach, create, from_array, unlink
from .channel import (
    BroadcastChannel,
    BroadcastFrame,
    Channel,
    ControlQueue,
    Frame,
    FrameBatch,
    Loan,
    Subscriber,
)
from .errors import (
    AccessDeniedError,
    ClosedError,
    CorruptSegmentError,
    ExistsError,
    FrameTooLargeError,
    InternalError,
    InvalidArgumentError,
    InvalidNameError,
    LimitError,
    NotFoundError,
    PeerDiedError,
    ShmArrayError,
    StreamEnded,
    WaitTimeoutError,
    WouldBlockError,
)
from .pool import Pool

__version__ = "0.2.0"

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
    "__version__",
]
