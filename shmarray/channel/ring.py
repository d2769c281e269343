"""The ring modes: ``"one-to-one"`` (one producer, one consumer at a time: no CAS on the hot
path) and ``"work-queue"`` (many producers, many consumers, each frame to exactly one
consumer). Produce and receive on channel handles: a handle is a producer or a consumer,
registered by its first send/loan or receive.

Liveness (see handle.py): a consumer that dies holding frames has them reclaimed (dropped and
counted, never delivered twice); a consumer whose producer died without end() drains what was
committed and then gets PeerDiedError; a producer whose consumers all died gets PeerDiedError
once the ring is full; and a waiter whose every peer died before registering (opened the
channel, then crashed) gets PeerDiedError rather than waiting forever.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._os.native import ffi, lease, lib
from ..errors import InvalidArgumentError, PeerDiedError
from .base import Channel
from .handle import CONSUMER, PRODUCER, Segment
from .lease import FrameBatch
from .receiver import FRAME_DTYPE, Receiver

__all__ = ["RingChannel"]

_MODES = {"one-to-one": lib.SHM_CHAN_MODE_ONE_TO_ONE, "work-queue": lib.SHM_CHAN_MODE_WORK_QUEUE}
_EMPTY = lib.SHM_CHAN_EMPTY
_recv_many = lease.recv_many


class RingChannel(Receiver, Channel, modes=tuple(_MODES)):
    """A one-to-one or work-queue channel handle (``Channel.create(mode=...)`` /
    ``Channel.open``): the producer calls (send, send_many, loan, end) and the consumer calls
    (recv, try_recv, recv_copy, recv_into, recv_many, iteration) on one kind of handle; each
    handle takes one role. Used by one thread at a time."""

    @classmethod
    def _layout_params(cls, mode: str, policy: str, max_participants: int,
                       max_subscribers: int) -> tuple[int, int, int]:
        if policy != "block":
            raise ValueError(f"policy={policy!r} is for mode='broadcast' only")
        pmax = int(lib.SHM_CHAN_MAX_PARTICIPANTS) - 1
        if not 1 <= max_participants <= pmax:
            raise InvalidArgumentError(f"max_participants must be 1..{pmax}, not "
                                       f"{max_participants}")
        return _MODES[mode], int(lib.SHM_CHAN_POLICY_BLOCK), max_participants

    def __init__(self, seg: Segment, *, owner: bool, spin_us: float | None = None) -> None:
        super().__init__(seg, owner=owner, spin_us=spin_us)
        self._rx = self._h

    # -- liveness ------------------------------------------------------------------------------

    def _between_recv(self) -> BaseException | None:
        live, dead, pids = self._h.peers()
        if live[PRODUCER]:
            return None
        if dead[PRODUCER]:
            return PeerDiedError(
                f"the producer of {self._what()} died without end() (pid "
                f"{', '.join(map(str, pids))}); every frame it committed was received")
        if int(self._h.status().producers_ever) == 0:
            return self._peer_died_before_registering()
        return None

    def _between_send(self) -> BaseException | None:
        live, dead, pids = self._h.peers()
        if live[CONSUMER]:
            return None
        if dead[CONSUMER]:
            return PeerDiedError(
                f"every consumer of {self._what()} died (pid {', '.join(map(str, pids))}) and "
                "the ring is full; open a new consumer, or unlink the channel")
        return self._peer_died_before_registering()

    # -- for the pool ----------------------------------------------------------------------

    def _recv_writable(self, timeout: float | None) -> Any:
        """recv() whose view is writable: for a consumer that owns its frames outright (a pool
        worker: each task goes to one worker, whose function may write to its arguments as it
        may to an unpickled copy)."""
        return self._take(timeout, False, writable=True)

    def _held(self) -> int:
        """Frames this consumer holds (views of them alive)."""
        return int(self._h.self_info().held)

    # -- the batch path --------------------------------------------------------------------

    def recv_many(self, max_frames: int = 64, timeout: float | None = None) -> Any:
        """Receive up to ``max_frames`` frames in one call, as a FrameBatch: one zero-copy
        read-only array ``(n, *frame_shape)`` over consecutive slots. The fast path for small
        frames.

        Waits (as recv()) only for the first frame; then takes what is already committed, up
        to the ring's wrap point, a change of schema, or the most frames a consumer may hold
        (so n may be less than asked). Raises as recv()."""
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, not {max_frames}")
        rx = self._rx if self._rx_ready else self._consumer()
        k = min(max_frames, self.capacity - 1)
        buf = ffi.new("shm_chan_frame[]", k)
        faddr = int(ffi.cast("uintptr_t", buf))
        ro = rx.seg.ro_payload
        b = _recv_many(rx.addr, rx, FrameBatch, ro, faddr, k, 0)
        if type(b) is int:
            if b == _EMPTY and timeout != 0:
                addr = rx.addr
                b = self._wait_data(lambda spin: _recv_many(addr, rx, FrameBatch, ro, faddr, k,
                                                            spin), timeout)
            if type(b) is int:
                self._recv_error(b, "recv_many")
        n = int(b.lease.count)
        meta = np.frombuffer(ffi.buffer(buf, n * FRAME_DTYPE.itemsize), FRAME_DTYPE)
        b.seqs = meta["pos"].copy()
        b.tags = meta["tag"].copy()
        b.timestamps_ns = meta["timestamp_ns"].copy()
        return b
