"""The lease objects a channel hands out: ``Frame`` (a received frame), ``BroadcastFrame``,
``FrameBatch`` (a run of frames received in one call) and ``Loan`` (a slot loaned for writing).

The lifetime rule, in one sentence: a received frame's slot goes back to the producer when
the frame is released AND no array derived from it is still referenced (views, slices,
memoryviews, DLPack or torch exports of it keep it), so no array shmarray hands out ever shows
another frame's bytes; ``with`` and ``release()`` give it back at once in the usual case where
nothing else refers to it.

The objects are implemented in C (csrc/lease.c): the slot is given back by the deallocation of
its lease, in C, so an exception raised by a signal handler at any bytecode can neither leak a
slot nor wedge a handle. A loan's claim is aborted the same way when its Loan is dropped
uncommitted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._os.native import lease as _lease
from .._os.native import lib
from ..errors import ClosedError, StreamEnded

__all__ = ["Frame", "BroadcastFrame", "FrameBatch", "Loan"]

Frame: Any = _lease.Frame  # (its docstring: csrc/lease.c)


class BroadcastFrame(Frame):  # type: ignore[misc, valid-type]
    """A frame received from a broadcast subscriber (see Frame). Under policy "drop" it is a
    private copy by default (``copied`` is True, ``valid()`` always True); a zero-copy view
    (``recv(copy=False)``) must be checked with ``valid()`` AFTER use: False means the producer
    overwrote the slot meanwhile, and what was read from it must be discarded."""

    __slots__ = ()


class FrameBatch(Frame):  # type: ignore[misc, valid-type]
    """A run of frames received by one call (``recv_many``): consecutive slots of one schema,
    seen as ONE zero-copy read-only array of shape ``(n, *frame_shape)``.

    ``with ch.recv_many(256) as block:`` yields that array and lets every frame go at the end
    of the block (with the lifetime rule of Frame: a view of the block keeps them all);
    ``seq`` is the first frame's, ``seqs``, ``tags`` and ``timestamps_ns`` have one entry per
    frame."""

    __slots__ = ("seqs", "tags", "timestamps_ns")

    def __len__(self) -> int:
        return len(self.seqs)


def copied(frame_type: Any, array: np.ndarray[Any, Any], seq: int, timestamp_ns: int,
           tag: int) -> Any:
    """A Frame holding a private copy (``copied`` True, nothing leased)."""
    return _lease.copied_frame(frame_type, array, seq, timestamp_ns, tag)


class Loan:
    """A slot loaned for writing in place: ``with ch.loan(shape, dtype) as out:``.

    Leaving the ``with`` normally commits the frame; an exception aborts it (the frame is never
    seen), and so does dropping an uncommitted Loan. ``commit()`` / ``abort()`` do the same
    explicitly. Writing to the view after commit is a bug (the consumer may be reading it).
    """

    __slots__ = ("_lease", "_ch", "array", "tag")

    def __init__(self, ch: Any, lease: Any, array: np.ndarray[Any, Any], tag: int) -> None:
        self._lease = lease
        self._ch = ch
        #: the writable view of the slot
        self.array = array
        #: the 64-bit tag the frame is committed with
        self.tag = tag

    def __enter__(self) -> np.ndarray[Any, Any]:
        return self.array

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    @property
    def committed(self) -> bool:
        """True once committed or aborted."""
        return bool(self._lease.released)

    def commit(self) -> None:
        """Publish the frame to the consumer(s). Never blocks. Raises ClosedError when it was
        already committed or aborted, or its channel handle was closed."""
        rc = self._lease.commit(self.tag)
        if rc != 0:
            if rc == lib.SHM_CHAN_STALE:
                raise ClosedError("this loan was already committed or aborted (or its channel "
                                  "handle was closed)")
            if rc == lib.SHM_CHAN_ENDED:
                raise StreamEnded("this loan's channel handle called end()")
            self._ch._raise_rc(rc, "commit")
        self._ch._after_commit()

    def abort(self) -> None:
        """Give the slot back unpublished (idempotent). Never blocks."""
        self._lease.abort()

    def __repr__(self) -> str:
        state = "done" if self._lease.released else "open"
        return f"<Loan {self.array.dtype}{list(self.array.shape)} tag={self.tag} {state}>"
