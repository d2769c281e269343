"""asyncio twins of shmarray's channels, with the same names (as ``zmq.asyncio`` mirrors
pyzmq's sockets): ``shmarray.aio.Channel``, ``Subscriber``, ``ControlQueue``.

    import shmarray.aio

    ach = shmarray.aio.Channel.open("cam0", timeout=5.0)
    with await ach.recv(timeout=1.0) as view:      # the same Frame lease as the sync recv
        ...
    async for view in ach: ...                      # each view let go at the next step
    await ach.send(frame, tag=7)
    async with ach.loan((1080, 1920, 3), np.uint8) as out: ...
    sub = ach.subscribe(); await sub.latest()       # broadcast
    await ach.control.recv(timeout=1.0)

A waiting await is woken by its peer through a doorbell FIFO in /dev/shm, rung only when the
waiter announced itself: no thread, no polling, and no system call for a stream that keeps up
(shmarray/aio/doorbell.py). Sync and async handles mix freely on one channel.
"""

from .channel import AsyncLoan, Channel, ControlQueue, Subscriber

__all__ = ["Channel", "Subscriber", "ControlQueue", "AsyncLoan"]
