"""``shmarray.bridge``: relay a channel to another host over ZeroMQ (``pip install
'shmarray[bridge]'``).

On the host with the producer, a :class:`Sender` reads the local channel and pushes each frame
(zero copy, from the slot) over a ZeroMQ PUSH socket; on the other host a :class:`Receiver`
binds a PULL socket and publishes each frame into a local channel (one copy, into a loaned
slot), so consumers there use the same API as on the camera host:

    # camera host                                   # GPU host
    shmarray bridge send cam0 tcp://gpu:5555        shmarray bridge recv cam0 tcp://*:5555

    from shmarray.bridge import Sender, Receiver    # the same, embedded
    with Receiver("cam0", "tcp://*:5555", mode="broadcast") as r:
        r.run()

Messages carry a fixed little-endian header (wire.py), validated on receipt; nothing is ever
unpickled or evaluated. Delivery is at most once; every loss shows as a gap in the link's
sequence numbers, counted by the receiver. End of stream crosses the bridge. Importing
``shmarray`` does not import this package; importing this package does not import zmq (a
Sender or Receiver does).
"""

from .cli import add_parser
from .receiver import ON_SENDER_LOST, Receiver
from .sender import POLICIES, Sender

__all__ = ["Sender", "Receiver", "add_parser", "POLICIES", "ON_SENDER_LOST"]
